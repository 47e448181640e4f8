"""Filling the disk: a burst of findings for distinct sparse executables keeps the quarantine bounded.

The attack (issue 12): each response that is ``done`` copied the executable into the quarantine,
holes written out as zeros and with no total cap: sparse files written in a burst became 193 MiB
of quarantine from 20 KiB on disk. Here real processes run real sparse executables (a copy of
``sleep`` with one unique 4 KiB block, truncated to 100 MiB), the responder stops each one
(enforce mode, ``stop_host_processes``) and keeps what its limits allow.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.collectors.procfs import ProcfsCollector
from agent.collectors.docker_api import DockerHandle
from agent.config import from_dict
from agent.model import Evidence, Finding, Severity
from agent.response import Responder
from tests.helpers import procs

NO_DOCKER = "unix:///nonexistent/minerwatch-test-docker.sock"
APPARENT = 100 << 20


def sparse_executables(tmp_path: Path, n: int, data_kib: int = 4) -> list[Path]:
    """``n`` distinct executables of 100 MiB apparent size holding a copy of sleep and ``data_kib`` KiB of data."""
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no sleep binary")
    out = []
    for i in range(n):
        path = tmp_path / f"burst-{i:02d}"
        shutil.copyfile(sleep, path)
        with open(path, "r+b") as f:
            f.seek(64 << 20)
            f.write(f"unique-{i}".encode().ljust(data_kib << 10, b"x"))
            f.truncate(APPARENT)
        os.chmod(path, 0o755)
        st = path.stat()
        assert st.st_size == APPARENT and st.st_blocks * 512 < (1 << 20), "tmp_path does not keep holes"
        out.append(path)
    return out


def _stopped(pid: int) -> bool:
    """The process is in state T. SIGSTOP is delivered asynchronously: right after the responder's
    pidfd_send_signal the target may not have stopped yet, so wait for it (a few seconds at most)."""
    return bool(procs.wait_until(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "T",
                                 5.0, 0.01, f"PID {pid} stopped"))


def burst(tmp_path, spawn, exes, **limits):
    cfg = from_dict({"agent": {"state_dir": str(tmp_path / "state")},
                     "response": {"mode": "enforce", "pause_severity": "high", "stop_host_processes": True, **limits}})
    responder = Responder(cfg, DockerHandle(NO_DOCKER), state_dir=cfg.agent.state_dir)
    collector = ProcfsCollector()
    outs = []
    for exe in exes:
        p = spawn([exe, "60"])
        procs.wait_until(lambda: os.readlink(f"/proc/{p.pid}/exe") == str(exe), 5, 0.02, "exec'd")
        snap = collector.snapshot(p.pid)
        assert snap is not None and snap.hashes is not None
        found = Finding(f"{p.pid:032x}", Severity.CRITICAL, 99, "test burst", (Evidence("yara", "miner", 99),),
                        process=snap)
        out = responder.respond(found)
        assert (out.response.action, out.response.result) == ("stop", "done"), out.response
        assert _stopped(p.pid)
        outs.append(out)
    return cfg, outs


def _copies(cfg) -> list[Path]:
    qdir = Path(cfg.agent.state_dir) / "quarantine"
    return [p for p in qdir.iterdir() if len(p.name) == 64]


def test_a_burst_of_sparse_executables_stays_under_the_file_cap(tmp_path, spawn):
    """Eight distinct sparse executables, room for three: three sparse copies kept, five refused, saying so."""
    exes = sparse_executables(tmp_path, 8)
    cfg, outs = burst(tmp_path, spawn, exes, quarantine_max_files=3)
    kept = [o for o in outs if "executable kept as quarantine/" in o.response.reason]
    refused = [o for o in outs if "executable not kept: quarantine full (3 of 3 files kept" in o.response.reason]
    assert len(kept) == 3 and len(refused) == 5, [o.response.reason for o in outs]
    copies = _copies(cfg)
    assert len(copies) == 3
    for copy in copies:
        st = copy.stat()
        assert st.st_size == APPARENT and st.st_blocks * 512 < (1 << 20), (copy, st.st_blocks)  # holes stayed holes
    assert {c.name for c in copies} == {o.process.hashes.sha256 for o in kept}  # the copies verify: hash of the source


def test_a_burst_stays_under_the_byte_cap_counted_in_blocks(tmp_path, spawn):
    """With 400 KiB of data each and 1 MiB of room, two copies fit (their blocks, not their 100 MiB), the rest
    is refused with the numbers; the quarantine's allocated size stays under the cap."""
    exes = sparse_executables(tmp_path, 5, data_kib=400)
    cfg, outs = burst(tmp_path, spawn, exes, quarantine_max_mb=1)
    reasons = [o.response.reason for o in outs]
    assert sum("executable kept as quarantine/" in r for r in reasons) == 2, reasons
    assert sum("executable not kept: quarantine full (" in r and "of 1.0 MiB kept" in r for r in reasons) == 3, reasons
    assert sum(c.stat().st_blocks * 512 for c in _copies(cfg)) <= 1 << 20


def test_one_copy_per_executable(tmp_path, spawn):
    """The same executable run twice is copied once; the second sighting joins its record."""
    exe = sparse_executables(tmp_path, 1)[0]
    cfg, outs = burst(tmp_path, spawn, [exe, exe])
    assert all("executable kept as quarantine/" in o.response.reason for o in outs), [o.response for o in outs]
    copies = _copies(cfg)
    assert len(copies) == 1
    record = json.loads(copies[0].with_name(f"{copies[0].name}.json").read_text())
    assert [s["alert"]["process"]["pid"] for s in record["sightings"]] == [o.process.pid for o in outs]


def test_the_hosts_bucket_has_its_own_cap(tmp_path, spawn):
    """Host processes are one bucket with the per-container caps, below the global ones."""
    cfg, outs = burst(tmp_path, spawn, sparse_executables(tmp_path, 3), quarantine_container_max_files=2)
    assert ["executable kept as quarantine/" in o.response.reason for o in outs] == [True, True, False]
    assert "executable not kept: quarantine full (2 of 100 files kept, 2 of 2 for the host)" in outs[-1].response.reason
    assert len(_copies(cfg)) == 2
