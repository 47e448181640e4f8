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
container; a fake tree in tests). The reads are ``procread``'s (with the ``stat`` parser),
the pure parsing of the other fields ``procparse``'s; this module collects.
"""

from __future__ import annotations

import errno
import os
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.collectors import cgroup_procs, cgroups, minerconfig, netns, proclist
from agent.collectors.confined import Refused, open_regular
from agent.collectors.hashing import SETTLE_NS, HashCache, hash_fd, hash_process_exe
from agent.collectors.memread import is_loader, loader_program
from agent.collectors.procparse import (
    cap_cmdline,
    decode,
    environ_home,
    environ_ld_preload,
    filter_environ,
    parse_ns_link,
    parse_status,
    split_cmdline,
    strip_deleted,
)
from agent.collectors.procread import NO_STAT, parse_stat, read_bounded, read_once, readlink
from agent.model import ProcessSnapshot

log = structlog.get_logger("minerwatch.procfs")

PF_KTHREAD = 0x00200000
DEFAULT_MAX_EXE_BYTES = 128 << 20
CONTAINER_CGROUPS = 1000  # cgroups of one container walked to find its processes (more: every process is read)

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
                 clock: Callable[[], float] = time.monotonic, wall_ns: Callable[[], int] = time.time_ns,
                 cgroup_root: str = "/sys/fs/cgroup") -> None:
        self.proc_root = Path(proc_root)
        self._root = os.fspath(self.proc_root)
        self.cgroup_root = os.fspath(cgroup_root)
        self._v2: bool | None = None
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
        """PIDs (thread-group leaders) currently listed in ``proc_root``, ascending: a raw ``getdents64``
        (``proclist``), so a preload library filtering libc's ``readdir`` hides none from us."""
        return proclist.pids(self._root)

    def container_pids(self, container_id: str, leader: int = 0) -> list[int]:
        """PIDs whose cgroup names ``container_id``, ascending. With ``leader`` (a process of it: Docker's
        ``State.Pid``), the PIDs in the container's cgroup subtree on the host (its ``cgroup.procs``
        files), each then checked by its own ``/proc/PID/cgroup`` like any other: a container start costs
        reads of its own processes, not of every process on the host. Without, or when its subtree
        cannot be read, every process is read (one small read each)."""
        text = self._cgroup_text(leader) if leader > 0 else None
        if text is not None and cgroups.parse_cgroup(text)[0] == container_id:
            for rel in cgroup_procs.container_dirs(text, container_id, self._v2_only()):
                found = cgroup_procs.pids_under(self.cgroup_root, rel, CONTAINER_CGROUPS)
                if found is not None and leader in found:
                    return sorted(pid for pid in found if self.container_of(pid) == container_id)
        return [pid for pid in self.pids() if self.container_of(pid) == container_id]

    def _v2_only(self) -> bool:
        """The unified hierarchy alone is mounted at ``cgroup_root`` (cgroup v2), not v1 with ``unified`` beside."""
        if self._v2 is None:
            self._v2 = os.path.exists(os.path.join(self.cgroup_root, "cgroup.controllers"))
        return self._v2

    def container_of(self, pid: int) -> str | None:
        """The container id in ``pid``'s cgroup ("" on the host); None when it is gone or unreadable
        (not attributable now: the periodic scan retries)."""
        text = self._cgroup_text(pid) if pid > 0 else None
        return cgroups.parse_cgroup(text)[0] if text is not None else None

    def _cgroup_text(self, pid: int) -> str | None:
        """``/proc/PID/cgroup`` as text; None when the process is gone or it cannot be read."""
        try:
            return decode(read_bounded(f"{self._root}/{pid}/cgroup", limit=65536))
        except OSError:
            return None

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
        stat_raw = f.get("stat", lambda: read_once("stat", dir_fd=dfd), b"", missing_is_partial=True)
        try:
            st = parse_stat(stat_raw) if stat_raw else NO_STAT
        except ValueError:
            st = NO_STAT
            f.partial.append("stat")
        status = f.get("status", lambda: parse_status(decode(read_once("status", dir_fd=dfd, size=16384))), {},
                       missing_is_partial=True)
        uid = status.get("uid")
        if uid is None and "status" not in f.partial:
            f.partial.append("uid")
        kthread = bool(st.flags & PF_KTHREAD)
        zombie = st.state in ("Z", "X")
        base = dict(
            pid=pid,
            ppid=st.ppid,
            name=st.comm or status.get("name", ""),
            uid=uid,
            user=self.user_name(uid) if uid is not None else "",
            start_ticks=st.start_ticks,
            num_threads=st.num_threads,
            is_kernel_thread=kthread,
        )
        cg_text = f.get("cgroup", lambda: decode(read_bounded("cgroup", dir_fd=dfd, limit=65536)), "")
        cg = cgroups.parse_cgroup(cg_text)
        base.update(container_id=cg[0], container_runtime=cg[1], cgroup_path=cg[2],
                    cgroup_claim=cgroups.cgroup_claim(cg_text))
        if kthread or zombie:
            return ProcessSnapshot(**base, partial=tuple(f.partial))

        args, truncated = cap_cmdline(f.get("cmdline", lambda: split_cmdline(read_bounded("cmdline", dir_fd=dfd)), []))
        if truncated:
            f.partial.append("cmdline")
        exe_link = f.get("exe", lambda: readlink("exe", dir_fd=dfd), "")
        exe, deleted = strip_deleted(exe_link)
        cwd = f.get("cwd", lambda: readlink("cwd", dir_fd=dfd), "")
        environ_raw = f.get("environ", lambda: read_bounded("environ", dir_fd=dfd), b"")
        environ = filter_environ(environ_raw, self.env_names)
        home = environ_home(environ_raw)  # where XMRig looks for $HOME/.xmrig.json: never in the alert
        ld_preload = environ_ld_preload(environ_raw)  # for detectors.hiding only
        net_ns = f.get("net_ns", lambda: parse_ns_link(readlink("ns/net", dir_fd=dfd)), 0)
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
        program = mapping = ""
        program_hashes = None
        if is_loader(exe):  # ld.so PROGRAM: the program is what runs; judge it, not the loader
            maps = f.get("maps", lambda: decode(read_bounded("maps", dir_fd=dfd, limit=4 << 20)), "")
            found = loader_program(maps, exe, args, cwd)
            if found is not None:
                program, mapping = found
                if self.hash_exe:
                    program_hashes = f.get("program_hashes", lambda: self._mapped_hashes(dfd, mapping), None)
                    if program_hashes is None and "program_hashes" not in f.partial:
                        f.partial.append("program_hashes")
        config = None
        if self.find_config and (cwd or exe):
            config = f.get("miner_config", lambda: minerconfig.find_miner_config(
                self._root, pid, args, cwd, program or exe, dir_fd=dfd, max_bytes=self.max_config_bytes,
                absent=self._config_absent, settled_ns=self._wall_ns() - SETTLE_NS, home=home), None)
        return ProcessSnapshot(
            **base, exe=exe, exe_deleted=deleted, cmdline=tuple(args), cwd=cwd, environ=environ, hashes=hashes,
            net_ns=net_ns, connections=conns, miner_config=config, program=program, program_hashes=program_hashes,
            program_mapping=mapping, ld_preload=ld_preload, partial=tuple(dict.fromkeys(f.partial)),
        )

    def _mapped_hashes(self, dfd: int, mapping: str):
        """Hashes of the file behind one mapping (``map_files/lo-hi``: the very file mapped, wherever it is)."""
        try:
            fd = open_regular(f"map_files/{mapping}", follow_symlinks=True, dir_fd=dfd)
        except Refused as e:
            self.hash_cache.count_refused(e.reason)
            return None
        try:
            return hash_fd(fd, self.hash_cache, self.max_exe_bytes)
        finally:
            os.close(fd)

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
