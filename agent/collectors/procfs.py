"""Process snapshots from procfs: one ``ProcessSnapshot`` per process, host and containers alike.

Every process is read through one open ``/proc/PID`` directory descriptor: if the process
exits mid-read, everything after fails with ``ESRCH`` instead of silently describing a new
process that reused the PID. Errors are translated here, at the edge (psutil's
``wrap_exceptions`` idea):

* the process vanished (``ENOENT``/``ESRCH`` and ``/proc/PID/stat`` is gone): ``snapshot``
  returns None and the collector counts it;
* access denied or any other ``OSError`` on one field: that field stays empty and its name
  goes to ``partial``; the rest of the snapshot is still produced.

``proc_root`` is a constructor parameter (``/host/proc`` when the agent runs in a
container; a fake tree in tests).
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.collectors import cgroups, minerconfig, netns
from agent.collectors.hashing import SETTLE_NS, HashCache, hash_process_exe
from agent.model import ProcessSnapshot

log = structlog.get_logger("minerwatch.procfs")

PF_KTHREAD = 0x00200000
DEFAULT_MAX_EXE_BYTES = 128 << 20
CMDLINE_MAX_CHARS = 64 << 10  # the command line kept: first half and last half of the args
ARG_MAX_CHARS = 4096  # one argument longer than this is cut (padding must not hide what follows)
READ_LIMIT = 4 << 20  # never read more than this from cmdline / environ
ENV_VALUE_MAX = 1024
ENV_MAX_VARS = 32

# Environment variables kept (the rest of the environment is never stored).
ENV_NAMES = frozenset({"ALGO", "ALGORITHM", "COIN", "WORKER", "WORKER_NAME", "RIG_ID", "DONATE_LEVEL",
                       "CPU_THREADS", "THREADS_HINT"})
ENV_NAME_PATTERN = re.compile(r"^(?:POOL|WALLET|XMRIG|XMR_|MINING|MINER|MONERO|NICEHASH)|STRATUM|WALLET")
ENV_VALUE_PATTERN = re.compile(rb"stratum[0-9]?\+(?:tcp|ssl|tls)://", re.IGNORECASE)
# Kept names that look like secrets keep their name but not their value.
ENV_SECRET_PATTERN = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|API_?KEY|CREDENTIAL|SEED|MNEMONIC")
REDACTED = "<redacted>"

Progress = Callable[[int, int], None]


class _Vanished(Exception):
    """The process exited while it was being read."""


@dataclass(frozen=True, slots=True)
class SweepStats:
    """What one ``snapshot_all`` saw."""

    pids: int = 0  # PIDs listed
    snapshots: int = 0  # snapshots produced
    vanished: int = 0  # processes gone before or while they were read
    partial: int = 0  # snapshots with at least one unreadable field
    errors: int = 0  # snapshots lost to an unexpected error (a bug: logged)
    hash_hits: int = 0
    hash_misses: int = 0
    net_namespaces: int = 0  # distinct network namespaces whose tables were read
    elapsed: float = 0.0  # seconds


# --------------------------------------------------------------------------- pure parsing


def decode(raw: bytes) -> str:
    """Bytes from the kernel as valid UTF-8 text (undecodable bytes become ``\\xNN``)."""
    return raw.decode("utf-8", "backslashreplace")


def parse_stat(text: str) -> dict:
    """Fields of ``/proc/PID/stat`` we use: comm, state, ppid, flags, num_threads, start_ticks.

    ``comm`` may hold spaces and ``)``, so the fields after it are found from the last ``)``.
    ValueError on malformed text.
    """
    lpar, rpar = text.find("("), text.rfind(")")
    if lpar < 0 or rpar < lpar:
        raise ValueError("no (comm) in stat")
    rest = text[rpar + 2:].split()
    if len(rest) < 20:
        raise ValueError("stat too short")
    # rest[0] is field 3 (state): field N is rest[N - 3].
    return {
        "comm": text[lpar + 1:rpar],
        "state": rest[0],
        "ppid": int(rest[1]),
        "flags": int(rest[6]),
        "num_threads": int(rest[17]),
        "start_ticks": int(rest[19]),
    }


def parse_status(text: str) -> dict:
    """``Name`` and the real ``Uid`` from ``/proc/PID/status``."""
    out: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            out["name"] = value.strip()
        elif key == "Uid":
            ids = value.split()
            if ids and ids[0].isascii() and ids[0].isdigit():  # malformed: no uid (the snapshot says partial)
                out["uid"] = int(ids[0])
        if "name" in out and "uid" in out:
            break
    return out


def split_cmdline(raw: bytes) -> list[str]:
    """Arguments from ``/proc/PID/cmdline`` (NUL-separated; space-separated after setproctitle)."""
    raw = raw.rstrip(b"\x00")  # setproctitle pads the old argv area with NULs
    if not raw:
        return []
    args = raw.split(b"\x00")
    if len(args) == 1 and b" " in args[0]:
        args = args[0].split(b" ")  # title rewritten in place: one string with spaces
    return [decode(a) for a in args]


def cap_cmdline(args: list[str], max_chars: int = CMDLINE_MAX_CHARS,
                arg_max: int = ARG_MAX_CHARS) -> tuple[list[str], bool]:
    """``(args, truncated)``: each argument cut to ``arg_max`` and, past ``max_chars`` in
    total, the middle arguments dropped so both the start and the end survive padding."""
    truncated = False
    out = []
    for a in args:
        if len(a) > arg_max:
            a, truncated = a[:arg_max] + "\u2026", True
        out.append(a)
    if sum(len(a) + 1 for a in out) <= max_chars:
        return out, truncated
    half = max_chars // 2
    head, size = [], 0
    for a in out:
        if size + len(a) + 1 > half:
            break
        head.append(a)
        size += len(a) + 1
    tail, size = [], 0
    for a in reversed(out[len(head):]):
        if size + len(a) + 1 > half:
            break
        tail.append(a)
        size += len(a) + 1
    tail.reverse()
    dropped = len(out) - len(head) - len(tail)
    return head + [f"\u2026[{dropped} arguments omitted]\u2026"] + tail, True


_ENV_WORDS = (b"POOL", b"WALLET", b"XMR", b"MINING", b"MINER", b"MONERO", b"NICEHASH", b"STRATUM")


@functools.lru_cache(maxsize=16)
def _env_words(extra: frozenset[str]) -> tuple[bytes, ...]:
    """Upper-case words one of which any kept variable contains (in its name, or 'STRATUM' in its value)."""
    words = set(_ENV_WORDS) | {n.encode() for n in ENV_NAMES} | {n.encode("utf-8", "surrogateescape") for n in extra}
    return tuple(sorted(words))


def filter_environ(raw: bytes, extra_names: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """Only the miner-relevant variables of ``/proc/PID/environ``; secrets redacted, values capped."""
    extra = frozenset(n.upper() for n in extra_names)
    upper_raw = raw.upper()  # a plain substring scan skips most environments at once
    if not any(w in upper_raw for w in _env_words(extra)):
        return ()
    kept: list[tuple[str, str]] = []
    for entry in raw.split(b"\x00"):
        name_b, eq, value_b = entry.partition(b"=")
        if not eq or not name_b:
            continue
        name = decode(name_b)
        upper = name.upper()
        if not (upper in ENV_NAMES or upper in extra or ENV_NAME_PATTERN.search(upper)
                or ENV_VALUE_PATTERN.search(value_b)):
            continue
        value = REDACTED if ENV_SECRET_PATTERN.search(upper) else decode(value_b[:ENV_VALUE_MAX])
        kept.append((name[:256], value))
        if len(kept) >= ENV_MAX_VARS:
            break
    return tuple(kept)


def parse_ns_link(target: str) -> int:
    """The inode in a namespace link ``net:[4026531992]``; ValueError otherwise."""
    lb, rb = target.find("["), target.rfind("]")
    if lb < 0 or rb < lb:
        raise ValueError(f"not a namespace link: {target!r}")
    return int(target[lb + 1:rb])


def strip_deleted(target: str) -> tuple[str, bool]:
    """``(path, deleted)`` for a readlink result that may end in `` (deleted)``."""
    if target.endswith(" (deleted)"):
        return target[: -len(" (deleted)")], True
    return target, False


# --------------------------------------------------------------------------- I/O helpers


def _read_bytes(dfd: int, name: str, limit: int = READ_LIMIT) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        chunks, total = [], 0
        while total < limit:
            b = os.read(fd, min(1 << 17, limit - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_once(dfd: int, name: str, size: int) -> bytes:
    """One read of a small procfs file (stat, status, cgroup are generated whole on the first read)."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _readlink(dfd: int, name: str) -> str:
    return decode(os.readlink(name.encode(), dir_fd=dfd))


