"""Walk watched paths for candidate executables, safely.

Never follows symlinks, never opens FIFOs, sockets or devices, bounded in depth,
count and file size. Only files that are executable, ELF or scripts are hashed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator

import structlog

from agent.collectors.confined import DIR_FLAGS, Refused, open_dir_beneath, open_parent_beneath, open_regular
from agent.collectors.hashing import HashCache, hash_fd
from agent.model import FileSnapshot

log = structlog.get_logger("minerwatch.files")

ELF_MAGIC = b"\x7fELF"
MAX_DEPTH = 8
MAX_FILES = 50_000


def read_head(path: str, n: int = 64) -> bytes:
    """First bytes of a regular file (b"" for anything else), opened by ``confined.open_regular``:
    no symlink followed (``Refused``), a FIFO or device never opened."""
    try:
        fd = open_regular(path)
    except Refused as exc:
        if exc.reason != "not_regular":
            raise
        return b""
    try:
        return os.pread(fd, n, 0)
    finally:
        os.close(fd)


def is_candidate(st: os.stat_result, head: bytes) -> tuple[bool, bool, bool]:
    """(candidate, is_elf, is_script) for a regular file's stat and first bytes."""
    is_elf = head.startswith(ELF_MAGIC)
    is_script = head.startswith(b"#!")
    executable = bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    return (is_elf or is_script or executable), is_elf, is_script


def _open_snapshot(path: str, cache: HashCache, root: str | None, dir_fd: int | None, name: str | None) -> int | None:
    """The one descriptor a snapshot reads (head and hashes), or None (refusal counted in ``cache``)."""
    try:
        if dir_fd is not None and name is not None:
            return open_regular(name, dir_fd=dir_fd)
        if root is None:
            return open_regular(path)
        parent = open_parent_beneath(path, root)
        if parent is None or os.path.basename(path) in ("", ".", ".."):
            cache.count_refused("outside_root")
            if parent is not None:
                os.close(parent)
            return None
        try:
            return open_regular(os.path.basename(path), dir_fd=parent)
        finally:
            os.close(parent)
    except Refused as exc:
        cache.count_refused(exc.reason)
        return None


def snapshot_file(path: str, cache: HashCache, max_bytes: int, *, container_id: str = "", root: str | None = None,
                  st: os.stat_result | None = None, dir_fd: int | None = None,
                  name: str | None = None) -> FileSnapshot | None:
    """A FileSnapshot for a candidate file, or None when it is not one (or vanished).

    The file is opened once (``name`` relative to ``dir_fd`` when given, else ``path``, beneath
    ``root`` when given), by ``confined.open_regular``, and its head, size, mode and hashes all
    come from that one descriptor: nothing swapped in later is read, no device is opened.
    A file whose ``st`` (its lstat) is the content identity of one read before and found not to
    be a candidate is not opened again (``HashCache.is_plain``; a write, chmod or rename changes ctime).
    """
    if st is not None and cache.is_plain(st):
        return None
    try:
        fd = _open_snapshot(path, cache, root, dir_fd, name)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 64, 0)
        candidate, is_elf, is_script = is_candidate(st, head)
        if not candidate:
            if len(head) >= 4 or st.st_size == len(head):  # a short read of a growing file is not kept
                cache.note_plain(st)
            return None
        partial: tuple[str, ...] = ()
        hashes = None
        if st.st_size > max_bytes:
            partial = ("hashes",)
        else:
            try:
                hashes = hash_fd(fd, cache, max_bytes)
            except OSError:  # unreadable: unknown, not clean
                hashes = None
            if hashes is None:
                partial = ("hashes",)
    except OSError:
        return None
    finally:
        os.close(fd)
    return FileSnapshot(path=path, size=st.st_size, mode=st.st_mode, hashes=hashes, is_elf=is_elf,
                        is_script=is_script, container_id=container_id, head=head[:16], partial=partial)


_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def walk_at(top: str, max_depth: int = MAX_DEPTH, max_files: int = MAX_FILES,
            ) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """Regular files under ``top`` as ``(dir_fd, name, path, lstat)``; ``dir_fd`` is valid until the next item.

    Descriptor-relative: ``top`` is opened without following a symlink as its last component,
    and every directory below it is reopened from ``top``'s descriptor one component at a
    time with ``O_NOFOLLOW|O_DIRECTORY`` (``confined.open_dir_beneath``), so a directory
    swapped for a symlink (to ``/``, to ``/dev``) is never entered and no path string is
    resolved again after it was checked. ``O_DIRECTORY`` fails before any device's open.
    """
    try:
        top_fd = os.open(top, DIR_FLAGS | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        stack: list[tuple[tuple[str, ...], int]] = [((), 0)]
        seen = 0
        while stack:
            rel, depth = stack.pop()
            try:
                pfd = open_dir_beneath(top_fd, "/".join(rel))
            except OSError:  # vanished, or became a symlink: not entered
                continue
            try:
                lfd = os.open(".", _LIST_FLAGS, dir_fd=pfd)
            except OSError:
                os.close(pfd)
                continue
            try:
                with os.scandir(lfd) as it:
                    names = [e.name for e in it]
                directory = os.path.join(top, *rel)
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=lfd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if depth < max_depth:
                            stack.append(((*rel, name), depth + 1))
                    elif stat.S_ISREG(st.st_mode):
                        seen += 1
                        if seen > max_files:
                            log.warning("walk_truncated", top=top, max_files=max_files)
                            return
                        yield lfd, name, os.path.join(directory, name), st
            finally:
                os.close(lfd)
                os.close(pfd)
    finally:
        os.close(top_fd)


def walk(top: str, max_depth: int = MAX_DEPTH, max_files: int = MAX_FILES) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``top`` (lstat results), without following symlinks or crossing into special files."""
    for _, _, path, st in walk_at(top, max_depth, max_files):
        yield path, st


def scan_paths(paths: Iterable[str], cache: HashCache, max_bytes: int) -> Iterator[FileSnapshot]:
    """Snapshots of the candidate files under each host path, each opened relative to its walked directory."""
    for top in paths:
        for dir_fd, name, path, st in walk_at(top):
            snap = snapshot_file(path, cache, max_bytes, st=st, dir_fd=dir_fd, name=name)
            if snap is not None:
                yield snap
