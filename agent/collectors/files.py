"""Walk watched paths for candidate executables, safely.

Never follows symlinks, never opens FIFOs, sockets or devices, bounded in depth,
count and file size. Only files that are executable, ELF or scripts are hashed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator

import structlog

from agent.collectors.confined import Refused, open_regular
from agent.collectors.hashing import HashCache, hash_path
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
        return os.read(fd, n)
    finally:
        os.close(fd)


def is_candidate(st: os.stat_result, head: bytes) -> tuple[bool, bool, bool]:
    """(candidate, is_elf, is_script) for a regular file's stat and first bytes."""
    is_elf = head.startswith(ELF_MAGIC)
    is_script = head.startswith(b"#!")
    executable = bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    return (is_elf or is_script or executable), is_elf, is_script


def snapshot_file(path: str, cache: HashCache, max_bytes: int, *, container_id: str = "", root: str | None = None,
                  st: os.stat_result | None = None) -> FileSnapshot | None:
    """A FileSnapshot for a candidate file, or None when it is not one (or vanished)."""
    try:
        st = st or os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = read_head(path)
    except OSError:
        return None
    candidate, is_elf, is_script = is_candidate(st, head)
    if not candidate:
        return None
    partial: tuple[str, ...] = ()
    hashes = None
    if st.st_size > max_bytes:
        partial = ("hashes",)
    else:
        try:
            hashes = hash_path(path, cache, max_bytes, root=root)
        except OSError:  # removed or made unreadable since the lstat: unknown, not clean
            hashes = None
        if hashes is None:
            partial = ("hashes",)
    return FileSnapshot(path=path, size=st.st_size, mode=st.st_mode, hashes=hashes, is_elf=is_elf,
                        is_script=is_script, container_id=container_id, head=head[:16], partial=partial)


def walk(top: str, max_depth: int = MAX_DEPTH, max_files: int = MAX_FILES) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``top`` (lstat results), without following symlinks or crossing into special files."""
    stack = [(top, 0)]
    seen = 0
    while stack:
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth < max_depth:
                    stack.append((entry.path, depth + 1))
            elif stat.S_ISREG(st.st_mode):
                seen += 1
                if seen > max_files:
                    log.warning("walk_truncated", top=top, max_files=max_files)
                    return
                yield entry.path, st


def scan_paths(paths: Iterable[str], cache: HashCache, max_bytes: int) -> Iterator[FileSnapshot]:
    for top in paths:
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for path, st in walk(top):
            snap = snapshot_file(path, cache, max_bytes, st=st)
            if snap is not None:
                yield snap
