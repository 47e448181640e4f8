"""Process snapshots from procfs: real processes and sockets, plus fake /proc trees for edge cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent.collectors.cgroups import parse_cgroup
from agent.collectors.hashing import HashCache
from agent.collectors.minerconfig import find_miner_config
from agent.collectors.procfs import ProcfsCollector
from agent.collectors.procparse import REDACTED, cap_cmdline, filter_environ, split_cmdline, strip_deleted
from agent.collectors.procread import Stat, parse_stat
from agent.model import Hashes

SLEEPER = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"
NOBODY = 65534


def file_hashes(path) -> Hashes:
    data = Path(path).read_bytes()
    return Hashes(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest(),
                  len(data))


@pytest.fixture
def procs():
    """Start children that are killed and reaped however the test ends; ready=True waits for a 'ready' line."""
    started: list[subprocess.Popen] = []

    def start(args, ready: bool = False, **kw):
        if ready:
            kw.setdefault("stdout", subprocess.PIPE)
        p = subprocess.Popen(args, **kw)
        started.append(p)
        if ready:
            assert p.stdout.readline().strip() in ("ready", b"ready")
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture
def sleep_copy(tmp_path):
    """A private copy of /bin/sleep (so its exe path and hash are ours)."""
    exe = tmp_path / "sleeper"
    shutil.copy2(shutil.which("sleep"), exe)
    return exe


def wait_exec(pid: int, exe: Path) -> None:
    """Wait until pid has exec'd exe and its new argv is in place (set a moment after the exe link)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{pid}/exe") == str(exe) and Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{pid} did not exec {exe}")


# --------------------------------------------------------------------------- pure parsing


def test_parse_stat_comm_with_spaces_and_parens():
    """comm holding spaces and ')' is taken up to the last ')' and the fields after it are right."""
    rest = "S 42 7 7 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 5 0 123456 1000 10"
    st = parse_stat(f"4242 (evil) (x y) {rest}\n")
    assert st == Stat(comm="evil) (x y", state="S", ppid=42, flags=4194560, utime=3, stime=4, num_threads=5,
                      start_ticks=123456)
    assert parse_stat(f"4242 (evil) (x y) {rest}\n".encode()) == st  # bytes as read from /proc


def test_parse_stat_rejects_garbage():
    """Malformed stat text raises ValueError (the collector marks it partial)."""
    for text in ("", "12 noparen S 1", "12 (x) S 1 2"):
        with pytest.raises(ValueError):
            parse_stat(text)


def test_split_cmdline_forms():
    """NUL-separated, setproctitle-rewritten and non-UTF-8 command lines all split into text."""
    assert split_cmdline(b"xmrig\x00-o\x00pool:3333\x00") == ["xmrig", "-o", "pool:3333"]
    assert split_cmdline(b"nginx: worker process\x00\x00\x00") == ["nginx:", "worker", "process"]
    assert split_cmdline(b"nginx: master process") == ["nginx:", "master", "process"]
    assert split_cmdline(b"a\xff\x00") == ["a\\xff"]
    assert split_cmdline(b"") == []


def test_cap_cmdline_keeps_head_and_tail():
    """Padding arguments cannot push the interesting tail out of the kept command line."""
    args = ["xmrig"] + ["x" * 1000] * 500 + ["-o", "stratum+tcp://tail.example:3333"]
    kept, truncated = cap_cmdline(args, max_chars=10_000)
    assert truncated and kept[0] == "xmrig" and kept[-2:] == ["-o", "stratum+tcp://tail.example:3333"]
    assert sum(len(a) for a in kept) < 11_000
    assert cap_cmdline(["a", "b"]) == (["a", "b"], False)
    long_arg, truncated = cap_cmdline(["y" * 10_000, "-o", "p:1"], arg_max=100)
    assert truncated and long_arg[1:] == ["-o", "p:1"] and len(long_arg[0]) == 101


def test_filter_environ_keeps_only_miner_variables():
    """Only miner-relevant variables are kept, secrets are redacted, values are capped."""
    raw = b"\x00".join([
        b"PATH=/usr/bin", b"HOME=/root", b"AWS_SECRET_ACCESS_KEY=abc", b"POOL_URL=pool.example:3333",
        b"WALLET=44abc", b"XMRIG_ARGS=--donate-level 0", b"MY_STRATUM_HOST=x", b"WALLET_PRIVATE_KEY=s3cr3t",
        b"ARGS=-o stratum+tcp://hidden.example:443", b"MINING_OPTS=" + b"v" * 5000, b"CUSTOM=1", b"garbage",
        b"=novalue", b"POOL_\xff=bad\xfe",
    ]) + b"\x00"
    env = dict(filter_environ(raw, extra_names={"custom"}))
    assert set(env) == {"POOL_URL", "WALLET", "XMRIG_ARGS", "MY_STRATUM_HOST", "WALLET_PRIVATE_KEY", "ARGS",
                        "MINING_OPTS", "CUSTOM", "POOL_\\xff"}
    assert env["WALLET_PRIVATE_KEY"] == REDACTED
    assert len(env["MINING_OPTS"]) == 1024
    assert env["POOL_\\xff"] == "bad\\xfe"


