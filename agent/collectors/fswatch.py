"""Watch the configured paths and every running container's writable layer for new files.

One watchdog observer (the inotify backend) owns every watch. Its callbacks only turn a
file event into a ``FileEvent`` and put it on the daemon's bounded ``EventQueue`` (never
blocking; a full queue drops and counts); hashing and YARA happen in the worker
(``agent.collectors.file_inspector.FileInspector``). Only file events are reported: creation, a move into
place and the close after writing (``IN_CLOSE_WRITE``); never directories.

When a watch is added, it is made live first and then the files already under it are
enqueued once (a bounded walk that never follows symlinks), so a payload written before the
watch existed, or while it was being added, is not missed; the worker's debounce absorbs
the rare duplicate. A watched path that does not exist yet stays pending and is retried by
``refresh()``, which also re-adds a watch whose directory was deleted or replaced. A watch
that lost events to a full queue is walked again by ``refresh()`` (``agent.collectors.rescans``),
so a payload whose events were dropped in a storm is still inspected.

Watches never leave their tree (``agent.collectors.inotify``): each directory is opened from
the root's descriptor without following symlinks, checked to be a directory on the root's
device and watched through its descriptor (``IN_ONLYDIR``), so a directory swapped for a
symlink to ``/`` is refused instead of walked. Watches are capped per layer
(``max_layer_watches``) and in all (``max_watches``, by default three quarters of
``fs.inotify.max_user_watches``); refusals are counted in ``stats()`` as
``watch_refused_<reason>``.

Threads: one inotify reader (``minerwatch-inotify``), which also adds the watches of new
sub-directories. Failing to add a watch (``fs.inotify.max_user_watches``, a vanished
directory) is logged and counted, never raised.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from agent.collectors import files
from agent.collectors.confined import Refused
from agent.collectors.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_ISDIR, IN_MOVED_TO, Inotify, Reader, Rel, Tree
from agent.collectors.procread import read_int
from agent.collectors.rescans import Key, Rescans, Root
from agent.events import EventQueue, FileEvent

log = structlog.get_logger("minerwatch.fswatch")

STOP_TIMEOUT_S = 2.0
MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
MAX_LAYER_WATCHES = 16_384


@dataclass
class _Entry:
    """One wanted watch: a host path (container_id "") or a container's writable layer."""

    path: str
    container_id: str = ""
    root: str = ""
    watch: Tree | None = None  # None: pending (not live)
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the directory when the watch was added

    @property
    def key(self) -> Key:
        """Its key in ``FileWatcher._entries``."""
        return ("layer", self.container_id) if self.container_id else ("host", self.path)


