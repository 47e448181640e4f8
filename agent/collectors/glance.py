"""A glance at a process that just called exec: the few reads that are enough to call most execs quiet.

A busy CI runner execs hundreds of short-lived, known programs a second (compilers, shells,
coreutils). A full snapshot reads a dozen files per process and hashes and YARA-scans what it
does not know; a glance reads ``stat``, the ``exe`` link and the identity of the file it points
at, ``cmdline`` and ``cgroup``, through one pinned ``/proc/PID`` descriptor, and nothing else.
The worker judges the glance with the same detectors; only when the executable is one it has
already seen clean and nothing on the glance is evidence does it stop there (the process is
still tracked, and fully read in the next periodic passes if it lives on). Everything else gets
the full snapshot at once.

A glance carries ``partial=("glance",)``: its environment, working directory, sockets, config,
hashes and YARA hits are not read, so it must never be reported as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.collectors import cgroups, procparse, procread
from agent.collectors.hashing import CacheKey, cache_key
from agent.collectors.procfs import PF_KTHREAD
from agent.model import ProcessSnapshot

CGROUP_READ = 65536
CMDLINE_FIRST_READ = 4096  # most command lines fit: one read; a full one goes on to the bound
CGROUP_CACHE = 1024  # parsed cgroup texts kept (a CI job's processes share a handful)
CGROUP_CACHE_TEXT = 2048  # only texts this short are kept: the cache stays under ~2 MiB
PARTIAL = ("glance",)


@dataclass(frozen=True, slots=True)
class Glance:
    snap: ProcessSnapshot  # partial=("glance",)
    exe_key: CacheKey | None  # identity of the executable file (device, inode, size, mtime, ctime)


class Gone:
    """The process had exited (and been reaped) before it could be looked at: nothing to read, by any path."""


GONE = Gone()
_cgroups: dict[str, tuple[str, str, str, str]] = {}


def _cgroup_facts(text: str) -> tuple[str, str, str, str]:
    """``(container_id, runtime, path, claim)`` of a cgroup text, remembered by the text (pure functions of it)."""
    facts = _cgroups.get(text)
    if facts is None:
        facts = (*cgroups.parse_cgroup(text), cgroups.cgroup_claim(text))
        if len(text) <= CGROUP_CACHE_TEXT:  # long texts (a delegated subtree's deep paths) are not kept
            if len(_cgroups) >= CGROUP_CACHE:
                _cgroups.clear()
            _cgroups[text] = facts
    return facts


def _cmdline(dfd: int) -> bytes:
    fd = os.open("cmdline", _FLAGS, dir_fd=dfd)
    try:
        first = os.read(fd, CMDLINE_FIRST_READ)
    finally:
        os.close(fd)
    if len(first) < CMDLINE_FIRST_READ:  # procfs gives all it has up to the size asked: this is all of it
        return first
    return procread.read_bounded("cmdline", dir_fd=dfd)


_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def glance(proc_root: str, pid: int) -> Glance | Gone | None:
    """A glance at ``pid``; ``GONE`` when it no longer exists; None when it could not be read whole
    (the caller reads it fully)."""
    try:
        dfd = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return GONE
    except OSError:
        return None
    # Every read goes through ``dfd``, which pins this very process: once it exits, they fail (ESRCH or
    # ENOENT), and a process that reuses its PID is never read through it.
    try:
        st = procread.parse_stat(procread.read_once("stat", dir_fd=dfd))
        cid, runtime, path, claim = _cgroup_facts(
            procparse.decode(procread.read_once("cgroup", dir_fd=dfd, size=CGROUP_READ)))
        base = dict(pid=pid, ppid=st.ppid, name=st.comm, start_ticks=st.start_ticks, num_threads=st.num_threads,
                    is_kernel_thread=bool(st.flags & PF_KTHREAD), container_id=cid, container_runtime=runtime,
                    cgroup_path=path, cgroup_claim=claim, partial=PARTIAL)
        if base["is_kernel_thread"] or st.state in ("Z", "X"):
            return Glance(ProcessSnapshot(**base), None)
        exe, deleted = procparse.strip_deleted(procread.readlink("exe", dir_fd=dfd))
        key = cache_key(os.stat("exe", dir_fd=dfd))  # follows the magic link: the very file it runs
        args, _cut = procparse.cap_cmdline(procparse.split_cmdline(_cmdline(dfd)))
    except (OSError, ValueError):  # gone, denied, malformed: the full snapshot sorts it out
        return None
    finally:
        os.close(dfd)
    return Glance(ProcessSnapshot(**base, exe=exe, exe_deleted=deleted, cmdline=tuple(args)), key)