def test_strip_deleted():
    """A ' (deleted)' suffix is stripped and reported."""
    assert strip_deleted("/tmp/x (deleted)") == ("/tmp/x", True)
    assert strip_deleted("/usr/bin/x") == ("/usr/bin/x", False)


# --------------------------------------------------------------------------- real processes


def test_real_child_snapshot(sleep_copy, procs):
    """A real child's snapshot has its argv, exe, hashes, ppid, user, cgroup and namespace."""
    marker = f"{1000 + os.getpid() % 1000}.{time.monotonic_ns() % 100000}"
    p = procs([str(sleep_copy), marker])
    wait_exec(p.pid, sleep_copy)
    snap = ProcfsCollector().snapshot(p.pid)
    assert snap is not None
    assert snap.cmdline == (str(sleep_copy), marker)
    assert snap.exe == str(sleep_copy) and not snap.exe_deleted
    assert snap.name == "sleeper"
    assert snap.hashes == file_hashes(sleep_copy)
    assert snap.ppid == os.getpid()
    assert (snap.uid, snap.user) == (os.getuid(), "root" if os.getuid() == 0 else snap.user)
    assert snap.cwd == os.getcwd()
    assert snap.start_ticks > 0 and snap.num_threads == 1 and not snap.is_kernel_thread
    with open("/proc/self/cgroup") as f:
        assert (snap.container_id, snap.container_runtime, snap.cgroup_path) == parse_cgroup(f.read())
    assert snap.net_ns == int(os.readlink("/proc/self/ns/net")[5:-1])
    assert snap.partial == ()
    assert snap.miner_config is None


def test_child_connection_seen(procs):
    """A child connected to a TCP server on 127.0.0.1 shows that ESTABLISHED connection with the server port."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = ("import socket, sys, time\n"
            f"s = socket.create_connection(('127.0.0.1', {port}))\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    try:
        p = procs([sys.executable, "-c", code], ready=True, text=True)
        peer, _ = server.accept()
        snap = ProcfsCollector().snapshot(p.pid)
        assert snap is not None
        remote = [c for c in snap.connections if c.remote_port == port]
        assert len(remote) == 1
        assert remote[0].remote_ip == "127.0.0.1" and remote[0].state == "ESTABLISHED"
        # the server side belongs to this process, not to the child
        assert all(c.local_port != port for c in snap.connections)
        peer.close()
    finally:
        server.close()


def test_deleted_executable(sleep_copy, procs):
    """A process whose binary was deleted after start keeps its exe path, exe_deleted and the right hashes."""
    expected = file_hashes(sleep_copy)
    p = procs([str(sleep_copy), "60"])
    wait_exec(p.pid, sleep_copy)
    sleep_copy.unlink()
    snap = ProcfsCollector().snapshot(p.pid)
    assert snap is not None
    assert snap.exe == str(sleep_copy) and snap.exe_deleted
    assert snap.hashes == expected


def test_non_utf8_argv_and_cwd(tmp_path, procs):
    """Non-UTF-8 bytes in argv and cwd are snapshotted as valid UTF-8 text that JSON-serializes."""
    weird = tmp_path / os.fsdecode(b"dir\xff")
    weird.mkdir()
    p = procs([sys.executable.encode(), b"-c", SLEEPER.encode(), b"arg\xfe\xffend"], ready=True, cwd=weird)
    snap = ProcfsCollector().snapshot(p.pid)
    assert snap is not None
    assert snap.cmdline[-1] == "arg\\xfe\\xffend"
    assert snap.cwd.endswith("dir\\xff")
    text = json.dumps({"cmdline": snap.cmdline, "cwd": snap.cwd, "exe": snap.exe}, ensure_ascii=False)
    text.encode("utf-8")  # no surrogates


def test_non_utf8_exe_reads_the_same_for_the_response(tmp_path, procs):
    """An executable named with non-UTF-8 bytes: the identity guard reads the exe link as the snapshot
    did (else the guard refused every response to it), and the quarantine's process tree writes as UTF-8."""
    from agent.response import identity
    from agent.response.quarantine import process_tree

    exe = os.path.join(os.fsencode(tmp_path), b"mine\xff")
    shutil.copy2(shutil.which("sleep"), exe)
    p = procs([exe, "60"])
    wait_exec(p.pid, Path(os.fsdecode(exe)))
    snap = ProcfsCollector(hash_exe=False, find_config=False).snapshot(p.pid)
    assert snap is not None and snap.exe.endswith("mine\\xff")
    now, reason = identity.verify("/proc", snap)
    assert reason == "" and now is not None and now.exe == snap.exe
    tree = process_tree("/proc", p.pid)
    assert tree["process"]["exe"] == snap.exe
    json.dumps(tree, ensure_ascii=False).encode("utf-8")  # no surrogates


