"""Pure detectors on plain snapshots: one behaviour per test."""

from __future__ import annotations

import dataclasses

import pytest

from agent.detectors import cmdline, image_policy, location, network
from agent.detectors.base import Context
from agent.detectors.pool_urls import cmdline_urls, parse_endpoint, pool_endpoints
from agent.engine import severity_of
from agent.model import (
    Connection,
    ContainerInfo,
    MinerConfig,
    ProcessSnapshot,
    Severity,
)
from tests.sigfixtures import SIGS, WALLET

CTX = Context(SIGS)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stratum+tcp://pool.minexmr.com:4444", ("pool.minexmr.com", 4444)),
        ("stratum+ssl://127.0.0.1:443", ("127.0.0.1", 443)),
        ("stratum2+tcp://user:pw@host.example:3333", ("host.example", 3333)),
        ("pool.supportxmr.com:443", ("pool.supportxmr.com", 443)),
        ("out.o", None),
        ("/tmp/file", None),
        ("host:99999", None),
    ],
)
def test_parse_endpoint(url, expected):
    """Pool URLs with and without schemes parse to (host, port); other words do not."""
    assert parse_endpoint(url) == expected


def test_cmdline_urls_reads_flags_and_stratum_words():
    """-o URL, --url=URL and bare stratum words are all found."""
    argv = ("m", "-o", "a:1", "--url=b:2", "x=stratum+tcp://c:3")
    assert cmdline_urls(argv) == ["a:1", "b:2", "stratum+tcp://c:3"]


def test_pool_endpoints_include_config_pools():
    """Pools named in a miner config count as configured endpoints."""
    proc = ProcessSnapshot(pid=1, miner_config=MinerConfig("/c.json", pools=("stratum+ssl://p.example:443",)))
    assert pool_endpoints(proc) == [("p.example", 443, "config /c.json")]


def test_cmdline_finds_stratum_wallet_and_known_domain():
    """A stratum URL to a known pool domain and a Monero wallet all count."""
    proc = ProcessSnapshot(pid=1, cmdline=("m", "-o", "stratum+tcp://xmr.minexmr.com:4444", "-u", WALLET))
    details = [e.detail for e in cmdline.detect(proc, CTX)]
    assert any("stratum URL" in d for d in details)
    assert any("known pool domain xmr.minexmr.com" in d for d in details)
    assert any("Monero wallet" in d for d in details)


def test_cmdline_ignores_lookalike_domain_suffix():
    """notminexmr.com is not a subdomain of minexmr.com."""
    proc = ProcessSnapshot(pid=1, cmdline=("m", "-o", "notminexmr.com:4444"))
    assert not any("known pool domain" in e.detail for e in cmdline.detect(proc, CTX))


def test_environment_variables_count():
    """Miner variables in the environment are evidence, ordinary ones are not."""
    proc = ProcessSnapshot(pid=1, environ=(("POOL_URL", "x"), ("HOME", "/root")))
    (e,) = cmdline.detect(proc, CTX)
    assert e.signal == "environment" and "POOL_URL" in e.detail and "HOME" not in e.detail


def test_network_bare_stratum_port_is_weak():
    """A connection to port 3333 with nothing else is weak evidence."""
    proc = ProcessSnapshot(pid=1, connections=(Connection("10.0.0.2", 5000, "127.0.0.1", 3333, "ESTABLISHED"),))
    (e,) = network.detect(proc, CTX)
    assert not e.strong and e.destination == ("127.0.0.1", 3333, "")


def test_network_ignores_listening_and_closed_sockets():
    """Only live outgoing connections count."""
    proc = ProcessSnapshot(pid=1, connections=(Connection("0.0.0.0", 3333, "0.0.0.0", 0, "LISTEN"),
                                               Connection("127.0.0.1", 1, "127.0.0.1", 3333, "TIME_WAIT")))
    assert network.detect(proc, CTX) == []


def test_network_connection_to_configured_pool_on_443():
    """Port 443 is suspicious only when it is the pool port the process was configured with."""
    conn = (Connection("127.0.0.1", 5000, "127.0.0.1", 443, "ESTABLISHED"),)
    plain = ProcessSnapshot(pid=1, connections=conn)
    assert network.detect(plain, CTX) == []
    miner = ProcessSnapshot(pid=1, connections=conn, cmdline=("w", "-o", "pool.example:443"))
    (e,) = network.detect(miner, CTX)
    assert e.strong and e.destination == ("127.0.0.1", 443, "pool.example")


