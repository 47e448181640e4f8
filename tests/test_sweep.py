"""End-to-end sweeps: real processes, real sockets on loopback, a real Docker engine, the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path


from tests.helpers import procs
from tests.helpers.containers import TEST_WALLET
from tests.sweeping import REPO, sweep, write_config

SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}


def at_least(alert: dict, level: str) -> bool:
    return SEVERITY_RANK[alert["minerwatch"]["severity"]] >= SEVERITY_RANK[level]


def wait_connected(pid: int, port: int) -> None:
    procs.wait_until(lambda: procs.established_to(pid, port), 10, 0.05, f"pid {pid} connected to port {port}")


def test_host_stratum_miner_is_high_with_pid_exe_hashes_and_port(tmp_path, helper_bins, spawn, fake_pool):
    """A host miner with a stratum URL and wallet, connected to a loopback pool, is high or above (exit 1)."""
    miner = spawn([helper_bins.fakeminer, "-o", f"stratum+tcp://127.0.0.1:{fake_pool.port}", "-u", TEST_WALLET,
                   "-t", "0", "--seconds", "60"])
    wait_connected(miner.pid, fake_pool.port)
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    assert run.code == 1, run.stderr
    alert = run.for_pid(miner.pid)
    assert alert is not None, run.stdout
    assert at_least(alert, "high")
    assert alert["process"]["executable"] == str(helper_bins.fakeminer)
    digest = hashlib.sha256(helper_bins.fakeminer.read_bytes()).hexdigest()
    assert alert["process"]["hash"]["sha256"] == digest
    assert alert["process"]["hash"]["md5"] == hashlib.md5(helper_bins.fakeminer.read_bytes()).hexdigest()
    assert alert["destination"]["port"] == fake_pool.port and alert["destination"]["ip"] == "127.0.0.1"
    assert alert["event"]["kind"] == "alert" and alert["threat"]["technique"]["id"] == "T1496"


def test_config_file_miner_is_medium_or_above(tmp_path, helper_bins, spawn, fake_pool):
    """A renamed miner configured only by config.json in its cwd, connected to its pool, is medium or above."""
    workdir = tmp_path / "app"
    workdir.mkdir()
    binary = workdir / "worker"
    shutil.copy2(helper_bins.fakeminer_plain, binary)
    (workdir / "config.json").write_text(json.dumps({
        "autosave": True,
        "cpu": {"enabled": True},
        "pools": [{"url": f"127.0.0.1:{fake_pool.port}", "user": TEST_WALLET, "pass": "x"}],
    }))
    miner = spawn([str(binary), "-t", "0", "--seconds", "60"], cwd=workdir)
    wait_connected(miner.pid, fake_pool.port)
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    alert = run.for_pid(miner.pid)
    assert alert is not None, run.stdout
    assert at_least(alert, "medium")
    signals = {e["signal"] for e in alert["minerwatch"]["evidence"]}
    assert "config" in signals and "network" in signals
    assert alert["destination"]["port"] == fake_pool.port


def _bundle_with_hash(tmp_path: Path, digest: str) -> Path:
    """Copy the bundled signatures and add one SHA-256, with its manifest regenerated."""
    from agent.signatures import bundled_directory

    bundle = tmp_path / "bundle"
    shutil.copytree(bundled_directory(), bundle)
    with open(bundle / "hashes.txt", "a") as fh:
        fh.write(f"\n{digest} | test-miner | minerwatch test suite\n")
    subprocess.run([sys.executable, str(REPO / "scripts" / "update_manifest.py"), str(bundle)], check=True,
                   capture_output=True)
    return bundle


def test_known_hash_is_critical_even_after_the_file_is_deleted(tmp_path, spawn):
    """A running executable whose hash is in the bundle is critical, also once its file is deleted."""
    binary = tmp_path / "innocent"
    shutil.copy2("/bin/sleep", binary)
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    bundle = _bundle_with_hash(tmp_path, digest)
    proc = spawn([str(binary), "300"])
    procs.wait_until(lambda: procs.exe(proc.pid).startswith(str(binary)), 5, 0.02, "exec")
    cfg = write_config(tmp_path, agent=f'signatures = "{bundle}"')
    for deleted in (False, True):
        if deleted:
            binary.unlink()
        run = sweep("--json", "--config", str(cfg))
        alert = run.for_pid(proc.pid)
        assert alert is not None, (deleted, run.stdout, run.stderr)
        assert alert["minerwatch"]["severity"] == "critical"
        assert alert["process"]["hash"]["sha256"] == digest
        assert any(e["signal"] == "hash" for e in alert["minerwatch"]["evidence"])
        if deleted:
            assert any("deleted" in e["detail"] for e in alert["minerwatch"]["evidence"])


def test_container_miner_reports_container_and_namespace_connection(tmp_path, miner_in_container):
    """A miner in a --network none container is reported with its container and the pool read from its namespace."""
    m = miner_in_container
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    alert = run.for_pid(m.pid)
    assert alert is not None, run.stdout + run.stderr
    assert at_least(alert, "high")
    assert alert["container"]["id"] == m.container.id
    assert alert["container"]["name"] == m.container.name
    assert alert["container"]["image"]["name"] == "minerwatch-test/base:1"
    assert alert["destination"] == {"ip": "127.0.0.1", "port": m.pool_port}


def test_benign_cpu_burner_is_not_medium(tmp_path, helper_bins, spawn):
    """A CPU burner on every core with no pool stays below medium."""
    burner = spawn([helper_bins.burner, "-t", str(os.cpu_count() or 2), "--seconds", "60"])
    procs.wait_until(lambda: procs.cpu_fraction(burner.pid, 0.3) > 0.5, 10, 0.1, "burner busy")
    run = sweep("--json", "--min-severity", "low", "--config", str(write_config(tmp_path)))
    alert = run.for_pid(burner.pid)
    assert alert is None or not at_least(alert, "medium"), alert


def test_clean_host_exits_zero(tmp_path):
    """With nothing mining, the sweep exits 0 and prints an empty JSON array."""
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    assert run.code == 0, run.stdout
    assert run.alerts == []


def test_human_report_on_a_clean_host(tmp_path):
    """Without --json the sweep prints a readable summary."""
    run = sweep("--config", str(write_config(tmp_path)))
    assert run.code == 0
    assert "nothing at or above medium" in run.stdout and "processes" in run.stdout


def test_kworker_named_miner_is_reported(tmp_path, helper_bins, spawn, fake_pool):
    """A miner renamed kworker/0:1 (a kernel-thread name on a process with an executable) is reported."""
    workdir = tmp_path / "kw"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"pools": [{"url": f"127.0.0.1:{fake_pool.port}", "user": "x"}]}))
    miner = spawn(["kworker/0:1", "-t", "0", "--seconds", "60", "--name", "kworker/0:1"],
                  executable=str(helper_bins.fakeminer_plain), cwd=workdir)
    wait_connected(miner.pid, fake_pool.port)
    assert procs.comm(miner.pid) == "kworker/0:1"
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    assert run.code == 1
    alert = run.for_pid(miner.pid)
    assert alert is not None and at_least(alert, "medium")
    assert any(e["signal"] == "masquerade" for e in alert["minerwatch"]["evidence"])


def test_malformed_config_exits_2_naming_file_and_key(tmp_path):
    """A bad config value stops the sweep with exit 2 and says which file and key."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[watch]\nmax_file_mb = 'big'\n")
    run = sweep("--json", "--config", str(cfg))
    assert run.code == 2
    assert str(cfg) in run.stderr and "[watch] max_file_mb" in run.stderr


