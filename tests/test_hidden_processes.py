"""Hidden processes (issue 13, acceptance 5): a miner hidden by an ld.so.preload library is found, judged
and the preload reported; the raw getdents64 listing, the probe's bounded slices, mounts on /proc/PID."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.collectors import proclist
from agent.collectors.crossview import CrossView
from agent.detectors import hiding
from agent.detectors.base import Context
from agent.engine import severity_of
from agent.model import FileSnapshot, ProcessSnapshot, Severity
from tests.agentproc import AgentProcess
from tests.helpers.containers import TEST_WALLET
from tests.helpers.pool import FakePool
from tests.sweeping import REPO

HERE = Path(__file__).resolve().parent
PRELOAD = Path("/etc/ld.so.preload")


def build_hider(name: str) -> Path:
    """The libprocesshider-like library (tests/helpers/processhider.c) hiding processes whose comm is ``name``,
    in a fresh /tmp directory every user can read (every dynamic program on the host loads it from there)."""
    d = Path(tempfile.mkdtemp(prefix="minerwatch-hider-", dir="/tmp"))
    d.chmod(0o755)
    lib = d / "libhider.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", f'-DHIDE_NAME="{name}"', "-o", str(lib),
                    str(HERE / "helpers" / "processhider.c"), "-ldl"], check=True, capture_output=True, timeout=120)
    lib.chmod(0o644)
    return lib


@pytest.fixture
def hider(helper_bins):
    """(library, miner executable named as the library hides): both in one /tmp directory, removed after."""
    name = f"mwhid{os.getpid() % 100000}"
    lib = build_hider(name)
    miner = lib.parent / name
    shutil.copy2(helper_bins.fakeminer, miner)
    try:
        yield lib, miner
    finally:
        shutil.rmtree(lib.parent, ignore_errors=True)


def listed_by_libc(pid: int, env: dict | None = None) -> bool:
    """Does a fresh dynamically linked program (python: os.listdir, libc's readdir) list ``pid`` in /proc?"""
    out = subprocess.run([sys.executable, "-c", "import os; print(' '.join(os.listdir('/proc')))"],
                         capture_output=True, text=True, timeout=30, env=env, check=True).stdout
    return str(pid) in out.split()


# --------------------------------------------------------------------------- /etc/ld.so.preload, kept exact


def save_preload() -> tuple[bytes, int, int, int] | None:
    try:
        st = PRELOAD.lstat()
    except FileNotFoundError:
        return None
    return PRELOAD.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _replace_preload(data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    tmp = PRELOAD.with_name(f".ld.so.preload.minerwatch-test-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    os.replace(tmp, PRELOAD)  # atomic: no program on the host ever reads half a preload list


def install_preload(saved, lib: Path) -> None:
    before = saved[0] if saved else b""
    sep = b"" if not before or before.endswith(b"\n") else b"\n"
    _replace_preload(before + sep + f"{lib}\n".encode(), *(saved[1:] if saved else ()))


def restore_preload(saved) -> None:
    """Exactly what was there: the same bytes, mode and owner; no file when there was none."""
    if saved is None:
        PRELOAD.unlink(missing_ok=True)
    elif save_preload() != saved:
        _replace_preload(*saved)


# --------------------------------------------------------------------------- acceptance 5


def test_a_miner_hidden_by_an_ld_so_preload_library_before_the_agent_starts_is_found_judged_and_reported(
        tmp_path, hider, spawn):
    """The miner runs first; then /etc/ld.so.preload hides it from every new dynamic program (the agent's python
    too: its listdir of /proc lacks it, and no exec event comes). The agent still finds it (raw getdents, the
    cross-view), judges it high or above with the hiding named, and reports the preload file."""
    lib, miner_path = hider
    saved = save_preload()
    agent = None
    with FakePool() as pool:
        miner = spawn([miner_path, "-o", pool.url, "-u", TEST_WALLET, "-t", "0", "--seconds", "120"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pool.wait_for_login(timeout=15)
        try:
            install_preload(saved, lib)
            assert not listed_by_libc(miner.pid), "the library hides the miner from readdir"
            agent = AgentProcess(tmp_path / "agent", interval=1.0).start()  # READY: its first cross-view is done
            maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
            restore_preload(saved)  # the window ends: the agent has loaded it and looked
            assert str(lib) in maps, "the agent itself runs with the hiding library loaded"
            found = agent.wait_alert(
                lambda a: a.get("process", {}).get("pid") == miner.pid
                and any(e["signal"] == "hiding" for e in a["minerwatch"]["evidence"]), 30, "the hidden miner")
            assert found["event"]["severity"] >= int(Severity.HIGH), found["minerwatch"]
            assert any("readdir" in e["detail"] for e in found["minerwatch"]["evidence"] if e["signal"] == "hiding")
            reported = agent.wait_alert(lambda a: a.get("file", {}).get("path") == str(PRELOAD), 30, "the preload file")
            assert any(str(lib) in e["detail"] for e in reported["minerwatch"]["evidence"]), reported["minerwatch"]
            assert reported["event"]["severity"] >= int(Severity.MEDIUM)
        finally:
            restore_preload(saved)  # first of all, whatever failed
            if agent is not None:
                agent.stop()
    assert save_preload() == saved


# --------------------------------------------------------------------------- the views, real


def test_the_cross_view_in_a_process_with_the_library_preloaded_names_the_hidden_miner(hider, spawn, fake_pool):
    """LD_PRELOAD (this process tree only, no system file): libc's listing lacks the miner, the raw one and
    cgroup.procs have it, so it is hidden from readdir; the libc view itself is what the library left."""
    lib, miner_path = hider
    miner = spawn([miner_path, "-o", fake_pool.url, "--seconds", "60", "-t", "0"], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    fake_pool.wait_for_login(timeout=15)
    code = ("import json; from agent.collectors.crossview import CrossView; r = CrossView().run(); "
            "print(json.dumps({str(k): v for k, v in r.hidden.items()}))")
    env = {**os.environ, "LD_PRELOAD": str(lib), "PYTHONPATH": str(REPO)}
    assert not listed_by_libc(miner.pid, env)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    hidden = json.loads(out.stdout.splitlines()[-1])
    assert hidden.get(str(miner.pid)) == ["readdir"], hidden
    assert miner.poll() is None, "a live process, not a zombie"
    assert str(os.getpid()) not in hidden


def test_ld_preload_outside_the_system_library_dirs_is_read_apart_and_weak(hider, spawn, fake_pool):
    from agent.collectors.procfs import ProcfsCollector

    lib, miner_path = hider
    proc = spawn([miner_path, "-o", fake_pool.url, "--seconds", "60", "-t", "0"],
                 env={"LD_PRELOAD": str(lib), "PATH": "/usr/bin"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fake_pool.wait_for_login(timeout=15)
    snap = ProcfsCollector(hash_exe=False, find_config=False).snapshot(proc.pid)
    assert snap.ld_preload == str(lib)
    assert all(name != "LD_PRELOAD" for name, _ in snap.environ)
    evidence = hiding.detect(snap, Context(signatures=None))
    assert [e.strong for e in evidence] == [False] and str(lib) in evidence[0].detail


def test_a_mount_over_proc_pid_is_seen(tmp_path, spawn):
    """In a private mount namespace (the host's mounts untouched): an empty directory bind-mounted over
    /proc/PID hides that process's files; the cross-view names the PID."""
    sleeper = spawn(["sleep", "60"])
    empty = tmp_path / "empty"
    empty.mkdir()
    code = ("import subprocess, sys; from agent.collectors.crossview import CrossView; "
            f"subprocess.run(['mount', '--bind', '{empty}', '/proc/{sleeper.pid}'], check=True); "
            "print(sorted(CrossView().mounted()))")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
                         check=False, capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert sleeper.pid in json.loads(out.stdout.splitlines()[-1])
    assert sleeper.pid not in CrossView().mounted(), "our own mount namespace was never touched"


# --------------------------------------------------------------------------- the parser and the probe


def test_getdents_lists_a_real_directory_as_scandir_does(tmp_path):
    names = ["a", "b" * 255, "caf\u00e9", "sp ace", ".hidden"]
    for n in names:
        (tmp_path / n).write_text("x")
    raw_name = b"\xff\xfe-not-utf8"
    open(os.path.join(os.fsencode(tmp_path), raw_name), "w").close()
    (tmp_path / "sub").mkdir()
    for i in range(300):  # more than one small buffer's worth
        (tmp_path / "sub" / f"f{i:04d}").touch()
    expected = {os.fsencode(e.name): (e.inode(), e.is_dir(follow_symlinks=False)) for e in os.scandir(tmp_path)}
    got = {name: (ino, t == proclist.DT_DIR) for ino, t, name in proclist.entries(tmp_path)}
    assert got == expected and raw_name in got
    fd = os.open(tmp_path / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        small = sorted(name for _i, _t, name in proclist.getdents(fd, buf_size=512))
    finally:
        os.close(fd)
    assert small == sorted(os.fsencode(n) for n in os.listdir(tmp_path / "sub"))
    assert os.getpid() in proclist.pids()


def test_parse_dirents_never_reads_past_what_the_kernel_gave(tmp_path):
    (tmp_path / "one").touch()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        import ctypes
        buf = ctypes.create_string_buffer(4096)
        n = proclist._syscall(proclist.SYS_GETDENTS64, ctypes.c_int(fd), buf, ctypes.c_uint(4096))
    finally:
        os.close(fd)
    full = [name for _i, _t, name in proclist.parse_dirents(buf.raw, n)]
    assert sorted(full) == [b".", b"..", b"one"]
    assert len(list(proclist.parse_dirents(buf.raw, n - 1))) == 2  # the cut record is left out
    bogus = bytearray(buf.raw[:n])
    bogus[16:18] = (3).to_bytes(2, "little")  # an impossible d_reclen: parsing stops, nothing is invented
    assert list(proclist.parse_dirents(bytes(bogus), n)) == []


def fake_proc(root: Path, pid_max: int, procs: dict[int, int]) -> None:
    """A /proc stand-in: ``procs`` maps N to its Tgid (N itself: a process; another: a thread)."""
    (root / "sys" / "kernel").mkdir(parents=True)
    (root / "sys" / "kernel" / "pid_max").write_text(f"{pid_max}\n")
    for n, tgid in procs.items():
        (root / str(n)).mkdir()
        (root / str(n) / "status").write_text(f"Name:\tx\nTgid:\t{tgid}\nPid:\t{n}\n")


def test_the_probe_stats_one_bounded_slice_per_run_and_goes_on_where_it_stopped(tmp_path):
    fake_proc(tmp_path, 10_000, {3: 3, 4100: 4100, 4101: 4100, 9999: 9999, 5000: 5000})
    view = CrossView(proc_root=str(tmp_path), probe_slice=4096)
    runs = [view.probe(known={5000}) for _ in range(4)]
    assert [span for _found, span in runs] == [(1, 4097), (4097, 8193), (8193, 10_000), (1, 4097)]
    assert [found for found, _span in runs] == [{3}, {4100}, {9999}, {3}], "threads (4101) and known PIDs skipped"
    assert sum(hi - lo for _f, (lo, hi) in runs[:3]) == 10_000 - 1, "one full round covers every N once"


def test_the_probe_finds_a_process_no_listing_shows(tmp_path):
    """A PID that stat answers and both listings lack (hidden from getdents too, as a kernel rootkit would):
    hidden from both, once the probe's slice reaches it."""
    fake_proc(tmp_path, 100, {7: 7, 42: 42})
    view = CrossView(proc_root=str(tmp_path), cgroup_root=str(tmp_path / "no-cgroups"), probe_slice=100)
    view.getdents_view = view.readdir_view = lambda: {7}  # what the listings show; the tree itself has 42 too
    result = view.run()
    assert result.hidden == {42: ("readdir", "getdents")} and result.probed == (1, 100)


def test_the_census_counts_every_task_of_the_real_host_and_misses_one_process_left_out(spawn):
    """On the real /proc: the threads of every listed process are the kernel's nr_threads (retried: the host
    may fork meanwhile, which the census must see as a disagreement); leaving one live process out of the
    listing, as a hiding listing would, never agrees."""
    child = spawn([sys.executable, "-c", "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"])
    view = CrossView(census=True)
    for _ in range(50):
        if view.census_agrees(view.getdents_view()):
            break
    else:
        pytest.fail("the census never agreed with the full listing in 50 tries")
    assert not any(view.census_agrees(view.getdents_view() - {child.pid}) for _ in range(20))


def fake_census(root: Path, listed: dict[int, int], nr_threads: int) -> None:
    """stat files (``listed``: PID -> its threads), /proc/stat's fork counter and /proc/loadavg's nr_threads."""
    for pid, threads in listed.items():
        (root / str(pid) / "stat").write_text(f"{pid} (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 {threads} 0 100 0 0\n")
    (root / "stat").write_text("cpu  1 2 3 4\nprocesses 12345\nprocs_running 1\n")
    (root / "loadavg").write_text(f"0.00 0.01 0.05 1/{nr_threads} 999\n")


def test_a_census_that_disagrees_runs_the_probe_and_one_that_agrees_skips_it(tmp_path):
    """A PID hidden from both listings (a getdents hook) leaves the kernel's count above the listed threads:
    the probe runs and finds it. With nothing hidden the counts agree and the probe is skipped."""
    fake_proc(tmp_path, 100, {7: 7, 42: 42})
    fake_census(tmp_path, {7: 2, 42: 1}, nr_threads=3)
    view = CrossView(proc_root=str(tmp_path), cgroup_root=str(tmp_path / "no-cgroups"), probe_slice=100, census=True)
    view.getdents_view = view.readdir_view = lambda: {7}
    result = view.run()
    assert result.hidden == {42: ("readdir", "getdents")} and result.probed == (1, 100)
    view.getdents_view = view.readdir_view = lambda: {7, 42}
    result = view.run()
    assert result.hidden == {} and result.probed == (0, 0), "the census agreed: no probe"


def test_the_daemons_own_census_spares_the_cgroup_walk_and_the_probe_only_when_it_matches(tmp_path):
    """run(census=N): N threads counted by the caller. Equal to nr_threads: no cgroup walk, no probe; one
    short (a task hidden from the caller's listing): both run, and the hidden PID is found."""
    fake_proc(tmp_path, 100, {7: 7, 42: 42})
    fake_census(tmp_path, {7: 2, 42: 1}, nr_threads=3)
    view = CrossView(proc_root=str(tmp_path), cgroup_root=str(tmp_path / "no-cgroups"), probe_slice=100)
    view.getdents_view = view.readdir_view = lambda: {7}
    walks = []
    view.cgroup_view = lambda: walks.append(1)
    counters = view.task_counters()
    result = view.run(census=(2, counters))
    assert result.hidden == {42: ("readdir", "getdents")} and result.probed == (1, 100) and walks == [1]
    view.getdents_view = view.readdir_view = lambda: {7, 42}
    result = view.run(census=(3, counters))
    assert result.hidden == {} and result.probed == (0, 0) and walks == [1], "agreed: neither walk nor probe"
    (tmp_path / "stat").write_text("cpu  1 2 3 4\nprocesses 12346\nprocs_running 1\n")  # a fork since the count
    result = view.run(census=(3, counters))
    assert result.probed == (1, 100) and walks == [1, 1], "counters moved since the caller's count: no agreement"


# --------------------------------------------------------------------------- the detector


def test_hiding_evidence_weighs_as_the_issue_says():
    ctx = Context(signatures=None)
    hidden = hiding.detect(ProcessSnapshot(pid=9, name="x", hidden_from=("readdir",)), ctx)
    assert severity_of(hidden)[0] == Severity.MEDIUM
    mounted = hiding.detect(ProcessSnapshot(pid=9, proc_mounted=True, partial=("stat",)), ctx)
    assert severity_of(mounted)[0] == Severity.MEDIUM
    preload = hiding.detect(FileSnapshot(path="/etc/ld.so.preload", size=20, mode=0o100644,
                                         text="# comment\n/usr/local/lib/libprocesshider.so\n"), ctx)
    assert severity_of(preload)[0] == Severity.MEDIUM and "libprocesshider" in preload[0].detail
    assert hiding.detect(FileSnapshot(path="/etc/ld.so.preload", size=9, mode=0o100644, text="# nothing\n"), ctx) == []
    system = ProcessSnapshot(pid=9, ld_preload="libjemalloc.so.2 /usr/lib/x86_64-linux-gnu/libfoo.so")
    assert hiding.detect(system, ctx) == []
    assert hiding.detect(ProcessSnapshot(pid=9, ld_preload="/usr/lib/../../tmp/x.so"), ctx)[0].strong is False