def test_huge_command_line(procs):
    """A ~1 MiB command line is read without error; it is capped, marked partial, and keeps its tail."""
    pad = ["p" * 120_000] * 9
    p = procs([sys.executable, "-c", SLEEPER, *pad, "-o", "stratum+tcp://tail.example:3333"], ready=True, text=True)
    snap = ProcfsCollector().snapshot(p.pid)
    assert snap is not None
    assert snap.cmdline[-2:] == ("-o", "stratum+tcp://tail.example:3333")
    assert "cmdline" in snap.partial
    assert sum(len(a) for a in snap.cmdline) <= 70_000


def test_environment_filtered(procs):
    """Only miner-relevant environment variables are kept from a real process."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "POOL_URL": "stratum+tcp://p.example:3333",
           "WALLET_ADDRESS": "44abc", "AWS_SECRET_ACCESS_KEY": "nope", "DB_URL": "postgres://x"}
    p = procs([sys.executable, "-c", SLEEPER], ready=True, text=True, env=env)
    snap = ProcfsCollector(env_names={"DB_URL"}).snapshot(p.pid)
    assert snap is not None
    assert dict(snap.environ) == {"POOL_URL": "stratum+tcp://p.example:3333", "WALLET_ADDRESS": "44abc",
                                  "DB_URL": "postgres://x"}


def test_miner_config_found_in_snapshot(tmp_path, procs):
    """A process started next to a miner config.json carries it in its snapshot."""
    (tmp_path / "config.json").write_text(json.dumps({"pools": [{"url": "stratum+tcp://x.example:3333",
                                                                   "user": "wallet9"}]}))
    p = procs([sys.executable, "-c", SLEEPER], ready=True, text=True, cwd=tmp_path)
    snap = ProcfsCollector().snapshot(p.pid)
    assert snap is not None and snap.miner_config is not None
    assert snap.miner_config.users == ("wallet9",) and snap.miner_config.path == f"{tmp_path}/config.json"


def test_reaped_process_gives_none(procs):
    """A PID whose process has exited and been reaped yields None and is counted."""
    p = procs(["true"])
    p.wait()
    c = ProcfsCollector()
    assert c.snapshot(p.pid) is None
    assert c.vanished == 1


def test_zombie_is_snapshotted(procs):
    """An exited but unreaped child (zombie) gives a small snapshot, not an exception."""
    p = procs(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{p.pid}/stat") as f:
            if parse_stat(f.read()).state == "Z":
                break
        time.sleep(0.01)
    snap = ProcfsCollector().snapshot(p.pid)
    assert snap is not None and snap.pid == p.pid and snap.exe == "" and snap.partial == ()


class _KillingCache(HashCache):
    """A hash cache that kills and reaps the process the first time it is consulted (mid-snapshot)."""

    def __init__(self, victim: subprocess.Popen) -> None:
        super().__init__()
        self.victim = victim

    def get(self, key, **kw):
        if self.victim.poll() is None:
            self.victim.kill()
            self.victim.wait()
        return super().get(key, **kw)


def test_process_exits_mid_snapshot(sleep_copy, procs):
    """A process that dies half-way through its snapshot yields None, not an exception or a mixed snapshot."""
    p = procs([str(sleep_copy), "60"])
    wait_exec(p.pid, sleep_copy)
    c = ProcfsCollector(hash_cache=_KillingCache(p))
    assert c.snapshot(p.pid) is None
    assert p.returncode is not None and c.vanished == 1


def test_processes_exit_mid_sweep(sleep_copy, procs):
    """Processes killed while a sweep runs are counted as vanished; the sweep completes."""
    victims = [procs([str(sleep_copy), "60"]) for _ in range(5)]
    for v in victims:
        wait_exec(v.pid, sleep_copy)
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if done == 1:
            for v in victims:
                v.kill()
                v.wait()

    snaps, stats = ProcfsCollector().snapshot_all(progress=progress)
    pids = {s.pid for s in snaps}
    assert not pids & {v.pid for v in victims}
    assert stats.vanished >= len(victims)
    assert stats.errors == 0
    assert calls[-1] == (stats.pids, stats.pids) and len(calls) == stats.pids
    assert os.getpid() in pids


def test_sweep_under_churn(procs):
    """Sweeps while short-lived processes come and go never raise."""
    churn = procs(["sh", "-c", "for i in $(seq 300); do /bin/true; done"])
    c = ProcfsCollector()
    while churn.poll() is None:
        snaps, stats = c.snapshot_all()
        assert stats.errors == 0 and snaps
    churn.wait()


def test_warm_sweep_is_fast(sleep_copy, procs):
    """With warm caches a sweep costs well under 1 ms per process (1,000 processes in under 1 s)."""
    for _ in range(100):
        procs([str(sleep_copy), "60"])
    c = ProcfsCollector(hash_cache=HashCache(wall_ns=lambda: time.time_ns() + 10_000_000_000))
    c.snapshot_all()
    _, stats = c.snapshot_all()
    assert stats.hash_misses < 5  # a process may have started in between
    assert stats.elapsed / max(1, stats.pids) < 1e-3, stats


def test_real_partial_when_access_denied(sleep_copy, procs):
    """Read as an unprivileged user, a root process's private fields are empty and named in partial."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch euid")
    p = procs([str(sleep_copy), "60"])
    wait_exec(p.pid, sleep_copy)
    c = ProcfsCollector()
    os.seteuid(NOBODY)
    try:
        snap = c.snapshot(p.pid)
    finally:
        os.seteuid(0)
    assert snap is not None
    assert snap.name == "sleeper" and snap.ppid == os.getpid() and snap.uid == 0
    assert snap.exe == "" and snap.hashes is None and snap.environ == ()
    assert {"exe", "cwd", "environ", "hashes"} <= set(snap.partial)


