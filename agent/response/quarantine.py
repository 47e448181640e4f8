"""Evidence kept: a copy of the offending executable, and what was known about it.

``<state_dir>/quarantine/`` (0700) holds ``<sha256>`` (the bytes, 0600, never executable) and
``<sha256>.json`` (0600): the alert, the process tree (ancestors and descendants: pid, ppid,
name, cmdline, exe) and the connections, one entry per sighting (the latest 20 are kept).
The executable is read through ``/proc/PID/exe`` (a deleted file or one inside a container
is still there); nothing in the container is changed. Size is bounded by ``max_bytes``.

Bounded as a whole (``Limits``): bytes and files in all, and per container (the host's processes
and files are one more bucket), counted by blocks allocated; one copy per executable (its
SHA-256: a copy already kept is not made again, its record gets the sighting); a copy is only
made when the file system keeps ``min_free`` bytes free after it. Copies are sparse: only the
source's data extents (``SEEK_DATA``/``SEEK_HOLE``) are written, holes stay holes. What is not
kept raises ``QuarantineError`` saying why ("quarantine full (...)"), for the alert's response.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from agent.collectors.confined import open_beneath, open_regular
from agent.collectors.procparse import split_cmdline, strip_deleted
from agent.collectors.procread import parse_stat, read_bounded, read_once, readlink
from agent.model import Finding
from agent.response import sparse

_SHA = frozenset("0123456789abcdef")
MIB = 1 << 20

CHUNK = 1 << 20
MAX_SIGHTINGS = 20
MAX_TREE = 256  # processes listed in a tree


class QuarantineError(Exception):
    """The evidence could not be kept; the message says why."""


@dataclass(frozen=True, slots=True)
class Kept:
    sha256: str
    path: str  # the copy
    size: int
    source: str  # where it was read from
    matches_finding: bool  # the copy's SHA-256 is the one in the finding (False: changed since, or unknown)


@dataclass(frozen=True, slots=True)
class Limits:
    """What the quarantine may hold (bytes are blocks allocated, not apparent sizes)."""

    total_bytes: int = 512 * MIB
    total_files: int = 100
    container_bytes: int = 128 * MIB
    container_files: int = 10
    min_free: int = 256 * MIB  # bytes the file system keeps free after a copy

    @classmethod
    def of(cls, response) -> "Limits":
        """From the ``[response]`` section of the config."""
        return cls(response.quarantine_max_mb * MIB, response.quarantine_max_files,
                   response.quarantine_container_max_mb * MIB, response.quarantine_container_max_files,
                   response.quarantine_min_free_mb * MIB)


def _owner(finding: Finding) -> str:
    """Whose budget a copy counts against: the container's id, or "host"."""
    for cid in (finding.container.id if finding.container is not None else "",
                finding.process.container_id if finding.process is not None else "",
                finding.file.container_id if finding.file is not None else ""):
        if cid:
            return cid
    return "host"


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class Quarantine:
    def __init__(self, state_dir: str | os.PathLike[str], max_bytes: int, *, proc_root: str = "/proc",
                 limits: Limits = Limits()) -> None:
        self.dir = Path(state_dir) / "quarantine"
        self.max_bytes = max_bytes
        self.proc_root = proc_root
        self.limits = limits
        self._owners: dict[str, str] = {}  # sha256 -> owner, from the records (read once each)

    def keep(self, finding: Finding, alert: dict) -> Kept | None:
        """Copy the finding's executable (process) or file and write its record; None when it has neither."""
        if finding.process is not None and finding.process.exe:
            pid = finding.process.pid
            source = f"{self.proc_root}/{pid}/exe"
            fd = self._open(lambda: open_regular(source, follow_symlinks=True), source)  # the one link followed
            expected = finding.process.hashes.sha256 if finding.process.hashes else ""
            extra = {"process_tree": process_tree(self.proc_root, pid),
                     "connections": [_conn(c) for c in finding.process.connections]}
        elif finding.file is not None:
            upper = finding.container.upper_dir if finding.container is not None else ""
            if finding.file.container_id and not upper:
                return None  # a container file whose layer we do not know
            source = f"{upper}{finding.file.path}" if upper else finding.file.path
            opener = (lambda: open_beneath(upper, finding.file.path)) if upper else (lambda: open_regular(finding.file.path))
            fd = self._open(opener, source)
            expected = finding.file.hashes.sha256 if finding.file.hashes else ""
            extra = {}
        else:
            return None
        owner = _owner(finding)
        try:
            if expected and len(expected) == 64 and (self.dir / expected).is_file():
                digest, size = expected, os.fstat(fd).st_size  # kept already: one copy per executable
            else:
                digest, size = self._copy(fd, source, self._room(fd, owner))
        finally:
            os.close(fd)
        kept = Kept(digest, str(self.dir / digest), size, source, digest == expected)
        self._record(kept, {"alert": alert, **extra}, owner)
        return kept

    def usage(self) -> dict[str, tuple[int, int]]:
        """``owner -> (bytes allocated, files)`` of the copies kept, ``"*"`` for all of them."""
        out: dict[str, tuple[int, int]] = {"*": (0, 0)}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        for entry in entries:
            if len(entry.name) != 64 or not _SHA.issuperset(entry.name):
                continue
            try:
                used = entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:  # removed meanwhile
                continue
            owner = self._owners.get(entry.name) or self._read_owner(entry.name)
            for key in ("*", owner):
                b, n = out.get(key, (0, 0))
                out[key] = (b + used, n + 1)
        return out

    def _read_owner(self, digest: str) -> str:
        try:
            owner = json.loads((self.dir / f"{digest}.json").read_text(encoding="utf-8")).get("owner") or "host"
        except (OSError, ValueError, AttributeError):
            owner = "host"
        self._owners[digest] = str(owner)
        return self._owners[digest]

    def _room(self, fd: int, owner: str) -> int:
        """Bytes the copy of ``fd`` may allocate; QuarantineError("quarantine full (...)") when it may not be made."""
        need = sparse.allocated(fd)
        lim, used = self.limits, self.usage()
        (all_b, all_n), (own_b, own_n) = used["*"], used.get(owner, (0, 0))
        who = "the host" if owner == "host" else f"container {owner[:12]}"
        if all_n >= lim.total_files or own_n >= lim.container_files:
            raise QuarantineError(f"quarantine full ({all_n} of {lim.total_files} files kept, "
                                  f"{own_n} of {lim.container_files} for {who})")
        room = min(lim.total_bytes - all_b, lim.container_bytes - own_b)
        if need > room:
            raise QuarantineError(f"quarantine full ({_mib(all_b)} of {_mib(lim.total_bytes)} kept, "
                                  f"{_mib(own_b)} of {_mib(lim.container_bytes)} for {who}; "
                                  f"this copy needs {_mib(need)})")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        vfs = os.statvfs(self.dir)
        free = vfs.f_bavail * vfs.f_frsize
        if free - need < lim.min_free:
            raise QuarantineError(f"quarantine full (file system of {self.dir} has {_mib(free)} free, "
                                  f"{_mib(lim.min_free)} are kept free; this copy needs {_mib(need)})")
        return min(room, free - lim.min_free)

    def _open(self, opener, source: str) -> int:
        try:
            fd = opener()
            st = os.fstat(fd)
        except OSError as exc:
            raise QuarantineError(f"cannot open {source}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise QuarantineError(f"{source} is not a regular file")
        if st.st_size > self.max_bytes:
            os.close(fd)
            raise QuarantineError(f"{source} is {st.st_size} bytes, over watch.max_file_mb")
        return fd

    def _copy(self, src: int, source: str, room: int) -> tuple[str, int]:
        """Copy ``src`` into the quarantine, sparse, verified, named by its SHA-256; at most ``room``
        bytes of data are written."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            h, size, data = hashlib.sha256(), 0, 0
            try:
                for chunk, is_data in sparse.extents(src):
                    size += len(chunk) if is_data else chunk
                    if size > self.max_bytes:
                        raise QuarantineError(f"{source} grew over watch.max_file_mb while it was copied")
                    if not is_data:  # a hole: hashed as the zeros it reads as, never written
                        sparse.hash_zeros(h, chunk)
                        continue
                    data += len(chunk)
                    if data > room:
                        raise QuarantineError(f"quarantine full ({source} grew while it was copied, "
                                              f"over the {_mib(room)} left)")
                    h.update(chunk)
                    os.pwrite(out, chunk, size - len(chunk))
                os.ftruncate(out, size)
                os.fchmod(out, 0o600)
                os.fsync(out)
            except OSError as exc:
                raise QuarantineError(f"cannot copy {source}: {exc.strerror or exc}") from None
            finally:
                os.close(out)
            digest = h.hexdigest()
            if _sha256_of(tmp) != digest:
                raise QuarantineError(f"the copy of {source} does not verify")
            os.replace(tmp, self.dir / digest)
            return digest, size
        finally:
            tmp.unlink(missing_ok=True)

    def _record(self, kept: Kept, sighting: dict, owner: str = "host") -> None:
        path = self.dir / f"{kept.sha256}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            sightings = data["sightings"] if isinstance(data.get("sightings"), list) else []
        except (OSError, ValueError, AttributeError):  # first sighting, or a damaged record: start again
            sightings = []
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        sightings = [*sightings, {"at": now, "source": kept.source, "matches_finding": kept.matches_finding,
                                  **sighting}][-MAX_SIGHTINGS:]
        owner = self._owners.setdefault(kept.sha256, owner)  # the first owner keeps it (its budget)
        data = {"sha256": kept.sha256, "size": kept.size, "owner": owner, "sightings": sightings}
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.json")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False, default=str)
        os.replace(tmp, path)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    fd = open_regular(path)  # our own copy, opened by the same rules: never a device swapped in
    try:
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _conn(c) -> dict:
    return {"local": f"{c.local_ip}:{c.local_port}", "remote": f"{c.remote_ip}:{c.remote_port}", "state": c.state}


def describe(proc_root: str, pid: int) -> dict | None:
    """pid, ppid, name, cmdline and exe of one process (None when it is gone)."""
    base = f"{proc_root}/{pid}"
    try:
        st = parse_stat(read_once(f"{base}/stat"))
    except (OSError, ValueError):
        return None
    out = {"pid": pid, "ppid": st.ppid, "name": st.comm, "cmdline": [], "exe": ""}
    try:
        out["cmdline"] = split_cmdline(read_bounded(f"{base}/cmdline", limit=64 << 10))
        out["exe"] = strip_deleted(readlink(f"{base}/exe"))[0]  # as in the alert; no surrogates in the JSON
    except OSError:  # a kernel thread, or it exited meanwhile: what we have is kept
        pass
    return out


def children(proc_root: str, pid: int) -> list[int]:
    """Direct children, from ``/proc/PID/task/*/children``."""
    out: list[int] = []
    try:
        tids = os.listdir(f"{proc_root}/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out.extend(int(c) for c in read_bounded(f"{proc_root}/{pid}/task/{tid}/children").split())
        except (OSError, ValueError):  # thread gone; children of the others still count
            continue
    return sorted(set(out))


def process_tree(proc_root: str, pid: int) -> dict:
    """``{"process", "ancestors" (nearest first), "descendants"}``, bounded."""
    ancestors, cur = [], describe(proc_root, pid)
    me = cur
    while cur is not None and cur["ppid"] > 0 and len(ancestors) < 64:
        cur = describe(proc_root, cur["ppid"])
        if cur is not None:
            ancestors.append(cur)
    descendants, queue = [], children(proc_root, pid)
    while queue and len(descendants) < MAX_TREE:
        child = queue.pop(0)
        if (d := describe(proc_root, child)) is not None:
            descendants.append(d)
            queue.extend(children(proc_root, child))
    return {"process": me, "ancestors": ancestors, "descendants": descendants}