class FileWatcher:
    """Owns the observer and the wanted watches; all public methods are thread-safe."""

    def __init__(self, events: EventQueue, *, max_walk_files: int = files.MAX_FILES, max_watches: int | None = None,
                 max_layer_watches: int = MAX_LAYER_WATCHES) -> None:
        self._events = events
        self._max_walk_files = max_walk_files
        self._max_watches = max_watches
        self._max_layer_watches = max_layer_watches
        self._lock = threading.RLock()  # guards _observer, _inotify and _entries
        self._observer: Reader | None = None
        self._inotify: Inotify | None = None
        self._by_tree: dict[int, _Entry] = {}
        self._entries: dict[tuple[str, str], _Entry] = {}  # ("host", path) or ("layer", container_id)
        self._count_lock = threading.Lock()  # guards counters (taken in the observer thread: kept short)
        self.counters: Counter[str] = Counter()
        self._rescans = Rescans(events, max_walk_files)  # walks of watches that dropped events

    # ------------------------------------------------------------------ public API

    def watch_host_paths(self, paths: Iterable[str]) -> None:
        """Watch exactly these host directories, recursively (missing ones stay pending until they appear).

        Called again (a config reload), it adds the new paths and drops those no longer listed.
        """
        wanted = {("host", p): p for p in (os.path.abspath(p) for p in paths)}
        added = []
        with self._lock:
            for key in [k for k in self._entries if k[0] == "host" and k not in wanted]:
                self._deactivate(self._entries.pop(key))
            for key, path in wanted.items():
                if key not in self._entries:
                    self._entries[key] = entry = _Entry(path)
                    added.append(entry)
            walks = [e for e in added if self._activate(e)]
        self._walk_all(walks)

    def add_layer(self, container_id: str, upper_dir: str) -> bool:
        """Watch a container's writable layer (overlay2 ``UpperDir``); True when the watch is live."""
        if not container_id or not upper_dir:
            return False
        upper_dir = os.path.abspath(upper_dir)
        key = ("layer", container_id)
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.path == upper_dir:
                return old.watch is not None
            if old is not None:
                self._deactivate(old)
            self._entries[key] = entry = _Entry(upper_dir, container_id, upper_dir)
            live = self._activate(entry)
        if live:
            self._walk_all([entry])
        return live

    def remove_layer(self, container_id: str) -> None:
        """Stop watching a container's writable layer (the container died or was removed)."""
        with self._lock:
            entry = self._entries.pop(("layer", container_id), None)
            if entry is not None:
                self._deactivate(entry)
                self._count("layers_removed")

    def refresh(self) -> None:
        """Retry pending watches and re-add those whose directory was deleted or replaced (call every interval)."""
        walks = []
        with self._lock:
            if self._observer is None:
                return
            if not self._observer.is_alive():
                log.error("observer_died", watches=len(self._entries))
                self._count("observer_restarts")
                self.stop()
                self.start()
                return
            for entry in self._entries.values():
                if entry.watch is not None and (entry.watch.lost or self._identity(entry.path) != entry.identity):
                    log.info("watch_lost", path=entry.path, container_id=entry.container_id)
                    self._count("watches_lost")
                    self._deactivate(entry)
                if entry.watch is None and self._activate(entry):
                    walks.append(entry)
            live = {k: Root(e.path, e.container_id, e.root) for k, e in self._entries.items()
                    if e.watch is not None and e not in walks}
            for key in self._rescans.begin(live):
                self._count("rescans")
                log.info("watch_rescan", path=live[key].path, container_id=live[key].container_id,
                         reason="events dropped")
        self._walk_all(walks)
        self._count("queued", self._rescans.advance())

    def start(self) -> bool:
        """Start the inotify reader and make every wanted watch live; False (logged, counted) when inotify is unavailable."""
        with self._lock:
            if self._observer is not None:
                return True
            try:
                ino = Inotify(self._max_watches or _default_max_watches())
            except OSError as exc:  # EMFILE: fs.inotify.max_user_instances reached
                self._count("watch_errors")
                log.error("inotify_unavailable", error=str(exc))
                return False
            reader = Reader(ino, self._dispatch, self._overflow)
            try:
                reader.start()
            except RuntimeError as exc:  # could not start a thread
                ino.close()
                self._count("watch_errors")
                log.error("observer_start_failed", error=str(exc))
                return False
            self._observer, self._inotify = reader, ino
            walks = [e for e in self._entries.values() if self._activate(e)]
        self._walk_all(walks)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every watch and the reader thread, joining within ``timeout`` seconds; wanted watches are kept for a restart."""
        with self._lock:
            observer, self._observer = self._observer, None
            ino, self._inotify = self._inotify, None
            for entry in self._entries.values():
                entry.watch = None
            self._by_tree.clear()
        if observer is None:
            return
        observer.stop()
        observer.join(timeout)
        if observer.is_alive():
            log.warning("observer_stop_timeout", timeout=timeout)
        else:
            ino.close()

    def is_alive(self) -> bool:
        """True while the observer thread runs (for health checks)."""
        with self._lock:
            return self._observer is not None and self._observer.is_alive()

    def stats(self) -> dict[str, int]:
        """Counters for the metrics: live/pending watches, layers, queued, dropped, initial files, rescans, errors."""
        with self._lock:
            live = sum(1 for e in self._entries.values() if e.watch is not None)
            out = {
                "watches": live,
                "pending": len(self._entries) - live,
                "layers": sum(1 for k in self._entries if k[0] == "layer"),
            }
        with self._count_lock:
            out.update(self.counters)
        with self._lock:
            out["inotify_watches"] = len(self._inotify.owners) if self._inotify is not None else 0
        for key in ("queued", "dropped", "initial", "watch_errors", "rescans", "walks_resumed", "watch_refused_symlink",
                    "watch_refused_device", "watch_refused_tree_cap", "watch_refused_total_cap"):
            out.setdefault(key, 0)
        try:
            out["max_user_watches"] = read_int(MAX_USER_WATCHES)
        except (OSError, ValueError):  # not Linux, or an odd /proc: unknown
            out["max_user_watches"] = 0
        return out

    # ------------------------------------------------------------------ internals

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[key] += n

    def _offer(self, event: FileEvent, key: Key) -> None:
        if self._events.put(event):
            self._count("queued")
        else:
            self._count("dropped")
            self._rescans.note_drop(key)

    @staticmethod
    def _identity(path: str) -> tuple[int, int]:
        try:
            st = os.lstat(path)
        except OSError:
            return (0, 0)
        return (st.st_dev, st.st_ino)

    def _activate(self, entry: _Entry) -> bool:
        """Schedule the watch for ``entry`` on the running observer (lock held); True when it is live."""
        if self._observer is None or entry.watch is not None:
            return False
        try:
            st = os.lstat(entry.path)
        except FileNotFoundError:
            return False  # pending: retried by refresh()
        except OSError as exc:
            self._count("watch_errors")
            log.warning("watch_failed", path=entry.path, error=str(exc))
            return False
        if not stat.S_ISDIR(st.st_mode):
            # A symlink is never followed, also not as a watch root (same rule as the sweep's walk).
            self._count("watch_refused")
            log.warning("watch_refused", path=entry.path, reason="symlink" if stat.S_ISLNK(st.st_mode) else "not_a_directory")
            return False
        cap = self._max_layer_watches if entry.container_id else self._inotify.max_watches
        try:
            tree = Tree(self._inotify, entry.path, cap, self._count)
        except (OSError, Refused) as exc:  # replaced by a symlink or removed since the lstat
            self._count("watch_errors")
            log.warning("watch_failed", path=entry.path, container_id=entry.container_id, error=str(exc))
            return False
        if tree.identity != (st.st_dev, st.st_ino) or not tree.add():
            tree.close()
            self._count("watch_errors")
            log.warning("watch_failed", path=entry.path, container_id=entry.container_id,
                        hint="raise fs.inotify.max_user_watches")
            return False
        entry.watch = tree
        self._by_tree[id(tree)] = entry
        entry.identity = (st.st_dev, st.st_ino)
        self._count("watches_added")
        return True

    def _deactivate(self, entry: _Entry) -> None:
        tree, entry.watch = entry.watch, None
        if tree is not None:
            self._by_tree.pop(id(tree), None)
            tree.close()

    def _dispatch(self, tree: Tree, rel: Rel, mask: int, name: str) -> None:
        """In the reader thread: a file event becomes a FileEvent; a new directory is watched (and its files offered)."""
        with self._lock:
            entry = self._by_tree.get(id(tree))
            if entry is None or entry.watch is not tree:
                return
            added = tree.add((*rel, name)) if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) else []
            found = [(r, n) for r in added for n in tree.files_in(r)]
        if not mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE):
            found.append((rel, name))
        for r, n in found:
            self._offer(FileEvent(os.path.join(tree.path, *r, n), entry.container_id, entry.root), entry.key)

    def _overflow(self) -> None:
        """The kernel's event queue overflowed: every watch may have lost events, so all are walked again."""
        self._count("dropped")
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            self._rescans.note_drop(key)

    def _walk_all(self, entries: list[_Entry]) -> None:
        """Enqueue the files already under newly live watches (outside the lock: it may take a while)."""
        for entry in entries:
            n = 0
            walk = files.walk(entry.path, max_files=self._max_walk_files)
            for path, st in walk:
                if st.st_size == 0:
                    continue  # nothing to detect yet; the close after writing will report it
                if not self._events.put(FileEvent(path, entry.container_id, entry.root)):
                    # Full: the rest of this walk goes in as the queue drains (each refresh), from here.
                    self._rescans.resume(entry.key, Root(entry.path, entry.container_id, entry.root), walk, (path, st))
                    self._count("walks_resumed")
                    break
                n += 1
            self._count("queued", n)
            self._count("initial", n)
            log.debug("watch_added", path=entry.path, container_id=entry.container_id, existing=n)


def _default_max_watches() -> int:
    """Three quarters of ``fs.inotify.max_user_watches``: the rest is left to everyone else running as root."""
    try:
        return max(1, read_int(MAX_USER_WATCHES) * 3 // 4)
    except (OSError, ValueError):
        return 65_536
