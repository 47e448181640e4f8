"""The identity guard: is PID N still the process the finding saw?

A PID is re-read through one open ``/proc/PID`` descriptor (start time, executable, cgroup)
and compared with the snapshot: a reused PID, an exec of another program or a move to
another container gives a reason to refuse. Host processes are signalled through a pidfd
opened *before* the check, so the process checked is the process signalled.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from agent.collectors import cgroups
from agent.collectors.procparse import decode, strip_deleted
from agent.collectors.procread import parse_stat, read_once, readlink
from agent.model import ProcessSnapshot


@dataclass(frozen=True, slots=True)
class Identity:
    pid: int
    ppid: int
    state: str  # R, S, T (stopped)...
    start_ticks: int
    exe: str  # "" when unreadable
    container_id: str
    cgroup_text: str


class Gone(Exception):
    """The process does not exist any more."""


def read_identity(proc_root: str, pid: int) -> Identity:
    """The current identity of ``pid``; Gone when it exited, OSError when unreadable."""
    try:
        dfd = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Gone(pid) from None
    try:
        try:
            stat = read_once("stat", dir_fd=dfd, size=65536)
            cgroup_text = decode(read_once("cgroup", dir_fd=dfd, size=65536))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                raise Gone(pid) from None
            raise
        fields = parse_stat(stat)
        if fields.state in ("Z", "X"):
            raise Gone(pid)
        try:
            exe, _deleted = strip_deleted(readlink("exe", dir_fd=dfd))  # decoded as the snapshot's exe is
        except OSError:  # kernel thread, or no permission: the caller compares what it can
            exe = ""
        cid = cgroups.parse_cgroup(cgroup_text)[0]
        return Identity(pid, fields.ppid, fields.state, fields.start_ticks, exe, cid, cgroup_text)
    finally:
        os.close(dfd)


def mismatch(snap: ProcessSnapshot, now: Identity) -> str:
    """Why ``now`` is not the process of ``snap`` ("" when it is)."""
    if not snap.start_ticks:
        return f"start time of PID {snap.pid} unknown in the finding: cannot verify"
    if now.start_ticks != snap.start_ticks:
        return f"PID {snap.pid} start time {snap.start_ticks} -> {now.start_ticks} (PID reused)"
    if snap.exe and now.exe and now.exe != snap.exe:
        return f"PID {snap.pid} executable {snap.exe} -> {now.exe}"
    if snap.exe and not now.exe:
        return f"PID {snap.pid} executable {snap.exe} no longer readable"
    if now.container_id != snap.container_id:
        before, after = snap.container_id[:12] or "host", now.container_id[:12] or "host"
        return f"PID {snap.pid} container {before} -> {after}"
    return ""


def verify(proc_root: str, snap: ProcessSnapshot) -> tuple[Identity | None, str]:
    """``(identity, "")`` when ``snap.pid`` is still that process, else ``(None, reason)``."""
    try:
        now = read_identity(proc_root, snap.pid)
    except Gone:
        return None, f"PID {snap.pid} exited"
    except (OSError, ValueError) as exc:
        return None, f"PID {snap.pid} unreadable: {exc}"
    reason = mismatch(snap, now)
    return (None, reason) if reason else (now, "")


def _pid_ns(proc_root: str, pid: int) -> str:
    """``pid:[inode]`` of the process's pid namespace ("" when unreadable)."""
    try:
        return os.readlink(f"{proc_root}/{pid}/ns/pid")
    except OSError:
        return ""


def outside_container(proc_root: str, pid: int, cgroup_text: str, init_pid: int, container_id: str) -> str:
    """Why ``pid`` (whose cgroup text is ``cgroup_text``) is not a process of the container whose
    init is ``init_pid`` (``State.Pid`` as the runtime reports it); "" when it is.

    It is when it shares the init's pid namespace (not the host's: a ``--pid host`` container
    shares that with everyone) or the init's container cgroup. A name in a cgroup path proves
    nothing by itself: whoever owns a cgroup subtree can create any name there.
    """
    if init_pid <= 0:
        return f"container {container_id[:12]} reports no init process to compare PID {pid} with"
    mine, theirs, host = _pid_ns(proc_root, pid), _pid_ns(proc_root, init_pid), _pid_ns(proc_root, 1)
    if mine and mine == theirs and mine != host:
        return ""
    try:
        init_text = decode(read_once(f"{proc_root}/{init_pid}/cgroup", size=65536))
    except OSError as exc:
        return f"cannot read the cgroup of container {container_id[:12]}'s init PID {init_pid}: {exc.strerror or exc}"
    scope, init_scope = (cgroups.container_scope(cgroups.parse_cgroup(t)[2]) for t in (cgroup_text, init_text))
    if scope and scope == init_scope:
        return ""
    return (f"PID {pid} shares neither the pid namespace nor the cgroup of container {container_id[:12]}'s init "
            f"PID {init_pid} ({scope or 'no container cgroup'} vs {init_scope or 'no container cgroup'}): "
            "its cgroup only names that container")


def ancestors(proc_root: str, pid: int, limit: int = 64) -> list[int]:
    """``pid``'s parent, grandparent... up to PID 1 (bounded; stops where /proc cannot be read)."""
    out: list[int] = []
    while pid > 1 and len(out) < limit:
        try:
            pid = read_identity(proc_root, pid).ppid
        except (Gone, OSError, ValueError):
            break
        if pid <= 0:
            break
        out.append(pid)
    return out
