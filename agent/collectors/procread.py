"""Small reads of procfs and sysfs files, and the one ``/proc/PID/stat`` parser.

Why ``/proc`` is read directly rather than through psutil (once declared, never imported):
the collectors pin a process by an open ``/proc/PID`` directory descriptor and read every
field relative to it, so a process that exits mid-read fails with ``ESRCH`` instead of a
reused PID being described; TCP connections are read from each process's own network
namespace (``/proc/PID/net/tcp``, once per namespace per sweep), not from the agent's; the
exec path and the CPU sampler need single cheap reads (one ``read`` of ``stat`` per PID),
not a process object per PID; and ``proc_root`` is a parameter everywhere (``/host/proc``
when the agent runs in a container, a fake tree in tests).

Every reader takes an optional ``dir_fd`` (the pinned ``/proc/PID`` directory, a ``task``
or ``fd`` directory), opens with ``O_CLOEXEC`` and reads a bounded number of bytes.
``OSError`` is left to the caller, which translates ``ENOENT``/``ESRCH`` (the process
vanished) at its edge.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from agent.collectors.procparse import decode

ONE_READ = 4096  # a stat line is well under this
READ_LIMIT = 4 << 20  # the default bound of a multi-read file (cmdline, environ)
READ_CHUNK = 1 << 17

_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def read_once(path: str | os.PathLike, *, dir_fd: int | None = None, size: int = ONE_READ) -> bytes:
    """One ``read`` of at most ``size`` bytes: all of a small file procfs or sysfs generates whole
    on the first read (``stat``, ``status``, ``cgroup``, a sysfs attribute)."""
    fd = os.open(path, _FLAGS, dir_fd=dir_fd)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def read_bounded(path: str | os.PathLike, *, dir_fd: int | None = None, limit: int = READ_LIMIT,
                 chunk: int = READ_CHUNK) -> bytes:
    """At most ``limit`` bytes, in as many reads as it takes (``cmdline``, ``environ``, ``maps``, ``net/tcp``)."""
    fd = os.open(path, _FLAGS, dir_fd=dir_fd)
    try:
        chunks, total = [], 0
        while total < limit:
            b = os.read(fd, min(chunk, limit - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_int(path: str | os.PathLike, *, dir_fd: int | None = None) -> int:
    """The integer a one-value file holds (``nr_hugepages``, ``max_user_watches``); ValueError otherwise."""
    return int(read_once(path, dir_fd=dir_fd))


def readlink(path: str | os.PathLike, *, dir_fd: int | None = None) -> str:
    """A link's target (``exe``, ``cwd``, ``ns/net``) as text, undecodable bytes as ``\\xNN`` (``decode``)."""
    return decode(os.readlink(os.fsencode(path), dir_fd=dir_fd))


class Stat(NamedTuple):
    """The fields of ``/proc/PID/stat`` the agent uses (``start_ticks`` is field 22, ``starttime``).
    A named tuple: one is made for every process in every pass (a frozen dataclass cost three times as much)."""

    comm: str
    state: str
    ppid: int
    flags: int
    utime: int  # clock ticks
    stime: int
    num_threads: int
    start_ticks: int

    @property
    def cpu_ticks(self) -> int:
        return self.utime + self.stime


NO_STAT = Stat("", "", 0, 0, 0, 0, 0, 0)  # what an unreadable stat leaves


def stat_counters(raw: bytes) -> tuple[int, int, int]:
    """(utime + stime, num_threads, start_ticks) of a ``/proc/PID/stat`` line, as ``parse_stat`` reads them
    but without decoding the comm: the CPU sampler's read of every process every pass."""
    rest = _after_comm(raw)[1]
    return int(rest[11]) + int(rest[12]), int(rest[17]), int(rest[19])


def parse_stat(raw: bytes | str) -> Stat:
    """The fields of a ``/proc/PID/stat`` line; ValueError when it is malformed (or cut short).

    ``comm`` is decoded like all kernel text (``decode``); the numbers are split from the bytes as they are.
    """
    comm, rest = _after_comm(raw)
    # rest[0] is field 3 (state): field N is rest[N - 3].
    state = rest[0]
    return Stat(decode(comm) if isinstance(comm, bytes) else comm, decode(state) if isinstance(state, bytes) else state,
                int(rest[1]), int(rest[6]), int(rest[11]), int(rest[12]), int(rest[17]), int(rest[19]))


def _after_comm(raw):
    """(comm, the fields after it) of a stat line: ``comm`` may hold spaces and ``)``, so the fields are
    found from the last ``)``. ValueError when the line is malformed (or cut short)."""
    lpar, rpar = raw.find("(" if isinstance(raw, str) else b"("), raw.rfind(")" if isinstance(raw, str) else b")")
    if lpar < 0 or rpar < lpar:
        raise ValueError("no (comm) in stat")
    rest = raw[rpar + 2:].split()
    if len(rest) < 20:
        raise ValueError("stat too short")
    return raw[lpar + 1:rpar], rest