# --------------------------------------------------------------------------- fake /proc trees

STAT_REST = "S {ppid} 1 1 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 {threads} 0 {start} 0 0"


def make_proc(root: Path, pid: int, comm: str, *, ppid: int = 1, flags: int = 0x400100, threads: int = 1,
              start: int = 1000, uid: int = 0, cmdline: bytes = b"", cgroup: str = "0::/\n", **extra) -> Path:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) " + STAT_REST.format(ppid=ppid, flags=flags, threads=threads,
                                                                   start=start) + "\n")
    (d / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "cmdline").write_bytes(cmdline)
    (d / "cgroup").write_text(cgroup)
    for name, content in extra.items():
        (d / name).write_bytes(content)
    return d


def test_fake_kernel_thread(tmp_path):
    """A PF_KTHREAD process is a kernel thread: no exe, no hashes, nothing partial."""
    make_proc(tmp_path, 2, "kworker/0:1-events", ppid=0, flags=0x208040)
    snaps, stats = ProcfsCollector(proc_root=tmp_path).snapshot_all()
    assert stats.pids == 1 and stats.errors == 0
    (snap,) = snaps
    assert snap.is_kernel_thread and snap.name == "kworker/0:1-events" and snap.ppid == 0
    assert snap.exe == "" and snap.hashes is None and snap.cmdline == () and snap.partial == ()


def test_fake_masquerading_process(tmp_path):
    """A fake process with an odd comm, a deleted exe, a container cgroup and a pool socket is read fully."""
    cid = "c" * 64
    d = make_proc(tmp_path, 4242, "kworker) (x", cmdline=b"/tmp/.x/kworker\x00-o\x00pool:443\x00",
                  cgroup=f"0::/system.slice/docker-{cid}.scope\n", environ=b"POOL=pool:443\x00HOME=/\x00")
    (d / "exe").symlink_to("/nonexistent/kworker (deleted)")
    (d / "cwd").symlink_to("/nonexistent-cwd")
    (d / "ns").mkdir()
    (d / "ns" / "net").symlink_to("net:[4026532999]")
    (d / "fd").mkdir()
    (d / "fd" / "0").symlink_to("/dev/null")
    (d / "fd" / "3").symlink_to("socket:[777]")
    (d / "net").mkdir()
    (d / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0F02000A:D6D8 5DB8D822:01BB 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0\n"
        "   1: 0F02000A:D6D9 5DB8D822:01BB 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0\n")
    snap = ProcfsCollector(proc_root=tmp_path).snapshot(4242)
    assert snap is not None
    assert snap.name == "kworker) (x" and snap.exe == "/nonexistent/kworker" and snap.exe_deleted
    assert snap.cmdline == ("/tmp/.x/kworker", "-o", "pool:443")
    assert (snap.container_id, snap.container_runtime) == (cid, "docker")
    assert snap.environ == (("POOL", "pool:443"),)
    assert snap.net_ns == 4026532999
    assert [(c.remote_ip, c.remote_port, c.inode) for c in snap.connections] == [("34.216.184.93", 443, 777)]
    assert snap.hashes is None and "hashes" in snap.partial  # exe target missing: unknown, not clean


