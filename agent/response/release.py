"""Undo a pause: unpause through Docker, thaw a frozen cgroup or SIGCONT a stopped host process.

Used by ``minerwatch release CONTAINER``. CONTAINER is a name, an id or id prefix, or
``pid:N`` for a host process the agent stopped. Only what minerwatch itself paused (by its own
records, ``<state_dir>/paused.json``) is released; ``force`` also unpauses a container someone
else paused. The pause record is removed and the container is remembered as released, so the
agent does not pause it again while it lives (a new container, even of the same name, has a
new id and is judged afresh).
"""

from __future__ import annotations

import os
import pwd
import signal
from dataclasses import dataclass

import structlog

from agent.collectors.docker_api import ContainerGone, DockerDown, DockerHandle, DockerRefused
from agent.errors import MinerwatchError
from agent.response import identity
from agent.response.freezer import CgroupFreezer, CgroupTarget, FreezeError
from agent.response.records import ResponseRecords
from agent.response.responder import now_iso

log = structlog.get_logger("minerwatch.response")


class ReleaseError(MinerwatchError):
    """Nothing to release, or the release failed (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Released:
    key: str  # container id, or pid:N
    name: str
    how: str  # "unpaused", "thawed cgroup-v1 ...", "continued (SIGCONT)", "was not paused"
    by_agent: bool  # the agent had paused it
    by: str
    at: str
    paused_at: str = ""  # when minerwatch paused it (from its record)
    already: str = ""  # "USER at TIME" when an operator had released it before: nothing was done

    def message(self) -> str:
        if self.key.startswith("pid:"):
            return f"released process {self.key[4:]}: {self.how}"
        what = f"container {self.name} ({self.key[:12]})" if self.name else f"container {self.key[:12]}"
        if self.already:
            return (f"{what} was already released by {self.already}: nothing done; "
                    "minerwatch will not pause it again while it lives")
        paused = f"paused by minerwatch at {self.paused_at}" if self.by_agent and self.paused_at else (
            "paused by minerwatch" if self.by_agent else "not paused by minerwatch (--force)")
        return (f"released {what}: {self.how} ({paused}); "
                "minerwatch will not pause it again while it lives")


def who() -> str:
    """The operator: ``SUDO_USER``, else ``USER``, else the user name of the uid; always with the uid."""
    uid = os.getuid()
    name = os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME")
    if not name:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = "?"
    return f"{name} (uid {uid})"


def release(ref: str, records: ResponseRecords, docker: DockerHandle, *,
            freezer: CgroupFreezer | None = None, proc_root: str = "/proc", by: str | None = None,
            force: bool = False) -> Released:
    """Release ``ref``; ReleaseError when there is nothing to release or it fails.

    Without ``force`` only a container minerwatch's records say it paused is touched."""
    by, at = by or who(), now_iso()
    if ref.startswith("pid:"):
        return _release_pid(ref, records, proc_root, by, at)
    found = records.find_paused(ref)
    info, docker_error = None, ""
    try:
        info = docker.inspect_container(ref)
    except ContainerGone:
        info = None
    except (DockerDown, DockerRefused) as exc:
        docker_error = f"docker: {exc}"
    if info is not None and found is not None and found[0] != info.id:
        found = None  # a record for an earlier container of that name: not this one
    record = found[1] if found else (records.paused().get(info.id) if info is not None else None)
    key = info.id if info is not None else found[0] if found else ""
    if not key:
        raise ReleaseError(f"no container {ref!r} to release" + (f" ({docker_error})" if docker_error else ""))
    if record is None and not force:
        earlier = records.released().get(key)
        if earlier is not None:
            return Released(key, info.name if info is not None else "", "nothing done", False, by, at, already=earlier)
        state = "is paused" if info is not None and info.paused else "is not paused"
        raise ReleaseError(
            f"container {ref!r} {state}, and minerwatch did not pause it (no record in {records.paused_path}): "
            "nothing done; --force unpauses it anyway and keeps minerwatch from pausing it again while it lives")
    hows = []
    if record and str(record.get("method", "")).startswith("cgroup-"):
        hows.append(_thaw(record, key, freezer or CgroupFreezer()))
    if info is not None and info.paused:
        try:
            docker.unpause(info.id)
        except (ContainerGone, DockerDown, DockerRefused) as exc:
            raise ReleaseError(f"docker unpause {info.name or key[:12]} failed: {exc}") from None
        hows.append("unpaused")
    elif info is None and record and record.get("method") == "docker":
        raise ReleaseError(f"container {ref!r} was paused through Docker, which cannot be reached: {docker_error}")
    name = info.name if info is not None else str(record.get("name", "")) if record else ""
    records.remove_paused(key)
    records.mark_released(key, by, at)
    out = Released(key, name, ", ".join(hows) or "was not paused", record is not None, by, at,
                   paused_at=str(record.get("at", "")) if record else "")
    log.warning("container_released", container=key[:12], name=name, how=out.how, paused_by_agent=out.by_agent,
                paused_at=record.get("at") if record else None, by=by, at=at)
    return out


def _thaw(record: dict, key: str, freezer: CgroupFreezer) -> str:
    """Thaw the cgroup a record names, after checking it is a freezer cgroup of that container."""
    version = 1 if record.get("method") == "cgroup-v1" else 2
    directory = os.path.realpath(str(record.get("cgroup", "")))
    mount = freezer.mounts.v1_freezer if version == 1 else freezer.mounts.v2
    if mount is None or not directory.startswith(os.path.realpath(mount[0]) + "/") or key not in directory:
        raise ReleaseError(f"recorded cgroup {directory} is not a freezer cgroup of {key[:12]}: not touched")
    target = CgroupTarget(version, directory[len(os.path.realpath(mount[0])):], directory)
    try:
        freezer.thaw(target)
    except (FreezeError, OSError) as exc:
        raise ReleaseError(f"thaw {directory} failed: {exc}") from None
    return f"thawed {target.method} cgroup {target.path}"


def _release_pid(ref: str, records: ResponseRecords, proc_root: str, by: str, at: str) -> Released:
    record = records.paused().get(ref)
    if record is None:
        raise ReleaseError(f"no host process {ref[4:]} stopped by minerwatch")
    pid = int(ref[4:])
    try:
        now = identity.read_identity(proc_root, pid)
    except (identity.Gone, OSError, ValueError):
        now = None
    if now is None or now.start_ticks != record.get("start_ticks"):
        records.remove_paused(ref)
        raise ReleaseError(f"process {pid} is not the one minerwatch stopped (it exited): record removed")
    try:
        pidfd = os.pidfd_open(pid)
        try:
            if identity.read_identity(proc_root, pid).start_ticks != now.start_ticks:
                raise ReleaseError(f"process {pid} exited meanwhile")
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        finally:
            os.close(pidfd)
    except (identity.Gone, OSError) as exc:
        raise ReleaseError(f"SIGCONT to {pid} failed: {exc}") from None
    records.remove_paused(ref)
    log.warning("process_released", pid=pid, by=by, at=at, paused_at=record.get("at"))
    return Released(ref, record.get("name", ""), "continued (SIGCONT)", True, by, at)
