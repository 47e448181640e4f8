"""Executables a full judgement found clean, by file identity: what lets an exec stop at a glance.

Keyed by the identity of the file a process runs (device, inode, size, mtime, ctime: a rewrite
or a replaced file is a new key, and ctime cannot be set back). Only a process judged whole with
no evidence at all puts its executable here, so hashes and YARA were clean for that very file;
a signature reload empties it (new rules, new IOCs). Bounded LRU; one owner, the worker.
"""

from __future__ import annotations

from collections import OrderedDict

from agent.collectors.hashing import CacheKey

MAX_KNOWN = 4096


class KnownExecutables:
    def __init__(self, max_entries: int = MAX_KNOWN) -> None:
        self.max_entries = max_entries
        self._keys: OrderedDict[CacheKey, None] = OrderedDict()

    def __contains__(self, key: CacheKey) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: CacheKey) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)

    def clear(self) -> None:
        self._keys.clear()