def test_fake_malformed_stat(tmp_path):
    """Garbage in stat marks it partial; the rest of the snapshot is still produced."""
    d = make_proc(tmp_path, 77, "x", cmdline=b"x\x00")
    (d / "stat").write_text("garbage")
    snap = ProcfsCollector(proc_root=tmp_path).snapshot(77)
    assert snap is not None and "stat" in snap.partial and snap.cmdline == ("x",)


@pytest.fixture
def world_traversable_tmp():
    """A temp dir an unprivileged euid can traverse (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(prefix="mw-fakeproc-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d)


def test_fake_unreadable_fields(world_traversable_tmp):
    """Fields that cannot be read (permission denied) stay empty and are listed in partial; no exception."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch euid")
    root = world_traversable_tmp
    d = make_proc(root, 555, "secretive", cmdline=b"a\x00b\x00", environ=b"POOL=x\x00")
    (d / "fd").mkdir()
    (d / "exe").symlink_to("/usr/bin/true")
    for name in ("status", "cmdline", "environ", "fd", "cgroup"):
        os.chmod(d / name, 0)
    c = ProcfsCollector(proc_root=root)
    os.seteuid(NOBODY)
    try:
        snaps, stats = c.snapshot_all()
    finally:
        os.seteuid(0)
    assert stats.errors == 0 and stats.partial == 1
    (snap,) = snaps
    assert snap.name == "secretive" and snap.uid is None and snap.cmdline == () and snap.environ == ()
    assert {"status", "cmdline", "environ", "connections", "cgroup"} <= set(snap.partial)


# --------------------------------------------------------------------------- real containers (Docker)


def _own_net_ns() -> int:
    return int(os.readlink("/proc/self/ns/net")[5:-1])


@pytest.mark.docker
def test_container_miner_snapshot(miner_in_container, helper_bins):
    """A miner in a --network none container: its id, container-view exe, hashes and its pool connection
    inside the container's own network namespace."""
    m = miner_in_container
    snap = ProcfsCollector().snapshot(m.pid)
    assert snap is not None
    assert (snap.container_id, snap.container_runtime) == (m.id, "docker")
    assert snap.exe == "/usr/local/bin/fakeminer"
    assert snap.hashes == file_hashes(helper_bins.fakeminer)
    assert f"stratum+tcp://127.0.0.1:{m.pool_port}" in snap.cmdline
    assert snap.net_ns and snap.net_ns != _own_net_ns()
    assert any(c.remote_ip == "127.0.0.1" and c.remote_port == m.pool_port and c.state == "ESTABLISHED"
               for c in snap.connections)


@pytest.mark.docker
def test_container_config_read_in_container_view(docker_run, base_image, tmp_path):
    """A container's config is read in its own file system; a config.json symlinked to a host path is refused."""
    host_cfg = tmp_path / "evil.json"  # exists on the host only
    host_cfg.write_text(json.dumps({"pools": [{"url": "stratum+tcp://host.example:1", "user": "host"}]}))
    good = json.dumps({"pools": [{"url": "stratum+tcp://in.container:3333", "user": "ctr"}]})
    script = (f"mkdir -p /app /trap && echo '{good}' > /app/pool.json && "
              f"ln -s {host_cfg} /trap/config.json && cd /trap && exec sleep 60")
    c = docker_run(base_image, ["sh", "-c", script])
    pid = c.attrs["State"]["Pid"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        time.sleep(0.05)
    snap = ProcfsCollector().snapshot(pid)
    assert snap is not None and snap.cwd == "/trap" and snap.container_id == c.id
    assert snap.miner_config is None  # /trap/config.json -> host path: refused, never read
    assert not os.path.exists("/app/pool.json")
    cfg = find_miner_config("/proc", pid, ["xmrig", "-c", "/app/pool.json"], snap.cwd, snap.exe)
    assert cfg is not None and cfg.path == "/app/pool.json" and cfg.users == ("ctr",)