@pytest.mark.parametrize("name", ["kworker/0:1", "[kworker/1:2-events]", "kthreadd", "ksoftirqd/0"])
def test_kernel_thread_name_on_a_real_executable_is_masquerade(name):
    """A process with an executable and a kernel-thread name is masquerading."""
    proc = ProcessSnapshot(pid=1, exe="/tmp/.x/kw", name=name[:15], cmdline=(name,))
    assert any(e.signal == "masquerade" for e in location.detect(proc, CTX))


def test_real_kernel_threads_are_left_alone():
    """A real kernel thread (no executable, PF_KTHREAD) is not evidence."""
    proc = ProcessSnapshot(pid=2, name="kworker/0:1", is_kernel_thread=True)
    assert location.detect(proc, CTX) == []


def test_system_daemon_name_outside_system_dirs():
    """systemd-journal running from /dev/shm is masquerading; from /usr/lib it is not."""
    fake = ProcessSnapshot(pid=1, exe="/dev/shm/systemd-journal", name="systemd-journal")
    real = ProcessSnapshot(pid=1, exe="/usr/lib/systemd/systemd-journald", name="systemd-journal")
    assert any(e.signal == "masquerade" for e in location.detect(fake, CTX))
    assert location.detect(real, CTX) == []


def test_temp_and_deleted_executables_are_weak():
    """Running from /tmp or a deleted file is weak evidence only."""
    proc = ProcessSnapshot(pid=1, exe="/tmp/a.out", exe_deleted=True, name="a.out")
    evs = location.detect(proc, CTX)
    assert len(evs) == 2 and not any(e.strong for e in evs)


@pytest.mark.parametrize(
    ("image", "lookalike"),
    [("thieunutre/golang", True), ("someone/openjkd:1", True), ("golang:1.22", False), ("library/openjdk:17", False),
     ("myregistry.local/team/service:1", False)],
)
def test_image_lookalike(image, lookalike):
    """Official names from other namespaces (or one edit away) are look-alikes."""
    c = ContainerInfo(id="x", image=image)
    found = any("imitates" in e.detail for e in image_policy.detect(c, Context(SIGS, container=c)))
    assert found is lookalike


def test_image_allow_list():
    """Images outside a configured allow list are flagged; inside they are not."""
    allow = ("docker.io/library/*", "ghcr.io/acme")
    ok = ContainerInfo(id="x", image="ghcr.io/acme/api:2")
    bad = ContainerInfo(id="y", image="quay.io/other/api:2")
    assert image_policy.detect(ok, Context(SIGS, image_allow=allow)) == []
    assert any("allow list" in e.detail for e in image_policy.detect(bad, Context(SIGS, image_allow=allow)))


def test_image_env_with_stratum_url():
    """A stratum URL or pool variables in the container config are image evidence."""
    c = ContainerInfo(id="x", image="busybox", env=("POOL_URL=stratum+tcp://127.0.0.1:3333",))
    details = " ".join(e.detail for e in image_policy.detect(c, Context(SIGS)))
    assert "stratum" in details and "POOL_URL" in details


def test_wallet_and_pool_named_variables_alone_are_weak_and_miner_only_names_are_not():
    """A payments app's WALLET_ADDRESS / POOL_URL (no stratum URL, no wallet address in the values) is weak
    image evidence: never above low alone. XMRIG_* or DONATE_LEVEL, which only miners read, stay strong, and
    so does a pool login (POOL_USER/POOL_PASS) beside a pool URL."""
    payments = ContainerInfo(id="x", image="busybox", env=("WALLET_ADDRESS=acct-0042", "POOL_URL=postgres://db:5432/pay"))
    evidence = image_policy.detect(payments, Context(SIGS))
    assert [e.strong for e in evidence if "miner variable" in e.detail] == [False]
    assert severity_of(evidence)[0] <= Severity.LOW
    miner = ContainerInfo(id="x", image="busybox", env=("XMRIG_EXE=/opt/x", "WALLET=acct-0042"))
    assert [e.strong for e in image_policy.detect(miner, Context(SIGS)) if "miner variable" in e.detail] == [True]
    login = ContainerInfo(id="x", image="busybox", env=("POOL_URL=10.0.0.5:3333", "POOL_USER=rig1", "POOL_PASS=x"))
    sigs = dataclasses.replace(SIGS, env_vars={**SIGS.env_vars, "POOL_USER": SIGS.env_vars["POOL_URL"],
                                               "POOL_PASS": SIGS.env_vars["POOL_URL"]})
    assert [e.strong for e in image_policy.detect(login, Context(sigs)) if "miner variable" in e.detail] == [True]


