"""Inspect the files the watcher reported: hashes and YARA, safely, once per file version.

Rules (the watcher's callbacks only enqueue; everything that touches file content is here):

* the file is looked up with ``lstat`` relative to its already-opened parent directory:
  symlinks are never followed, FIFOs, sockets and devices are never opened;
* for a container's writable layer (``event.root``), the parent directory is resolved with
  ``realpath`` and must stay under the layer; it is then opened from the layer down without
  following any symlink, and every later open goes through that pinned directory
  (``/proc/self/fd/N/name``), so a directory swapped for a symlink meanwhile cannot lead
  out of the container;
* only candidates (ELF, script or executable bit) are hashed and YARA-scanned; a file
  larger than ``max_bytes`` is reported with ``partial=("hashes",)`` and not read;
* a file written in several chunks fires several events: each (path, inode, size, mtime)
  is inspected once (a small LRU).

The snapshot's ``path`` is the path as the container sees it when the event comes from a
writable layer (``<upper>/tmp/x`` -> ``/tmp/x``, with ``container_id`` set): that is what
the alert's ``file.path`` and the finding id need. The host path stays in the event.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections import Counter, OrderedDict

import structlog

from agent.collectors import files
from agent.collectors.confined import DIR_FLAGS, Refused, open_parent_beneath
from agent.collectors.hashing import HashCache
from agent.collectors.yarascan import YaraScanner
from agent.events import FileEvent
from agent.model import FileSnapshot

log = structlog.get_logger("minerwatch.file_worker")

RECENT_MAX = 4096  # debounce keys kept
_BAD_NAMES = ("", ".", "..")

DebounceKey = tuple[str, int, int, int, int]


def container_path(path: str, root: str) -> str | None:
    """``path`` as seen inside the container whose writable layer is ``root``; None when it is not under it."""
    root = root.rstrip("/") or "/"
    if path == root:
        return "/"
    if root == "/":
        return path
    if not path.startswith(root + "/"):
        return None
    return path[len(root):]


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "not_regular"  # FIFO, socket, character or block device


class FileInspector:
    """Turns a FileEvent into a FileSnapshot with hashes and YARA hits; owned by one worker thread."""

    def __init__(self, hash_cache: HashCache, yara_scanner: YaraScanner | None, max_bytes: int, *,
                 recent_max: int = RECENT_MAX) -> None:
        self.hash_cache = hash_cache
        self.yara_scanner = yara_scanner  # swapped by the owner on a signature reload
        self.max_bytes = max_bytes
        self._recent: OrderedDict[DebounceKey, None] = OrderedDict()
        self._recent_max = recent_max
        self.counters: Counter[str] = Counter()

    def inspect(self, event: FileEvent) -> FileSnapshot | None:
        """A snapshot of the candidate file behind ``event``, or None (not a candidate, refused, seen, vanished)."""
        path = os.path.abspath(event.path)
        shown = path
        if event.root:
            shown = container_path(path, os.path.abspath(event.root))
            if shown is None:
                return self._refuse("outside_root", path)
        name = os.path.basename(path)
        if name in _BAD_NAMES:
            return self._refuse("outside_root", path)
        try:
            dir_fd = self._open_parent(path, event.root)
        except Refused as exc:
            return self._refuse(exc.reason, path)
        except FileNotFoundError:
            self.counters["vanished"] += 1
            return None
        except OSError as exc:
            return self._failed(path, exc)
        if dir_fd is None:
            return self._refuse("outside_root", path)
        try:
            return self._inspect_in(dir_fd, name, path, shown, event.container_id)
        finally:
            os.close(dir_fd)

    def stats(self) -> dict[str, int]:
        """Counters for the metrics: inspected, snapshots, debounced, refused_<reason>, vanished, errors..."""
        return dict(self.counters)

    # ------------------------------------------------------------------ internals

    def _open_parent(self, path: str, root: str) -> int | None:
        """A descriptor of the file's directory (O_PATH); None when it resolves outside ``root``."""
        if not root:
            return os.open(os.path.dirname(path) or "/", DIR_FLAGS)
        return open_parent_beneath(path, root)

    def _inspect_in(self, dir_fd: int, name: str, path: str, shown: str, container_id: str) -> FileSnapshot | None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self.counters["vanished"] += 1
            return None
        except OSError as exc:
            return self._failed(path, exc)
        if not stat.S_ISREG(st.st_mode):
            return self._refuse(_kind(st.st_mode), path)
        if st.st_size == 0:
            self.counters["empty"] += 1
            return None
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # ctime: mtime can be set back
        if key in self._recent:
            self._recent.move_to_end(key)
            self.counters["debounced"] += 1
            return None
        self._recent[key] = None
        while len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        self.counters["inspected"] += 1

        pinned = f"/proc/self/fd/{dir_fd}/{name}"  # every open below goes through the verified directory
        try:
            snap = files.snapshot_file(pinned, self.hash_cache, self.max_bytes, container_id=container_id, st=st,
                                       dir_fd=dir_fd, name=name)
        except FileNotFoundError:
            self.counters["vanished"] += 1
            return None
        except Refused as exc:  # became a symlink or a special file after the lstat
            return self._refuse(exc.reason, path)
        except OSError as exc:
            return self._failed(path, exc)
        if snap is None:
            self.counters["not_candidate"] += 1
            return None
        if snap.hashes is None:
            self.counters["too_large" if st.st_size > self.max_bytes else "unhashed"] += 1
        elif self.yara_scanner is not None:
            snap = dataclasses.replace(snap, yara=self.yara_scanner.scan_file(pinned))
        self.counters["snapshots"] += 1
        return dataclasses.replace(snap, path=shown)

    def _refuse(self, reason: str, path: str) -> None:
        self.counters[f"refused_{reason}"] += 1
        log.debug("file_refused", path=path, reason=reason)
        return None

    def _failed(self, path: str, exc: OSError) -> None:
        self.counters["errors"] += 1
        log.warning("file_inspect_failed", path=path, error=str(exc))
        return None