def test_malformed_signature_bundle_exits_2_with_file_and_line(tmp_path):
    """A broken signature bundle stops the sweep with exit 2 and file:line of each bad entry."""
    bad = REPO / "tests" / "data" / "bad_bundle"
    cfg = write_config(tmp_path, agent=f'signatures = "{bad}"')
    run = sweep("--json", "--config", str(cfg))
    assert run.code == 2
    assert "hashes.txt:" in run.stderr


def test_hostile_processes_do_not_stop_the_sweep(tmp_path, helper_bins, spawn, fake_pool):
    """Non-UTF-8 command lines and processes exiting mid-sweep never stop it; the miner is still found."""
    odd = spawn(["/bin/sh", "-c", "sleep 300; :", os.fsdecode(b"\xff\xfe-not-utf8")])  # argv bytes ff fe
    miner = spawn([helper_bins.fakeminer, "-o", f"stratum+tcp://127.0.0.1:{fake_pool.port}", "-u", TEST_WALLET,
                   "-t", "0", "--seconds", "60"])
    wait_connected(miner.pid, fake_pool.port)
    stop = threading.Event()

    def churn() -> None:  # short-lived processes appear and vanish while the sweep runs
        while not stop.is_set():
            subprocess.run(["/bin/true"])

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        run = sweep("--json", "--min-severity", "low", "--config", str(write_config(tmp_path)))
    finally:
        stop.set()
        churner.join(5)
    assert run.code == 1, run.stderr
    assert run.for_pid(miner.pid) is not None
    assert odd.poll() is None


def test_unreadable_proc_entries_do_not_stop_the_sweep(tmp_path):
    """A proc root full of broken entries sweeps cleanly (exit 0) instead of crashing."""
    root = tmp_path / "proc"
    (root / "100").mkdir(parents=True)
    (root / "100" / "stat").write_text("garbage")
    (root / "101").mkdir()
    (root / "101" / "exe").symlink_to("/nonexistent/binary")
    (root / "102").mkdir()
    (root / "102" / "cmdline").write_bytes(b"\xff\xfe\x00--x\x00")
    (root / "102" / "stat").write_text("102 (a) b) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")
    (root / "self").symlink_to("100")
    cfg = write_config(tmp_path, agent=f'proc_root = "{root}"')
    run = sweep("--json", "--config", str(cfg))
    assert run.code == 0, run.stderr
