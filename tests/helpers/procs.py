"""Small /proc readers and a tracked process spawner for tests.

All functions take host PIDs and read /proc directly (``proc_root`` overrides /proc).
``tcp_connections(pid)`` reads ``/proc/PID/net/tcp{,6}``, i.e. the network namespace of
that process, so it sees connections inside a ``--network none`` container too.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Polls ``predicate`` until it returns a truthy value (returned). Exceptions inside
    the predicate count as falsy. Raises TimeoutError with ``message`` and the last error."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - any error means "not yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s: {message or predicate}{extra}")
        time.sleep(interval)


def cmdline(pid: int, proc_root: str = "/proc") -> list[str]:
    raw = Path(f"{proc_root}/{pid}/cmdline").read_bytes()
    return [p.decode("utf-8", "surrogateescape") for p in raw.split(b"\0") if p]


def comm(pid: int, proc_root: str = "/proc") -> str:
    return Path(f"{proc_root}/{pid}/comm").read_text().strip()


def cgroup(pid: int, proc_root: str = "/proc") -> str:
    return Path(f"{proc_root}/{pid}/cgroup").read_text()


def exe(pid: int, proc_root: str = "/proc") -> str:
    return os.readlink(f"{proc_root}/{pid}/exe")


def pids(proc_root: str = "/proc") -> list[int]:
    return [int(d) for d in os.listdir(proc_root) if d.isdigit()]


def pids_in_cgroup_of(container_id: str, proc_root: str = "/proc") -> list[int]:
    """Host PIDs whose /proc/PID/cgroup names the container id."""
    out = []
    for pid in pids(proc_root):
        try:
            if container_id in cgroup(pid, proc_root):
                out.append(pid)
        except OSError:
            continue
    return out


def cpu_seconds(pid: int, proc_root: str = "/proc") -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    stat = Path(f"{proc_root}/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_fraction(pid: int, interval: float = 1.0, proc_root: str = "/proc") -> float:
    """CPU used by the process over ``interval`` seconds, in cores (1.0 = one core)."""
    c0, t0 = cpu_seconds(pid, proc_root), time.monotonic()
    time.sleep(interval)
    c1, t1 = cpu_seconds(pid, proc_root), time.monotonic()
    return (c1 - c0) / (t1 - t0)


def threads(pid: int, proc_root: str = "/proc") -> list[int]:
    return sorted(int(t) for t in os.listdir(f"{proc_root}/{pid}/task"))


def socket_inodes(pid: int, proc_root: str = "/proc") -> set[int]:
    out = set()
    fd_dir = f"{proc_root}/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


@dataclass(frozen=True)
class TcpConn:
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: str
    inode: int


def _decode_addr(hexaddr: str) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0]))
    else:
        words = struct.unpack(">4I", raw)
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(struct.pack("<I", w) for w in words))
    return ip, int(port_hex, 16)


def tcp_connections(pid: int, own_only: bool = True, proc_root: str = "/proc") -> list[TcpConn]:
    """TCP sockets in the network namespace of ``pid``; with ``own_only`` only those whose
    socket inode is held open by ``pid``."""
    inodes = socket_inodes(pid, proc_root) if own_only else None
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"{proc_root}/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            inode = int(f[9])
            if inodes is not None and inode not in inodes:
                continue
            lip, lport = _decode_addr(f[1])
            rip, rport = _decode_addr(f[2])
            out.append(TcpConn(lip, lport, rip, rport, TCP_STATES.get(f[3], f[3]), inode))
    return out


def established_to(pid: int, port: int, proc_root: str = "/proc") -> list[TcpConn]:
    return [c for c in tcp_connections(pid, True, proc_root)
            if c.state == "ESTABLISHED" and c.remote_port == port]


def find_pids(match: Callable[[int], bool], candidates: Iterable[int] | None = None) -> list[int]:
    out = []
    for pid in candidates if candidates is not None else pids():
        try:
            if match(pid):
                out.append(pid)
        except OSError:
            continue
    return out


class Spawner:
    """Starts host processes and guarantees they are gone at cleanup():
    SIGTERM to the process group, wait, then SIGKILL. Each process runs in its own
    session (process group) unless start_new_session=False is passed, so children it
    forks are cleaned up too."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._own_group: dict[int, bool] = {}

    def __call__(self, args, **kw) -> subprocess.Popen:
        return self.spawn(args, **kw)

    def spawn(self, args, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        if not isinstance(args, (str, bytes)):
            args = [str(a) for a in args]
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        self._own_group[p.pid] = bool(kw["start_new_session"])
        return p

    def cleanup(self, grace: float = 3.0) -> None:
        for p in self.procs:
            self._signal(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            # SIGKILL whatever is left of the group (leader or stray children)
            self._signal(p, signal.SIGKILL)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream:
                    try:
                        stream.close()
                    except OSError:
                        pass
        self.procs.clear()
        self._own_group.clear()

    def _signal(self, p: subprocess.Popen, sig: int) -> None:
        try:
            if self._own_group.get(p.pid):
                # the group we created: pgid == pid; also reaches children it forked
                os.killpg(p.pid, sig)
            elif p.poll() is None:
                p.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass


def remove_cgroups(dirs, timeout: float = 20.0) -> None:
    """Kill every process in each cgroup directory (children before parents, as given) and remove it,
    retrying while the killed leave (EBUSY) for up to ``timeout`` seconds."""
    import contextlib
    import time

    deadline = time.monotonic() + timeout
    for d in dirs:
        while d.exists():
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                d.rmdir()
            except OSError:  # EBUSY while killed tasks leave
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