def test_image_label_with_stratum_url():
    """A stratum URL in an image label is image evidence too (scan-image checks labels)."""
    c = ContainerInfo(id="x", image="busybox", labels=(("pool", "stratum+tcp://127.0.0.1:3333"),))
    assert any("stratum" in e.detail for e in image_policy.detect(c, Context(SIGS)))


def test_config_next_to_the_executable_or_named_by_flag_is_strong():
    """A miner config loaded by the process (beside its binary, --config for any program, -c for a
    process that looks like a miner) is strong evidence."""
    cfg = MinerConfig("/opt/w/config.json", pools=("p.example:443",))
    beside = ProcessSnapshot(pid=1, exe="/opt/w/worker", cwd="/", miner_config=cfg)
    flagged = ProcessSnapshot(pid=1, exe="/usr/bin/w", cwd="/opt/w", cmdline=("w", "--config", "config.json"),
                              miner_config=cfg)
    short = ProcessSnapshot(pid=1, exe="/opt/w/xmrig", cwd="/opt/w", cmdline=("xmrig", "-c", "config.json"),
                            miner_config=cfg)
    for proc in (beside, flagged, short):
        assert any(e.signal == "config" and e.strong and e.weight >= 35 for e in cmdline.detect(proc, CTX))


def test_config_only_in_the_working_directory_is_weak():
    """A shell (or `sh -c`) whose working directory holds someone's config.json is not a miner on that alone."""
    cfg = MinerConfig("/tmp/x/config.json", pools=("p.example:443",), users=(WALLET,))
    shell = ProcessSnapshot(pid=1, exe="/usr/bin/bash", cwd="/tmp/x", cmdline=("bash", "-c", "ls"), miner_config=cfg)
    evs = cmdline.detect(shell, CTX)
    assert evs and not any(e.strong for e in evs)


# --- what the signature regexes are given ------------------------------------------------


class _Recording:
    """A real regex that also notes every text it is asked to search."""

    def __init__(self, pattern: str) -> None:
        import re

        self.regex = re.compile(pattern)
        self.pattern = pattern
        self.texts: list[str] = []

    def search(self, text: str):
        self.texts.append(text)
        return self.regex.search(text)


def _recording_context(pattern: str) -> tuple[Context, _Recording]:
    import dataclasses

    from agent.signatures import Pattern

    spy = _Recording(pattern)
    sigs = dataclasses.replace(SIGS, cmdline_patterns=(Pattern("spy", spy, 40, "unit test"),),
                               wallet_patterns=(Pattern("spy_wallet", spy, 30, "unit test"),))
    return Context(sigs), spy


def test_cmdline_regexes_get_a_capped_line_that_keeps_what_padding_surrounds():
    """A 2 MB padded argv reaches the regexes as at most MAX_MATCH_TEXT characters, and the miner
    arguments on both sides of the padding are still in it (and still found)."""
    from agent.signatures import MAX_MATCH_TEXT

    ctx, spy = _recording_context(r"stratum\+tcp://\S+")
    pad = "modprobe msr," * 10_000
    proc = ProcessSnapshot(pid=1, cmdline=("m", "--donate-level=1", pad, "-o", "stratum+tcp://pool.example:3333",
                                           *[pad] * 15, "-u", WALLET))
    details = [e.detail for e in cmdline.detect(proc, ctx)]
    assert spy.texts and max(map(len, spy.texts)) <= MAX_MATCH_TEXT
    assert all(t.startswith("m --donate-level=1 ") and t.endswith(f" -u {WALLET}") for t in spy.texts)
    assert any("stratum+tcp://pool.example:3333" in d for d in details), details


