"""Walk again the watches that lost events to a full queue, a slice at a time (for ``fswatch``).

In a storm the daemon's bounded ``EventQueue`` fills and new file events are dropped (and
counted): without a second look, a payload whose events were among them would never be
inspected. So the watcher notes which watch dropped an event, and at its next ``refresh()``
walks that watch's tree again. The walk enqueues only while the queue has room and resumes
where it stopped at the following refresh, so the rescan itself never drops anything and
never floods the queue; events dropped meanwhile make the walk run once more when it ends.
A first walk that finds the queue full is handed over the same way (``resume``): it goes on
from the file it stopped at instead of dropping the rest.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from agent.collectors import files
from agent.events import EventQueue, FileEvent

Key = tuple[str, str]  # FileWatcher's entry key: ("host", path) or ("layer", container_id)


class Root(NamedTuple):
    """What a walk needs of one watch."""

    path: str
    container_id: str = ""
    root: str = ""  # the container's writable layer, "" for a host path


@dataclass
class _Walk:
    root: Root
    files: Iterator[tuple[str, os.stat_result]]
    held: tuple[str, os.stat_result] | None = None  # taken from the walk, not enqueued yet (queue full)
    again: bool = False  # more events were dropped meanwhile: walk once more when this one ends


class Rescans:
    """``note_drop`` and ``resume`` from any thread; ``begin`` and ``advance`` from the one thread that refreshes."""

    def __init__(self, events: EventQueue, max_files: int = files.MAX_FILES) -> None:
        self._events = events
        self._max_files = max_files
        self._lock = threading.Lock()  # guards _dropped only (taken in the observer thread: kept short)
        self._dropped: set[Key] = set()
        self._resumed: list[tuple[Key, _Walk]] = []  # guarded by _lock too: handed over by ``resume``
        self._walks: dict[Key, _Walk] = {}

    def note_drop(self, key: Key) -> None:
        """An event of watch ``key`` was dropped (the queue was full)."""
        with self._lock:
            self._dropped.add(key)

    def begin(self, live: Mapping[Key, Root]) -> list[Key]:
        """Start a walk for every live watch that dropped events since the last call; returns their keys.

        A watch already being walked is walked once more when its walk ends; walks of watches
        no longer in ``live`` (removed, or just re-added and walked anyway) are abandoned.
        """
        with self._lock:
            keys, self._dropped = self._dropped, set()
        started = []
        for key in keys:
            if key not in live:
                continue
            walk = self._walks.get(key)
            if walk is not None and walk.root == live[key]:
                walk.again = True
                continue
            self._walks[key] = _Walk(live[key], self._walk(live[key]))
            started.append(key)
        for key in [k for k, w in self._walks.items() if live.get(k) != w.root]:
            del self._walks[key]
        return started

    def resume(self, key: Key, root: Root, rest: Iterator[tuple[str, os.stat_result]],
               held: tuple[str, os.stat_result]) -> None:
        """A first walk found the queue full at ``held``: it goes on from there (``rest`` of the same walk)
        at the next ``advance``, instead of dropping the remainder and walking the whole tree again.
        From any thread (a first walk runs where the watch was added): ``advance`` adopts it."""
        with self._lock:
            self._resumed.append((key, _Walk(root, rest, held)))

    def advance(self) -> int:
        """Enqueue the next files of every walk while the queue has room; returns how many were enqueued."""
        with self._lock:
            resumed, self._resumed = self._resumed, []
        for key, walk in resumed:
            self._walks[key] = walk
        queued = 0
        for key, walk in list(self._walks.items()):
            while True:
                item, walk.held = walk.held or next(walk.files, None), None
                if item is None:
                    if walk.again:
                        walk.files, walk.again = self._walk(walk.root), False
                        continue
                    del self._walks[key]
                    break
                path, st = item
                if st.st_size == 0:
                    continue  # nothing to detect yet; the close after writing will report it
                if not self._events.put(FileEvent(path, walk.root.container_id, walk.root.root)):
                    walk.held = item  # full: this file first at the next refresh
                    return queued
                queued += 1
        return queued

    def active(self) -> int:
        """Walks not finished yet."""
        return len(self._walks)

    def _walk(self, root: Root) -> Iterator[tuple[str, os.stat_result]]:
        return files.walk(root.path, max_files=self._max_files)
