"""Tests for agent.signatures: the bundled bundle, validation of broken ones, YARA and patterns."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.errors import SignatureError
from agent.signatures import (
    MANIFEST,
    bundle_files,
    bundled_directory,
    check_bundle,
    describe,
    load_bundle,
)

REPO = Path(__file__).resolve().parent.parent
UPDATE_MANIFEST = REPO / "scripts" / "update_manifest.py"
BAD_BUNDLE = Path(__file__).resolve().parent / "data" / "bad_bundle"
CAMPAIGN_MD5 = "16572572588c2e241225ea2bf6807eff"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def sig():
    return load_bundle()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A private copy of the bundled signatures that a test may break."""
    target = tmp_path / "bundle"
    shutil.copytree(bundled_directory(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def append(root: Path, rel: str, *lines: str) -> int:
    """Append ``lines`` to a bundle file; the line number of the first one."""
    path = root / rel
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    first = text.count("\n") + 1
    path.write_text(text + "".join(line + "\n" for line in lines), encoding="utf-8")
    return first


def refresh_manifest(root: Path) -> None:
    subprocess.run([sys.executable, str(UPDATE_MANIFEST), str(root)], check=True, capture_output=True)


def issue_strings(directory: Path) -> list[str]:
    return [str(issue) for issue in check_bundle(directory)[1]]


def xmrig_strings() -> list[bytes]:
    # Assembled from pieces so this test file does not itself carry the XMRig fingerprint.
    return [b"XMR" + b"ig 6.26.0", b"donate.v2." + b"xmrig.com", b"donate.ssl." + b"xmrig.com",
            b"--donate-" + b"level=N", b"--randomx-" + b"mode=MODE", b"crypto" + b"night/r",
            b".config/" + b"xmrig.json", b"XMRIG" + b"_EXE", b"%s/%s (Linux " + b"x86_64) libuv/%s"]


# --- the bundled bundle ----------------------------------------------------------------


def test_bundled_bundle_loads_with_campaign_hash_and_pool_domains(sig):
    """The shipped bundle loads cleanly, knows the campaign's xmrig MD5 and many pool domains."""
    assert sig.version == "2026.12.01.3"
    assert CAMPAIGN_MD5 in sig.hashes
    assert len(sig.pool_domains) > 50
    assert sig.yara is not None and sig.yara_rule_count >= 5
    assert {"thanhtudo", "thieunutre", "chanquaa"} <= set(sig.bad_namespaces)
    assert {"openjdk", "golang"} <= set(sig.official_images)
    assert "dao.py" in sig.launchers and "xmrig" in sig.miner_names


def test_every_entry_has_a_source(sig):
    """Every IOC entry, pattern and active YARA rule in the shipped bundle names its source."""
    entries = [*sig.hashes.values(), *sig.pool_domains, *sig.disabled_pool_domains,
               *sig.pool_ports.values(), *sig.disabled_pool_ports.values(), *sig.miner_names.values(),
               *sig.env_vars.values(), *sig.official_images.values(), *sig.bad_namespaces.values(),
               *sig.bad_images.values(), *sig.launchers.values(),
               *sig.cmdline_patterns, *sig.wallet_patterns]
    assert entries
    for entry in entries:
        assert entry.source.strip() and entry.file and entry.line > 0, entry
    for name, meta in sig.yara_meta.items():
        assert meta["source"].strip() and meta["description"].strip(), name


def test_noisy_entries_ship_disabled_with_a_reason(sig):
    """Web ports and dynamic-DNS domains are shipped disabled and say why; stratum ports stay on."""
    for port in (25, 80, 443, 8080, 8888):
        assert port not in sig.pool_ports
        assert "disabled:" in sig.disabled_pool_ports[port].source
    for port in (3333, 4444, 5555, 7777, 14444, 45700):
        assert port in sig.pool_ports
    assert sig.pool_domain("foo.webhop.net") is None
    assert "noisy.yar" in sig.yara_disabled


def test_bundled_manifest_verifies(sig):
    """MANIFEST.sha256 lists every other bundle file with its current SHA-256, and the tool agrees."""
    root = Path(sig.directory)
    listed = {}
    for line in (root / MANIFEST).read_text(encoding="utf-8").splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    assert sorted(listed) == bundle_files(root)
    for rel, digest in listed.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    done = subprocess.run([sys.executable, str(UPDATE_MANIFEST), "--check", str(root)], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_loading_is_fast():
    """Loading the bundled set takes well under 100 ms."""
    best = min(_timed(load_bundle) for _ in range(3))
    assert best < 0.1


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_describe_counts_what_the_bundle_holds(sig):
    """describe() reports the version and a count per list, for `signatures check`."""
    info = describe(sig)
    assert info["version"] == sig.version
    assert info["hashes"] == len(sig.hashes) >= 100
    assert info["pool_domains"] == len(sig.pool_domains)
    assert info["pool_ports_disabled"] == len(sig.disabled_pool_ports)
    assert info["yara_rules"] == sig.yara_rule_count


# --- broken bundles --------------------------------------------------------------------


def test_broken_bundle_reports_every_bad_entry_with_file_and_line(bundle):
    """Bad entries in several files are all reported, each with its file and line, in one error."""
    bad = {
        "hashes.txt": append(bundle, "hashes.txt", "xyz123 | fake | test",
                             "d41d8cd98f00b204e9800998ecf8427 | short | test"),
        "pool_ports.txt": append(bundle, "pool_ports.txt", "\u00b3 | enabled | test",
                                 "3333 | enabled | test: duplicate",
                                 "3390 | maybe | test", "3391 | disabled | test without a reason"),
        "pool_domains.txt": append(bundle, "pool_domains.txt", "minexmr.com | enabled | test: duplicate",
                                   "pool.supportxmr.com | enabled | test: covered by supportxmr.com"),
        "miner_names.txt": append(bundle, "miner_names.txt", "xmrig | test: duplicate"),
        "cmdline_patterns.txt": append(bundle, "cmdline_patterns.txt", "broken | 10 | (?P<x | test",
                                       "greedy | 10 | .* | test: matches everything"),
        "wallet_patterns.txt": append(bundle, "wallet_patterns.txt", "heavy | 500 | \\bx\\b | test"),
        "env_vars.txt": append(bundle, "env_vars.txt", "pool_url | test: lower case"),
        "images.txt": append(bundle, "images.txt", "registry | docker.io | test"),
        "launchers.txt": append(bundle, "launchers.txt", "run_miner.sh |"),
    }
    refresh_manifest(bundle)
    issues = issue_strings(bundle)
    expected = [
        f"hashes.txt:{bad['hashes.txt']}: digest", f"hashes.txt:{bad['hashes.txt'] + 1}: digest",
        f"pool_ports.txt:{bad['pool_ports.txt']}: port must be",
        f"pool_ports.txt:{bad['pool_ports.txt'] + 1}: duplicate port",
        f"pool_ports.txt:{bad['pool_ports.txt'] + 2}: status",
        f"pool_ports.txt:{bad['pool_ports.txt'] + 3}: a disabled entry",
        f"pool_domains.txt:{bad['pool_domains.txt']}: duplicate domain",
        f"pool_domains.txt:{bad['pool_domains.txt'] + 1}: 'pool.supportxmr.com' is already covered",
        f"miner_names.txt:{bad['miner_names.txt']}: duplicate",
        f"cmdline_patterns.txt:{bad['cmdline_patterns.txt']}: regex does not compile",
        f"cmdline_patterns.txt:{bad['cmdline_patterns.txt'] + 1}: regex matches the empty string",
        f"wallet_patterns.txt:{bad['wallet_patterns.txt']}: weight",
        f"env_vars.txt:{bad['env_vars.txt']}: 'pool_url' is not a valid",
        f"images.txt:{bad['images.txt']}: unknown kind 'registry'",
        f"launchers.txt:{bad['launchers.txt']}: missing source",
    ]
    for prefix in expected:
        assert any(issue.startswith(prefix) for issue in issues), (prefix, issues)
    assert len(issues) == len(expected), issues
    with pytest.raises(SignatureError) as raised:
        load_bundle(bundle)
    assert len(raised.value.issues) == len(expected)
    assert f"launchers.txt:{bad['launchers.txt']}" in str(raised.value)


def test_broken_bundle_still_yields_the_good_entries(bundle):
    """check_bundle keeps every good entry next to the issues, so `check` can say what is usable."""
    append(bundle, "hashes.txt", "nothex | fake | test")
    refresh_manifest(bundle)
    sig, issues = check_bundle(bundle)
    assert len(issues) == 1 and sig is not None
    assert CAMPAIGN_MD5 in sig.hashes and sig.yara is not None


def test_yara_syntax_error_reports_file_and_line(bundle):
    """A YARA syntax error is reported with the file and the line from yara's message."""
    line = append(bundle, "yara/packers.yar", "rule MW_Broken", "{", "    condition:", "        filesize >", "}")
    refresh_manifest(bundle)
    issues = issue_strings(bundle)
    assert len(issues) == 1, issues
    assert issues[0].startswith(f"yara/packers.yar:{line + 4}: YARA: syntax error")


def test_yara_rules_need_meta_unique_names_and_no_includes(bundle):
    """Rules without the required meta, duplicate rule names, includes and foreign imports are issues."""
    bare = append(bundle, "yara/miners.yar", "rule MW_No_Meta { condition: false }")
    dupe = append(bundle, "yara/packers.yar", "rule MW_XMRig_ELF { meta: description = \"d\" condition: false }")
    (bundle / "yara" / "include.yar").write_text('include "/etc/passwd"\nrule MW_Inc { condition: false }\n')
    (bundle / "yara" / "console.yar").write_text('import "console"\nrule MW_Con { condition: false }\n')
    toml = (bundle / "bundle.toml").read_text()
    toml = toml.replace('"packers.yar"]', '"packers.yar", "include.yar", "console.yar"]')
    (bundle / "bundle.toml").write_text(toml)
    refresh_manifest(bundle)
    issues = issue_strings(bundle)
    assert any(i.startswith(f"yara/miners.yar:{bare}: rule MW_No_Meta: meta weight") for i in issues), issues
    assert any(i.startswith(f"yara/packers.yar:{dupe}: rule MW_XMRig_ELF is already defined in yara/xmrig.yar")
               for i in issues), issues
    assert "yara/include.yar:1: YARA: includes are disabled" in issues
    assert any(i.startswith("yara/console.yar:1: import 'console' is not allowed") for i in issues), issues


def test_unlisted_yara_file_is_reported(bundle):
    """A .yar file that bundle.toml lists neither as enabled nor as disabled is an issue."""
    (bundle / "yara" / "extra.yar").write_text("rule MW_Extra { condition: false }\n")
    refresh_manifest(bundle)
    assert issue_strings(bundle) == [
        "yara/extra.yar: not listed in bundle.toml [yara] enabled or [yara.disabled]"]


def test_missing_version_means_no_signatures(bundle):
    """A bundle.toml without a version yields an issue and no Signatures at all."""
    (bundle / "bundle.toml").write_text('description = "no version"\n[yara]\nenabled = ["xmrig.yar"]\n'
                                        '[yara.disabled]\n"noisy.yar" = "noisy"\n')
    refresh_manifest(bundle)
    sig, issues = check_bundle(bundle)
    assert sig is None
    assert [str(i) for i in issues] == ["bundle.toml: version is missing or not a string without spaces"]


def test_tampering_without_updating_the_manifest_is_reported(bundle):
    """A changed, a deleted and an added file are each reported by name until the manifest is rebuilt."""
    append(bundle, "hashes.txt", "0" * 64 + " | test | test")
    (bundle / "launchers.txt").unlink()
    (bundle / "notes.txt").write_text("stray file\n")
    issues = issue_strings(bundle)
    assert any(i.startswith("hashes.txt: content does not match MANIFEST.sha256") for i in issues), issues
    assert any(i.startswith("launchers.txt: listed in MANIFEST.sha256") for i in issues), issues
    assert "notes.txt: not listed in MANIFEST.sha256" in issues
    assert len(issues) == 3, issues


def test_missing_directory_is_an_issue_not_a_crash(tmp_path):
    """A bundle directory that does not exist gives one issue and no signatures."""
    sig, issues = check_bundle(tmp_path / "nowhere")
    assert sig is None and len(issues) == 1
    with pytest.raises(SignatureError):
        load_bundle(tmp_path / "nowhere")


def test_bad_bundle_fixture_reports_what_its_readme_says():
    """tests/data/bad_bundle (used by CLI tests) reports exactly the problems its README lists."""
    sig, issues = check_bundle(BAD_BUNDLE)
    where = sorted(f"{i.file}:{i.line}" for i in issues)
    assert where == sorted([
        "cmdline_patterns.txt:3", "hashes.txt:3", "images.txt:4", "launchers.txt:3",
        "pool_domains.txt:0", "pool_ports.txt:3", "yara/broken.yar:6",
    ])
    assert sig is not None and sig.version == "2026.11.28.0-broken"


# --- matching ---------------------------------------------------------------------------


def test_xmrig_rule_matches_a_blob_of_reference_strings(sig):
    """An ELF-looking blob with XMRig strings hits the xmrig rule, whose meta says miner, weight 100."""
    blob = b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"\0".join(xmrig_strings()[:4]) + b"\0"
    matches = {m.rule: m for m in sig.yara.match(data=blob)}
    assert "MW_XMRig_ELF" in matches
    assert matches["MW_XMRig_ELF"].namespace == "xmrig"
    assert matches["MW_XMRig_ELF"].meta["category"] == "miner"
    assert matches["MW_XMRig_ELF"].meta["weight"] == 100


def test_no_rule_fires_on_text_quoting_miner_strings(sig):
    """Text that quotes miner strings (our rule files, docs, this test) is not an ELF or memory: no match."""
    text = b"# notes\n" + b"\n".join(xmrig_strings()) + b"\nstratum+tcp:// mining.subscribe mining.authorize\n"
    assert sig.yara.match(data=text) == []
    files = [p for p in Path(sig.directory).rglob("*") if p.is_file()] + [Path(__file__)]
    assert {str(p): sig.yara.match(str(p)) for p in files} == {str(p): [] for p in files}


def test_xmrig_rules_give_one_verdict_per_scan(sig):
    """An unpacked XMRig-like ELF hits only the file rule, so file and memory rules never add up."""
    blob = b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"\0".join(xmrig_strings()) + b"\0"
    assert [m.rule for m in sig.yara.match(data=blob) if m.namespace == "xmrig"] == ["MW_XMRig_ELF"]


def test_mw_memory_scan_switches_memory_rules_on_and_file_rules_off(sig):
    """With mw_memory_scan set, XMRig strings hit the memory rule even behind an ELF header; file rules stay off."""
    strings = b"\0".join(xmrig_strings()) + b"\0"
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 57 + strings + b"UPX!\0"
    memory = {"mw_memory_scan": True}
    assert [m.rule for m in sig.yara.match(data=elf, externals=memory) if m.namespace != "miners"] == \
        ["MW_XMRig_Memory"]
    assert [m.rule for m in sig.yara.match(data=b"\0" * 16 + strings, externals=memory)] == ["MW_XMRig_Memory"]
    assert sig.yara.match(data=b"notes\n" + strings) == []  # the external defaults to false: a file scan


def test_memory_scan_finds_an_obfuscated_miner_that_a_file_scan_misses(sig, helper_bins, spawn):
    """The running fakeminer-plain (XOR-encoded strings) matches the memory rule; its file does not."""
    binary = helper_bins["fakeminer-plain"]
    assert not [m for m in sig.yara.match(str(binary)) if m.meta["category"] == "miner"]
    proc = spawn([binary, "-o", "127.0.0.1:9", "-t", "0", "--seconds", "20"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    rules: set[str] = set()
    while time.monotonic() < deadline and "MW_XMRig_Memory" not in rules and proc.poll() is None:
        time.sleep(0.1)  # the strings are decoded into the heap right after start
        rules = {m.rule for m in sig.yara.match(pid=proc.pid)}
    assert "MW_XMRig_Memory" in rules
    assert "MW_XMRig_ELF" not in rules


@pytest.mark.parametrize("path", ["/bin/ls", sys.executable])
def test_yara_rules_do_not_match_ordinary_binaries(sig, path):
    """No active rule fires on /bin/ls or on the Python interpreter's binary."""
    real = Path(path).resolve()
    if not real.is_file():
        pytest.skip(f"{path} not present")
    assert sig.yara.match(str(real)) == []


def test_upx_rule_is_a_low_weight_packer_rule(sig):
    """A UPX-marked ELF matches only the packer rule, which is not a miner verdict."""
    blob = b"\x7fELF\x02\x01\x01" + b"\0" * 100 + b"UPX!" + b"\0" * 100
    matches = sig.yara.match(data=blob)
    assert [m.rule for m in matches] == ["MW_UPX_Packed_ELF"]
    assert matches[0].meta["category"] == "packer" and matches[0].meta["weight"] <= 20


def _monero_address(rng: random.Random, first: str = "4", length: int = 95) -> str:
    return first + rng.choice("123456789AB") + "".join(rng.choice(BASE58) for _ in range(length - 2))


def _wallet_hits(sig, text: str) -> set[str]:
    return {p.name for p in sig.wallet_patterns if p.regex.search(text)}


def test_wallet_patterns_match_monero_addresses(sig):
    """Syntactically valid Monero standard, sub- and integrated addresses are recognised in a command line."""
    rng = random.Random(1496)
    standard = _monero_address(rng)
    assert "monero_address" in _wallet_hits(sig, f"./x -o pool:3333 -u {standard}.worker1 -p x")
    assert "monero_subaddress" in _wallet_hits(sig, f"--user={_monero_address(rng, first='8')}")
    assert "monero_integrated" in _wallet_hits(sig, f"-u {_monero_address(rng, length=106)}")
    assert "bitcoin_bech32" in _wallet_hits(sig, "-u bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq")


def test_wallet_patterns_ignore_hex_strings_uuids_and_longer_tokens(sig):
    """A 95-char hex string (even one using only base58 characters), a UUID or a longer token is no wallet."""
    rng = random.Random(73)
    hex_like = "4a" + "".join(rng.choice("123456789abcdef") for _ in range(93))
    hex_with_zeros = "4" + "".join(rng.choice("0123456789abcdef") for _ in range(94))
    assert _wallet_hits(sig, f"-u {hex_like}") == set()
    assert _wallet_hits(sig, f"sha={hex_with_zeros}") == set()
    assert _wallet_hits(sig, f"id={uuid.UUID(int=rng.getrandbits(128))}") == set()
    assert _wallet_hits(sig, "x" + _monero_address(rng)) == set()


def test_cmdline_patterns_match_xmrig_flags_but_not_compilers(sig):
    """A typical xmrig command line hits several patterns; gcc, ssh and a web server hit none."""
    miner = ("./kworker -o stratum+tcp://pool.example.net:3333 -u WALLET --donate-level=1 "
             "-a rx/0 --randomx-mode=light --cpu-max-threads-hint=25")
    hits = {p.name for p in sig.cmdline_patterns if p.regex.search(miner)}
    assert {"stratum_url", "pool_url_flag", "donate_level", "algo_miner", "randomx_flag",
            "cpu_max_threads_hint"} <= hits
    for innocent in ("gcc -O2 -o pool.o -c pool.c", "ssh -o StrictHostKeyChecking=no host",
                     "gunicorn --bind 0.0.0.0:8000 app:app", "java -jar app.jar --url=http://db.example.com:5432/x"):
        assert [p.name for p in sig.cmdline_patterns if p.regex.search(innocent)] == [], innocent


def test_pool_domain_matches_subdomains_but_not_suffix_tricks(sig):
    """pool_domain() matches a listed domain and its subdomains, never a look-alike ending."""
    assert sig.pool_domain("xmr-eu1.nanopool.org").value == "nanopool.org"
    assert sig.pool_domain("POOL.MINEXMR.COM.").value == "minexmr.com"
    assert sig.pool_domain("minexmr.com").value == "minexmr.com"
    assert sig.pool_domain("notminexmr.com") is None
    assert sig.pool_domain("minexmr.com.evil.example") is None
    assert sig.pool_domain("example.com") is None


def test_env_var_lookup_handles_prefix_entries(sig):
    """env_var() finds exact names and XMRIG_* prefixed ones, and nothing for ordinary variables."""
    assert sig.env_var("POOL_URL").value == "POOL_URL"
    assert sig.env_var("XMRIG_EXE").value == "XMRIG_*"
    assert sig.env_var("PATH") is None


# --- RE2: linear-time matching, and what a matcher is given ------------------------------

# The shipped regexes before they were rewritten for RE2 (look-around and an unbounded .*),
# kept to check that the rewrites match what they matched.
FORMER = {
    "pool_url_flag": r"(?:^|\s)(?:-o\s*|--url(?:=|\s+))(?!https?://)(?:[A-Za-z0-9+]+://)?(?:(?:[A-Za-z0-9-]+\.)+"
                     r"[A-Za-z]{2,}|\d{1,3}(?:\.\d{1,3}){3}):\d{2,5}(?=[\s/]|$)",
    "msr_modprobe": r"\bmodprobe\s+msr\b.*\ballow_writes=on\b",
    "monero_address": r"\b(?![0-9a-fA-F]{95}\b)4[1-9AB][1-9A-HJ-NP-Za-km-z]{93}\b",
    "monero_subaddress": r"\b(?![0-9a-fA-F]{95}\b)8[1-9AB][1-9A-HJ-NP-Za-km-z]{93}\b",
    "monero_integrated": r"\b(?![0-9a-fA-F]{106}\b)4[1-9A-HJ-NP-Za-km-z]{105}\b",
    "bitcoin_base58": r"\b(?=[13][1-9A-HJ-NP-Za-km-z]{25,34}\b)(?=[1-9A-HJ-NP-Za-km-z]*[a-km-z])"
                      r"(?=[1-9A-HJ-NP-Za-km-z]*[A-HJ-NP-Z])[13][1-9A-HJ-NP-Za-km-z]{25,34}\b",
}


def test_every_signature_regex_is_compiled_with_re2(sig):
    """Every command-line and wallet pattern of the bundle is an RE2 regex (linear-time matching)."""
    patterns = [*sig.cmdline_patterns, *sig.wallet_patterns]
    assert len(patterns) > 20
    assert {type(p.regex).__module__.split(".")[0] for p in patterns} == {"re2"}


def test_patterns_re2_cannot_compile_are_rejected_with_file_and_line(bundle):
    """Backreferences, look-ahead, look-behind and \\Z are load errors at their file:line; a nested
    quantifier that backtracks in Python's re (``(a+)+$``) is fine: RE2 matches it in linear time."""
    first = append(bundle, "cmdline_patterns.txt",
                   "backreference | 10 | (xmr)ig\\1 | test",
                   "lookahead | 10 | xmrig(?=--) | test",
                   "lookbehind | 10 | (?<=--)donate | test",
                   "python_end | 10 | xmrig\\Z | test",
                   "nested | 10 | (a+)+$ | test")
    wallet = append(bundle, "wallet_patterns.txt", "negative_lookahead | 10 | \\b(?!0x)[0-9a-f]{40}\\b | test")
    refresh_manifest(bundle)
    sig, issues = check_bundle(bundle)
    where = [f"{i.file}:{i.line}" for i in issues]
    assert where == [*(f"cmdline_patterns.txt:{first + n}" for n in range(4)), f"wallet_patterns.txt:{wallet}"]
    assert all("does not compile with RE2" in i.message for i in issues), issues
    assert "nested" in {p.name for p in sig.cmdline_patterns}
    with pytest.raises(SignatureError) as raised:
        load_bundle(bundle)
    assert f"cmdline_patterns.txt:{first + 1}" in str(raised.value)


def test_no_pattern_repeats_a_wildcard_without_bound(sig):
    """No .* or .+ between two words: repetition is bounded ({0,128})."""
    for p in (*sig.cmdline_patterns, *sig.wallet_patterns):
        assert ".*" not in p.regex.pattern and ".+" not in p.regex.pattern, f"{p.file}:{p.line} {p.name}"


def _samples(rng: random.Random) -> str:
    """Command-line-like text around the rewritten patterns' edges: schemes, hex vs base58, lengths."""
    def token() -> str:
        kind = rng.random()
        if kind < 0.4:
            n = rng.choice([25, 26, 27, 34, 35, 36, 93, 94, 95, 96, 105, 106, 107])
            first = rng.choice(["4", "8", "1", "3", "4A", "4a", "89"])
            alphabet = rng.choice([BASE58, "123456789abcdef", "123456789ABCDEF", "0123456789abcdef", BASE58 + "0l_"])
            text = first + "".join(rng.choice(alphabet) for _ in range(n - len(first)))
            if rng.random() < 0.3:  # hex but for one base58 letter somewhere
                i = rng.randrange(len(first), n)
                text = text[:i] + rng.choice("ghijkmnGHJKZ") + text[i + 1:]
            return text
        if kind < 0.8:
            return (rng.choice(["-o", "-o ", "--url=", "--url ", "--url", "-o\t"])
                    + rng.choice(["", "http://", "https://", "HTTP://", "htt://", "httpx://", "httpsx://", "xhttp://",
                                  "h://", "stratum+tcp://", "tcp://", "http+s://", "://"])
                    + rng.choice(["pool.example.com", "1.2.3.4", "a.b", "a.bc", "localhost", "1.2.3", "x-y.z9.io"])
                    + rng.choice([":3333", ":1", ":12", ":123456", ":80/", ":443x", ""]))
        return rng.choice(["modprobe msr allow_writes=on", "modprobe  msr foo=1 allow_writes=on",
                           "modprobe msrx allow_writes=on", "modprobe msr " + "y" * rng.randrange(100) + " allow_writes=on"])
    return rng.choice(["", "x "]) + rng.choice([" ", "\t", "/"]).join(token() for _ in range(rng.randrange(1, 4)))


class _Either:
    """The first match of either regex (the earliest in the text)."""

    def __init__(self, *regexes) -> None:
        self.regexes = regexes

    def search(self, text):
        found = [m for m in (r.search(text) for r in self.regexes) if m is not None]
        return min(found, key=lambda m: m.start()) if found else None


def test_rewritten_patterns_match_what_the_former_ones_matched(sig):
    """On 4,000 edge-case command lines the RE2 rewrites agree with the former look-around regexes;
    bitcoin_base58 differs only where upper and lower case never touch (it needs them side by side)."""
    import re

    rng = random.Random(12)
    by_name = {p.name: p.regex for p in (*sig.cmdline_patterns, *sig.wallet_patterns)}
    # pool_url_flag was split in two (-o, and the weaker --url: issue 13): together they match what it matched
    by_name["pool_url_flag"] = _Either(by_name["pool_url_flag"], by_name["pool_url_long_flag"])
    former = {name: re.compile(text) for name, text in FORMER.items()}
    hits = dict.fromkeys(FORMER, 0)
    for _ in range(4000):
        text = _samples(rng)
        for name, old in former.items():
            before, after = old.search(text), by_name[name].search(text)
            hits[name] += before is not None
            if name == "bitcoin_base58" and before and not after:
                token = before.group(0)
                assert not re.search(r"[a-km-z][A-HJ-NP-Z]|[A-HJ-NP-Z][a-km-z]", token), token
                continue
            assert (before is None) == (after is None), (name, text)
            if before and name != "msr_modprobe":  # the former .* was greedy: a longer match, same verdict
                assert after.group(0).rstrip(" \t/") == before.group(0), (name, text)
    assert all(hits.values()), hits  # the samples reach every pattern


def test_match_text_keeps_start_and_end_and_the_arguments_around_padding():
    """A matcher gets at most MAX_MATCH_TEXT characters: each part cut to its start and end, then the whole."""
    from agent.signatures import MAX_MATCH_PART, MAX_MATCH_TEXT, clip_items, clip_middle, match_text

    assert clip_middle("short") == "short"
    cut = clip_middle("A" * 10 + "x" * 100_000 + "Z" * 10, 1000)
    assert len(cut) == 1000 and cut.startswith("A" * 10) and cut.endswith("Z" * 10)
    line = match_text(["xmrig", "--donate-level=1", "p" * 1_000_000, "-o", "pool.example.com:3333"])
    assert len(line) <= MAX_MATCH_TEXT
    assert line.startswith("xmrig --donate-level=1 p") and line.endswith("p -o pool.example.com:3333")
    many = match_text(["--first", *["pad" * 1000] * 500, "--last"])
    assert len(many) <= MAX_MATCH_TEXT and many.startswith("--first ") and many.endswith(" --last")
    assert max(len(w) for w in many.split(" ")) <= MAX_MATCH_PART
    assert clip_items(list(range(1000)), 10) == [0, 1, 2, 3, 4, 995, 996, 997, 998, 999]


def test_pattern_sets_find_exactly_what_searching_each_pattern_finds():
    """The RE2 set of a pattern file names the same patterns as searching each of them in turn."""
    from agent.signatures import load_bundle

    sig = load_bundle(None)
    samples = ["gcc -O2 -c foo.c -o foo.o", "xmrig -o stratum+tcp://pool.example:3333 -u x --donate-level=1",
               "./w --url pool.example:443 --coin monero -a rx/0 --cpu-max-threads-hint 75", "sh -c modprobe msr",
               "4" * 95 + " 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
               "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", ""]
    for patterns in (sig.cmdline_patterns, sig.wallet_patterns):
        assert patterns._set is not None, "the shipped patterns build an RE2 set"
        for text in samples:
            assert patterns.matching(text) == tuple(p for p in patterns if p.regex.search(text)), text
