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

Threads: the observer (dispatch), one inotify reader, and one emitter per watch (watchdog's
design). Failing to add a watch (``fs.inotify.max_user_watches``, a vanished directory) is
logged and counted, never raised. Note that watchdog silently skips sub-directories it
cannot watch once the limit is reached; ``stats()`` reports the limit for the metrics.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from agent.collectors import files
from agent.collectors.procread import read_int
from agent.collectors.rescans import Key, Rescans, Root
from agent.events import EventQueue, FileEvent

log = structlog.get_logger("minerwatch.fswatch")

# Only these reach the handler; the inotify mask is narrowed to match (no IN_MODIFY/IN_OPEN
# noise, and the worker's own reads never trigger events).
WATCHED_EVENTS = [FileCreatedEvent, FileMovedEvent, FileClosedEvent]
STOP_TIMEOUT_S = 2.0
MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"


class _Enqueue(FileSystemEventHandler):
    """Runs in the observer thread: turns file events under one watch into FileEvents, nothing else."""

    def __init__(self, watcher: FileWatcher, key: Key, container_id: str, root: str) -> None:
        self._watcher = watcher
        self._key = key
        self._container_id = container_id
        self._root = root

    def _offer(self, path: bytes | str) -> None:
        self._watcher._offer(FileEvent(os.fsdecode(path), self._container_id, self._root), self._key)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory and event.dest_path:
            self._offer(event.dest_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(event.src_path)


@dataclass
class _Entry:
    """One wanted watch: a host path (container_id "") or a container's writable layer."""

    path: str
    container_id: str = ""
    root: str = ""
    watch: ObservedWatch | None = None  # None: pending (not live)
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the directory when the watch was added

    @property
    def key(self) -> Key:
        """Its key in ``FileWatcher._entries``."""
        return ("layer", self.container_id) if self.container_id else ("host", self.path)


class FileWatcher:
    """Owns the observer and the wanted watches; all public methods are thread-safe."""

    def __init__(self, events: EventQueue, *, max_walk_files: int = files.MAX_FILES) -> None:
        self._events = events
        self._max_walk_files = max_walk_files
        self._lock = threading.RLock()  # guards _observer and _entries
        self._observer: InotifyObserver | None = None
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
            alive = {e.watch for e in self._observer.emitters if e.is_alive()}
            for entry in self._entries.values():
                if entry.watch is not None and (entry.watch not in alive or self._identity(entry.path) != entry.identity):
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
        """Start the observer and make every wanted watch live; False (logged, counted) when inotify is unavailable."""
        with self._lock:
            if self._observer is not None:
                return True
            try:
                observer = InotifyObserver()  # its inotify reader thread starts here
            except OSError as exc:  # EMFILE: fs.inotify.max_user_instances reached
                self._count("watch_errors")
                log.error("inotify_unavailable", error=str(exc))
                return False
            try:
                observer.start()
            except (OSError, RuntimeError) as exc:  # could not start a thread: undo what __init__ started
                observer.stop()
                self._count("watch_errors")
                log.error("observer_start_failed", error=str(exc))
                return False
            self._observer = observer
            walks = [e for e in self._entries.values() if self._activate(e)]
        self._walk_all(walks)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every watch and the observer's threads, joining within ``timeout`` seconds; wanted watches are kept for a restart."""
        with self._lock:
            observer, self._observer = self._observer, None
            for entry in self._entries.values():
                entry.watch = None
        if observer is None:
            return
        observer.stop()
        observer.join(timeout)
        if observer.is_alive():
            log.warning("observer_stop_timeout", timeout=timeout)

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
        for key in ("queued", "dropped", "initial", "watch_errors", "rescans"):
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
        handler = _Enqueue(self, entry.key, entry.container_id, entry.root)
        try:
            entry.watch = self._observer.schedule(handler, entry.path, recursive=True, event_filter=WATCHED_EVENTS)
        except OSError as exc:  # ENOSPC: fs.inotify.max_user_watches; ENOENT: removed meanwhile
            self._count("watch_errors")
            hint = "raise fs.inotify.max_user_watches" if exc.errno == errno.ENOSPC else ""
            log.warning("watch_failed", path=entry.path, container_id=entry.container_id, error=str(exc), hint=hint)
            return False
        entry.identity = (st.st_dev, st.st_ino)
        self._count("watches_added")
        return True

    def _deactivate(self, entry: _Entry) -> None:
        watch, entry.watch = entry.watch, None
        if watch is None or self._observer is None:
            return
        try:
            self._observer.unschedule(watch)
        except KeyError:  # already gone from the observer (it stopped itself): nothing left to undo
            pass

    def _walk_all(self, entries: list[_Entry]) -> None:
        """Enqueue the files already under newly live watches (outside the lock: it may take a while)."""
        for entry in entries:
            n = 0
            for path, st in files.walk(entry.path, max_files=self._max_walk_files):
                if st.st_size == 0:
                    continue  # nothing to detect yet; the close after writing will report it
                n += 1
                self._offer(FileEvent(path, entry.container_id, entry.root), entry.key)
            self._count("initial", n)
            log.debug("watch_added", path=entry.path, container_id=entry.container_id, existing=n)