_GONE = (errno.ENOENT, errno.ESRCH)


class _Fields:
    """Reads one process's fields; turns OSError into empty fields plus ``partial``."""

    __slots__ = ("dfd", "partial")

    def __init__(self, dfd: int) -> None:
        self.dfd = dfd
        self.partial: list[str] = []

    def alive(self) -> bool:
        try:
            os.stat("stat", dir_fd=self.dfd)
            return True
        except OSError as e:
            return e.errno not in _GONE

    def get(self, field: str, fn: Callable, default, *, missing_is_partial: bool = False):
        """``fn()``, or ``default`` when it fails: vanished -> ``_Vanished``; other errors -> partial."""
        try:
            return fn()
        except OSError as e:
            if e.errno in _GONE:
                if not self.alive():
                    raise _Vanished from None
                if missing_is_partial:
                    self.partial.append(field)
            else:  # access denied, I/O error, a refused path: the field is unknown, not empty
                self.partial.append(field)
            return default


# --------------------------------------------------------------------------- the collector


class ProcfsCollector:
    """Snapshots of processes read from ``proc_root``.

    One instance is owned by one thread (the sweep or the daemon's poller); the hash cache
    it is given may be shared. Caches of user names and of per-namespace TCP tables live
    here; the TCP tables are refreshed at each ``snapshot_all`` (or ``begin_sweep``).
    """

    def __init__(self, proc_root: Path | str = Path("/proc"), hash_cache: HashCache | None = None,
                 max_exe_bytes: int = DEFAULT_MAX_EXE_BYTES, *, env_names: Iterable[str] = frozenset(),
                 hash_exe: bool = True, find_config: bool = True, max_config_bytes: int = minerconfig.MAX_CONFIG_BYTES,
                 clock: Callable[[], float] = time.monotonic, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.proc_root = Path(proc_root)
        self._root = os.fspath(self.proc_root)
        self.hash_cache = hash_cache if hash_cache is not None else HashCache()
        self.max_exe_bytes = max_exe_bytes
        self.env_names = frozenset(env_names)
        self.hash_exe = hash_exe
        self.find_config = find_config
        self.max_config_bytes = max_config_bytes
        self.net_tables = netns.NetTables()
        self._clock = clock
        self._wall_ns = wall_ns
        self._users: dict[int, str] = {}
        self._config_absent: dict = {}  # directories known to hold no config.json & co (minerconfig)
        self.vanished = 0  # processes that vanished, over the collector's life

    def pids(self) -> list[int]:
        """PIDs (thread-group leaders) currently listed in ``proc_root``, ascending."""
        return sorted(int(n) for n in os.listdir(self._root) if n.isdigit())

    def container_pids(self, container_id: str) -> list[int]:
        """PIDs whose cgroup names ``container_id``: one small read per process, no snapshots."""
        found = []
        for pid in self.pids():
            try:
                with open(f"{self._root}/{pid}/cgroup", "rb") as fh:
                    text = decode(fh.read(65536))
            except OSError:  # vanished or unreadable: not attributable now, the periodic scan retries
                continue
            if cgroups.parse_cgroup(text)[0] == container_id:
                found.append(pid)
        return found

    def begin_sweep(self) -> None:
        """Forget per-sweep caches (network tables); ``snapshot_all`` calls it itself."""
        self.net_tables.clear()

    def user_name(self, uid: int) -> str:
        """Host user name for ``uid`` (cached); ``str(uid)`` when it has none."""
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def snapshot(self, pid: int, *, tables: netns.NetTables | None = None) -> ProcessSnapshot | None:
        """A snapshot of ``pid``, or None when the process does not exist (any more).

        Alone, it reads its namespace's TCP tables afresh; ``snapshot_all`` passes tables shared
        by the whole sweep instead.
        """
        try:
            dfd = os.open(f"{self._root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in _GONE or e.errno == errno.ENOTDIR:
                self.vanished += 1
                return None
            return ProcessSnapshot(pid=pid, partial=("stat",))
        try:
            return self._collect(pid, _Fields(dfd), tables if tables is not None else netns.NetTables())
        except _Vanished:
            self.vanished += 1
            return None
        finally:
            os.close(dfd)

    def _collect(self, pid: int, f: _Fields, tables: netns.NetTables) -> ProcessSnapshot:
        dfd = f.dfd
        stat_text = f.get("stat", lambda: decode(_read_once(dfd, "stat", 4096)), "", missing_is_partial=True)
        try:
            st = parse_stat(stat_text) if stat_text else {}
        except ValueError:
            st = {}
            f.partial.append("stat")
        status = f.get("status", lambda: parse_status(decode(_read_once(dfd, "status", 16384))), {},
                       missing_is_partial=True)
        uid = status.get("uid")
        if uid is None and "status" not in f.partial:
            f.partial.append("uid")
        kthread = bool(st.get("flags", 0) & PF_KTHREAD)
        zombie = st.get("state") in ("Z", "X")
        base = dict(
            pid=pid,
            ppid=st.get("ppid", 0),
            name=st.get("comm") or status.get("name", ""),
            uid=uid,
            user=self.user_name(uid) if uid is not None else "",
            start_ticks=st.get("start_ticks", 0),
            num_threads=st.get("num_threads", 0),
            is_kernel_thread=kthread,
        )
        cg = f.get("cgroup", lambda: cgroups.parse_cgroup(decode(_read_bytes(dfd, "cgroup", 65536))), ("", "", ""))
        base.update(container_id=cg[0], container_runtime=cg[1], cgroup_path=cg[2])
        if kthread or zombie:
            return ProcessSnapshot(**base, partial=tuple(f.partial))

        args, truncated = cap_cmdline(f.get("cmdline", lambda: split_cmdline(_read_bytes(dfd, "cmdline")), []))
        if truncated:
            f.partial.append("cmdline")
        exe_link = f.get("exe", lambda: _readlink(dfd, "exe"), "")
        exe, deleted = strip_deleted(exe_link)
        cwd = f.get("cwd", lambda: _readlink(dfd, "cwd"), "")
        environ = f.get("environ", lambda: filter_environ(_read_bytes(dfd, "environ"), self.env_names), ())
        net_ns = f.get("net_ns", lambda: parse_ns_link(_readlink(dfd, "ns/net")), 0)
        sockets = f.get("connections", lambda: netns.socket_inodes(self._root, pid, dir_fd=dfd), frozenset())
        conns = ()
        if sockets:
            conns = f.get("connections", lambda: tables.connections_for(
                self._root, pid, net_ns, sockets, dir_fd=dfd), ())
        hashes = None
        if self.hash_exe and "exe" in f.partial:
            f.partial.append("hashes")
        elif self.hash_exe and exe_link:
            hashes = f.get("hashes", lambda: hash_process_exe(
                self._root, pid, self.hash_cache, self.max_exe_bytes, dir_fd=dfd), None)
            if hashes is None and "hashes" not in f.partial:
                f.partial.append("hashes")  # too large or not a regular file: unknown, not clean
        config = None
        if self.find_config and (cwd or exe):
            config = f.get("miner_config", lambda: minerconfig.find_miner_config(
                self._root, pid, args, cwd, exe, dir_fd=dfd, max_bytes=self.max_config_bytes,
                absent=self._config_absent, settled_ns=self._wall_ns() - SETTLE_NS), None)
        return ProcessSnapshot(
            **base, exe=exe, exe_deleted=deleted, cmdline=tuple(args), cwd=cwd, environ=environ, hashes=hashes,
            net_ns=net_ns, connections=conns, miner_config=config, partial=tuple(dict.fromkeys(f.partial)),
        )

    def snapshot_all(self, progress: Progress | None = None) -> tuple[list[ProcessSnapshot], SweepStats]:
        """Snapshots of every process, and what the sweep saw. ``progress(done, total)`` after each PID."""
        started = self._clock()
        self.begin_sweep()
        hits0, misses0, reads0 = self.hash_cache.hits, self.hash_cache.misses, self.net_tables.reads
        pids = self.pids()
        total = len(pids)
        snaps: list[ProcessSnapshot] = []
        vanished = errors = 0
        for done, pid in enumerate(pids, start=1):
            before = self.vanished
            try:
                snap = self.snapshot(pid, tables=self.net_tables)
            except Exception:  # crash barrier: a parsing bug on one process must not end the sweep
                errors += 1
                log.exception("process_snapshot_failed", pid=pid)
                snap = None
            vanished += self.vanished - before
            if snap is not None:
                snaps.append(snap)
            if progress is not None:
                progress(done, total)
        stats = SweepStats(
            pids=total, snapshots=len(snaps), vanished=vanished, partial=sum(1 for s in snaps if s.partial),
            errors=errors, hash_hits=self.hash_cache.hits - hits0, hash_misses=self.hash_cache.misses - misses0,
            net_namespaces=self.net_tables.reads - reads0, elapsed=self._clock() - started,
        )
        return snaps, stats
