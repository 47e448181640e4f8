"""`minerwatch scan PATH...`: every regular file hashed and YARA-scanned, scripts and configs read for miner
command lines, wallets and pools; symlinks never followed, FIFOs and devices never opened; sweep exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.alerts_schema import validate
from tests.helpers.containers import TEST_WALLET

REPO = Path(__file__).resolve().parents[1]
# Runs the real CLI whether or not main.py registers scan yet.
_RUNNER = ("import sys; from agent.cli import main as m; from agent.cli.scan_cmd import scan; "
           "m.cli.commands.setdefault('scan', scan); m.main(sys.argv[1:])")
START = f"#!/bin/sh\ncd /opt/m\nexec ./xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u {TEST_WALLET} -k\n"
CONFIG = ('{"autosave": true, "randomx": {"1gb-pages": false},\n "pools": [{"url": "pool.supportxmr.com:443", '
          f'"user": "{TEST_WALLET}", "tls": true}}]}}\n')


def run_scan(*args: str, timeout: float = 120):
    proc = subprocess.run([sys.executable, "-c", _RUNNER, "scan", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    found = json.loads(proc.stdout) if "--json" in args and proc.returncode in (0, 1) else []
    for a in found:
        validate(a)
    return proc, found


@pytest.fixture
def tree(tmp_path, helper_bins):
    """A suspicious upload: a miner binary, its launcher and config deep in a tree, clean files, and traps."""
    top = tmp_path / "upload"
    deep = top / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "kworker").write_bytes(helper_bins.fakeminer.read_bytes())
    (top / "start.sh").write_text(START)
    (top / "a" / "config.json").write_text(CONFIG)
    (top / "notes.txt").write_text("just notes\n")
    (top / "data.bin").write_bytes(os.urandom(1 << 20))
    (top / "empty").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "miner").write_bytes(helper_bins.fakeminer.read_bytes())
    (top / "link-to-miner").symlink_to(outside / "miner")
    (top / "link-dir").symlink_to(outside)
    os.mkfifo(top / "fifo")  # opening it would block the scan forever
    return top


def test_scan_tree_finds_miner_script_and_config(tree):
    proc, found = run_scan(str(tree), "--json")
    assert proc.returncode == 1, proc.stderr
    by_path = {a["file"]["path"]: a for a in found}
    assert set(by_path) == {f"{tree}/a/b/c/kworker", f"{tree}/start.sh", f"{tree}/a/config.json"}
    assert by_path[f"{tree}/a/b/c/kworker"]["minerwatch"]["severity"] == "critical"
    for path in (f"{tree}/start.sh", f"{tree}/a/config.json"):
        a = by_path[path]
        assert a["minerwatch"]["severity"] in ("high", "critical")
        details = " ".join(e["detail"] for e in a["minerwatch"]["evidence"])
        assert "pool.supportxmr.com" in details and TEST_WALLET[:40] in details
    miner = by_path[f"{tree}/a/b/c/kworker"]["file"]
    import hashlib
    data = (tree / "a" / "b" / "c" / "kworker").read_bytes()
    assert miner["hash"] == {"sha256": hashlib.sha256(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
                             "md5": hashlib.md5(data).hexdigest()}
    assert not any("outside" in p for p in by_path)  # symlinks (to a file, to a directory) never followed


def test_human_report_and_exit_codes(tree, tmp_path):
    proc, _ = run_scan(str(tree))
    assert proc.returncode == 1 and "kworker" in proc.stdout and "config.json" in proc.stdout
    assert "files" in proc.stdout
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "hello.sh").write_text("#!/bin/sh\necho hello\n")
    (clean / "settings.json").write_text('{"url": "https://example.com:8443/", "user": "admin"}\n')
    proc, found = run_scan(str(clean), "--json", "--min-severity", "low")
    assert (proc.returncode, found) == (0, []), proc.stderr
    proc, _ = run_scan(str(clean), str(tmp_path / "missing"))
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_symlink_given_on_the_command_line_is_not_followed(tree):
    proc, found = run_scan(str(tree / "link-to-miner"), str(tree / "notes.txt"), "--json")
    assert (proc.returncode, found) == (0, []), proc.stderr
    assert "symlink" in proc.stderr


def test_single_file_and_fifo_never_opened(tree):
    """A FIFO named on the command line is refused without being opened (no writer: an open would hang)."""
    proc, found = run_scan(str(tree / "fifo"), str(tree / "start.sh"), "--json", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert [a["file"]["path"] for a in found] == [f"{tree}/start.sh"]
    assert "not a regular file" in proc.stderr


def test_shared_buffers_big_files_and_the_byte_limit(tmp_path, helper_bins):
    """Each worker reads every file into one reused buffer and a big file's YARA may run on the other worker:
    every file still gets its own digests (no bytes of an earlier, bigger file) and its own YARA hits; a file
    past the limit is not hashed, is YARA-scanned on its first part and is reported partial."""
    import hashlib
    import random

    from agent.collectors import scan_paths
    from agent.collectors.scan_paths import PathScanner
    from agent.signatures import load_bundle

    miner = helper_bins.fakeminer.read_bytes()
    rnd = random.Random(15)
    top = tmp_path / "t"
    top.mkdir()
    big = miner + rnd.randbytes(scan_paths.SPLIT_MIN + 12345)  # offers its YARA scan to the other worker
    (top / "big-miner").write_bytes(big)
    contents = {"big-miner": big, "big-clean": rnd.randbytes(scan_paths.SPLIT_MIN * 2 + 1)}
    (top / "big-clean").write_bytes(contents["big-clean"])
    for i in range(40):  # small files after big ones: the same buffers, shorter contents
        contents[f"s{i}"] = rnd.randbytes(rnd.randint(0, 70_000))
        (top / f"s{i}").write_bytes(contents[f"s{i}"])
    limit = scan_paths.SPLIT_MIN * 3
    huge = miner + rnd.randbytes(limit)
    (top / "huge").write_bytes(huge)
    scanner = PathScanner(load_bundle().yara, max_bytes=limit)
    snaps = {os.path.basename(s.path): s for s in scanner.scan([str(top)])}
    assert set(snaps) == {*contents, "huge"}
    for name, data in contents.items():
        s = snaps[name]
        assert s.partial == () and s.hashes is not None, name
        assert (s.hashes.sha256, s.hashes.sha1, s.hashes.md5, s.hashes.size) == (
            hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest(),
            len(data)), name
        assert s.head == data[:16] and s.text == "", name
    assert snaps["big-miner"].yara and not snaps["big-clean"].yara
    assert {h.rule for h in snaps["big-miner"].yara} == {h.rule for h in snaps["huge"].yara}
    assert snaps["huge"].hashes is None and snaps["huge"].partial == ("hashes",)
    assert scanner.stats.files == len(contents) + 1 and scanner.stats.partial == 1
    assert scanner.stats.bytes_read == sum(map(len, contents.values())) + limit
