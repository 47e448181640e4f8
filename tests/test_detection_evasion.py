"""Miners built to get past the agent (issue 13): configs where XMRig really looks, a miner run by the
dynamic loader from /usr/lib, and a binary padded past the hashing limit. Real processes, real containers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from agent.collectors.snapshots import SnapshotCollector
from agent.collectors.yarascan import YaraScanner
from agent.config import Config
from agent.judge import Judge
from agent.model import Severity
from agent.signatures import load_bundle
from tests.helpers import procs
from tests.helpers.build import build_dynamic
from tests.helpers.containers import TEST_WALLET, wait_for_process

LOADER = "/lib64/ld-linux-x86-64.so.2"


def _judged(pid: int):
    cfg, sigs = Config(), load_bundle()
    snap = SnapshotCollector(cfg, sigs).snapshot(pid)
    assert snap is not None, f"pid {pid} gone"
    return snap, Judge.from_config(cfg, sigs).process(snap, None, ())


# --------------------------------------------------------------------------- $HOME configs

@pytest.mark.parametrize("where", [".xmrig.json", ".config/xmrig.json"])
def test_config_only_in_home_inside_a_container_is_high_with_its_pool(where, docker_run, base_image):
    """fakeminer-plain (no miner strings in its file, no pool on its argv) in a container whose HOME holds its
    only config, connected to that pool: the config is found through the process's own HOME, beneath its own
    root, and the finding is high or above naming the pool."""
    config = json.dumps({"pools": [{"url": "127.0.0.1:3333", "user": TEST_WALLET, "pass": "x"}]})
    script = (f"mkdir -p /home/app/.config && printf '%s' '{config}' > /home/app/{where}; "
              "fakepool 3333 & sleep 0.3; cd /; exec fakeminer-plain -t 0 --seconds 60")
    c = docker_run(base_image, ["sh", "-c", script], name_prefix="mwtest-home-cfg", environment={"HOME": "/home/app"})
    pid = wait_for_process(c, "fakeminer-plain")
    procs.wait_until(lambda: procs.established_to(pid, 3333), 10, message="miner connected to its pool")
    assert "-o" not in procs.cmdline(pid) and "-c" not in procs.cmdline(pid)
    snap, found = _judged(pid)
    assert snap.miner_config is not None, snap
    assert snap.miner_config.path == f"/home/app/{where}" and snap.miner_config.origin == "home"
    assert not any(k == "HOME" for k, _ in snap.environ)  # HOME says where to look; it is not alert material
    assert found is not None and found.severity >= Severity.HIGH, found
    named = [e for e in found.evidence if e.signal == "config" and "127.0.0.1:3333" in e.detail]
    assert named and named[0].strong, found.evidence


def test_home_config_is_not_every_process_of_that_user(tmp_path, spawn):
    """A shell of a user whose HOME holds an XMRig config is not judged by it: the config is found, but it is
    not the shell's own (no miner facts, no connection to its pool), and the shell stays below medium."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".xmrig.json").write_text(json.dumps({"pools": [{"url": "127.0.0.1:3333", "user": TEST_WALLET}]}))
    p = spawn(["sh", "-c", "sleep 30; true"], cwd=tmp_path, env={"HOME": str(home), "PATH": os.environ["PATH"]})
    procs.wait_until(lambda: procs.cmdline(p.pid) == ["sh", "-c", "sleep 30; true"], 5, message="sh started")
    snap, found = _judged(p.pid)
    assert snap.miner_config is not None and snap.miner_config.origin == "home"
    assert found is None or found.severity < Severity.MEDIUM, found
    assert all(not e.strong for e in (found.evidence if found else ()))


def test_home_outside_the_root_is_never_followed(tmp_path, docker_run, base_image):
    """HOME pointing at a symlink out of the container's root: nothing on the host is read as its config."""
    host_home = tmp_path / "hosthome"
    host_home.mkdir()
    (host_home / ".xmrig.json").write_text(json.dumps({"pools": [{"url": "stratum+tcp://10.9.9.9:3333"}]}))
    os.chmod(tmp_path, 0o755)
    script = f"ln -s {host_home} /home/evil; exec sleep 60"
    c = docker_run(base_image, ["sh", "-c", script], name_prefix="mwtest-home-link", environment={"HOME": "/home/evil"})
    pid = wait_for_process(c, "sleep")
    snap, _ = _judged(pid)
    assert snap.miner_config is None, snap.miner_config


# --------------------------------------------------------------------------- ld.so PROGRAM

@pytest.fixture
def program_in_usr_lib():
    """The dynamically linked fake miner copied to a library-looking path under /usr/lib; removed afterwards."""
    libdir = "/usr/lib/x86_64-linux-gnu" if os.path.isdir("/usr/lib/x86_64-linux-gnu") else "/usr/lib"
    path = f"{libdir}/libmwtest-{uuid.uuid4().hex[:8]}.so"
    shutil.copy2(build_dynamic("fakeminer-dyn"), path)
    try:
        yield path
    finally:
        os.unlink(path)


def test_miner_run_by_the_loader_from_usr_lib_is_judged_by_its_program(program_in_usr_lib, spawn):
    """``ld.so /usr/lib/.../libmwtest.so``: /proc/PID/exe is the loader, yet the program is hashed and
    YARA-scanned, its memory is read (its own mappings under /usr/lib included) and it is critical."""
    if not os.path.exists(LOADER):
        pytest.skip(f"no {LOADER}")
    p = spawn([LOADER, program_in_usr_lib, "-o", "127.0.0.1:9", "-t", "0", "--seconds", "60"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.wait_until(lambda: program_in_usr_lib in open(f"/proc/{p.pid}/maps").read(), 10, message="program mapped")
    snap, found = _judged(p.pid)
    assert os.path.basename(snap.exe).startswith("ld-linux")
    assert snap.program == os.path.realpath(program_in_usr_lib) and snap.program_hashes is not None
    assert any(h.rule == "MW_XMRig_ELF" and h.source == "file" for h in snap.yara), snap.yara
    assert found is not None and found.severity >= Severity.HIGH, found
    memory = YaraScanner(load_bundle().yara).scan_memory(p.pid)
    assert any(h.region == "code" for h in memory), memory  # its .rodata under /usr/lib was read


# --------------------------------------------------------------------------- padded past max_file_mb

def test_binary_padded_past_the_hash_limit_still_gets_yara_marked_partial(tmp_path, spawn, helper_bins):
    """fakeminer padded (sparse) to 200 MiB, over max_file_mb (128): not hashed, but its first part is
    YARA-scanned, the snapshot says both were partial, and it is critical."""
    binary = tmp_path / "padded"
    shutil.copy2(helper_bins.fakeminer, binary)
    os.truncate(binary, 200 << 20)
    assert os.stat(binary).st_blocks * 512 < 50 << 20  # sparse: the padding costs no disk
    p = spawn([str(binary), "-t", "0", "--seconds", "60", "--url", "127.0.0.1:9"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.wait_until(lambda: procs.exe(p.pid) == str(binary), 5, message="padded miner running")
    snap, found = _judged(p.pid)
    assert snap.hashes is None and "hashes" in snap.partial and "yara" in snap.partial, snap.partial
    assert any(h.rule == "MW_XMRig_ELF" for h in snap.yara), snap.yara
    assert found is not None and found.severity == Severity.CRITICAL, found
