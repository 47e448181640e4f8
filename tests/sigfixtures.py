"""A small in-memory signature set for pure detector tests (no files, no YARA)."""

from __future__ import annotations

import re

from agent.signatures import IocEntry, Pattern, Signatures


def entry(value: str, name: str = "") -> IocEntry:
    return IocEntry(value=value, source="unit test", name=name)


def pattern(name: str, regex: str, weight: int) -> Pattern:
    return Pattern(name=name, regex=re.compile(regex, re.IGNORECASE), weight=weight, source="unit test")


MD5 = "16572572588c2e241225ea2bf6807eff"

SIGS = Signatures(
    version="test",
    directory="<memory>",
    hashes={MD5: entry(MD5, "xmrig")},
    pool_domains=(entry("minexmr.com"), entry("supportxmr.com")),
    pool_ports={3333: entry("3333"), 14444: entry("14444")},
    miner_names={"xmrig": entry("xmrig")},
    cmdline_patterns=(
        pattern("stratum URL", r"stratum\d?\+(tcp|ssl|tls)://\S+", 40),
        pattern("xmrig donate-level flag", r"--donate-level[= ]\d+", 20),
    ),
    wallet_patterns=(pattern("Monero", r"\b4[0-9AB][1-9A-HJ-NP-Za-km-z]{93}\b", 30),),
    env_vars={"POOL_URL": entry("POOL_URL"), "WALLET": entry("WALLET"), "WALLET_ADDRESS": entry("WALLET_ADDRESS"),
              "XMRIG_*": entry("XMRIG_*")},
    official_images={"openjdk": entry("openjdk"), "golang": entry("golang")},
    bad_namespaces={"thanhtudo": entry("thanhtudo")},
    launchers={"dao.py": entry("dao.py")},
)

WALLET = "4" + "A" + "x" * 93