def test_image_config_regexes_get_a_capped_text_of_env_and_labels():
    """A 96 KiB image Env reaches the regexes capped, with the Env entries and labels after it kept."""
    from agent.signatures import MAX_MATCH_TEXT

    ctx, spy = _recording_context(r"stratum\+tcp://\S+")
    container = ContainerInfo(id="c" * 64, name="x", image="someone/app",
                              env=("PAD=" + "modprobe msr," * 7600, "UPSTREAM=stratum+tcp://pool.example:3333"),
                              labels=(("note", "x" * 100_000),))
    evidence = image_policy.detect(container, ctx)
    assert spy.texts and max(map(len, spy.texts)) <= MAX_MATCH_TEXT
    assert any("stratum+tcp://pool.example:3333" in e.detail for e in evidence), evidence


def test_pool_urls_are_capped_in_length_and_number():
    """Each URL handed to the endpoint parser is cut; of 100,000 -o flags the first and the last are kept."""
    from agent.detectors.pool_urls import MAX_URL
    from agent.signatures import MAX_MATCH_ITEMS

    argv = ("m", *[x for i in range(100_000) for x in ("-o", f"h{i}.example:3333")])
    urls = cmdline_urls(argv)
    assert len(urls) == MAX_MATCH_ITEMS and urls[0] == "h0.example:3333" and urls[-1] == "h99999.example:3333"
    long_url = cmdline_urls(("m", "-o", "stratum+tcp://" + "a" * 100_000 + ".example:3333"))
    assert long_url and all(len(u) <= MAX_URL for u in long_url)
    assert parse_endpoint("stratum+tcp://" + "a." * 50_000 + "example:3333") is None


# ------------------------------------------------------------ evidence an analyst reads (issue 15)

_INTERNAL_IDS = ("stratum_url", "pool_url_flag", "user_flag", "donate_level", "monero_address", "algo_miner",
                 "cpu_max_threads_hint", "randomx_flag", "coin_flag")


def _bundled_ctx() -> Context:
    from agent.signatures import load_bundle

    return Context(load_bundle())


def test_cmdline_evidence_says_what_it_saw_without_pattern_ids_and_prints_the_wallet_once():
    """An XMRig command line: every detail is plain words (no bundle ids such as stratum_url or pool_url_flag),
    says why it matters, and the wallet address appears in exactly one detail."""
    proc = ProcessSnapshot(pid=1, cmdline=("xmrig", "-o", "stratum+tcp://pool.example.org:3333", "-u", WALLET,
                                           "--donate-level=1", "-a", "rx/0", "--cpu-max-threads-hint=50"))
    details = [e.detail for e in cmdline.detect(proc, _bundled_ctx())]
    assert len(details) >= 5, details
    for d in details:
        assert not any(i in d for i in _INTERNAL_IDS), d
    assert sum(WALLET in d for d in details) == 1, details
    assert any(d.startswith("Monero wallet address on the command line: ") and "paid" in d for d in details), details
    assert any("stratum URL" in d and "mining pools" in d for d in details), details
    assert any("-u/--user" in d and "<wallet>" in d for d in details), details


def test_a_memfd_executable_is_called_fileless_not_deleted():
    """/proc/PID/exe of a program run from memfd_create reads '/memfd:NAME (deleted)': that is a fileless
    executable, not one 'deleted after it started'."""
    proc = ProcessSnapshot(pid=1, name="x", exe="/memfd:payload", exe_deleted=True, cmdline=("x",))
    details = [e.detail for e in location.detect(proc, CTX)]
    assert any(d.startswith("fileless executable: ") and "memfd:payload" in d for d in details), details
    assert not any("deleted" in d for d in details), details
    gone = ProcessSnapshot(pid=2, name="y", exe="/opt/y", exe_deleted=True, cmdline=("y",))
    assert any("was deleted from disk while it runs" in e.detail for e in location.detect(gone, CTX))


def test_network_evidence_explains_a_stratum_port():
    """A bare connection to a stratum port says it is a common mining-pool port and weak alone."""
    proc = ProcessSnapshot(pid=1, connections=(Connection("10.0.0.2", 5000, "192.0.2.7", 3333, "ESTABLISHED"),))
    (e,) = network.detect(proc, _bundled_ctx())
    assert e.detail.startswith("connected to 192.0.2.7:3333: port 3333 is a common mining-pool (stratum) port")
    assert "weak alone" in e.detail
