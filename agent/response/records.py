"""What the agent paused and what operators released, shared by the daemon, the sweep and ``release``.

``<state_dir>/paused.json``: key -> record (who/when/why, and how: ``docker``, ``cgroup-v1``,
``cgroup-v2`` with the cgroup directory, or ``sigstop`` for a host process). Keys are container
ids, or ``pid:<PID>`` for host processes.
``<state_dir>/released.json``: container id -> ``{by, at}``: released by an operator; the agent
does not pause it again (a recreated container has a new id).

Several processes use these files: every change is a read-modify-write under an exclusive
``flock`` on ``<state_dir>/response.lock`` and an atomic replace; files are 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import structlog

log = structlog.get_logger("minerwatch.response")

MAX_ENTRIES = 2000  # per file; the oldest go first


class ResponseRecords:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.paused_path = self.dir / "paused.json"
        self.released_path = self.dir / "released.json"
        self._released_cache: tuple[tuple[int, int], dict[str, str]] | None = None

    # ------------------------------------------------------------------ reading

    def paused(self) -> dict[str, dict]:
        return _load(self.paused_path)

    def released(self) -> dict[str, str]:
        """Container id -> "USER at TIME" (re-read only when the file changed)."""
        try:
            st = self.released_path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if self._released_cache is None or self._released_cache[0] != key:
            data = _load(self.released_path)
            self._released_cache = (key, {cid: f"{r.get('by', '?')} at {r.get('at', '?')}" for cid, r in data.items()})
        return self._released_cache[1]

    def find_paused(self, ref: str) -> tuple[str, dict] | None:
        """The record whose key, id prefix or container name is ``ref``."""
        records = self.paused()
        if ref in records:
            return ref, records[ref]
        for key, rec in records.items():
            if rec.get("name") == ref.lstrip("/") or (len(ref) >= 4 and key.startswith(ref)):
                return key, rec
        return None

    # ------------------------------------------------------------------ writing

    def add_paused(self, key: str, record: dict) -> None:
        with self._locked():
            data = _load(self.paused_path)
            data.pop(key, None)
            data[key] = record
            _store(self.paused_path, _bounded(data))

    def remove_paused(self, key: str) -> dict | None:
        with self._locked():
            data = _load(self.paused_path)
            rec = data.pop(key, None)
            if rec is not None:
                _store(self.paused_path, data)
            return rec

    def mark_released(self, container_id: str, by: str, at: str) -> None:
        with self._locked():
            data = _load(self.released_path)
            data.pop(container_id, None)
            data[container_id] = {"by": by, "at": at}
            _store(self.released_path, _bounded(data))

    @contextlib.contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "response.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _bounded(data: dict) -> dict:
    while len(data) > MAX_ENTRIES:
        data.pop(next(iter(data)))
    return data


def _load(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("response_state_damaged", path=str(path))
        return {}
    return data if isinstance(data, dict) else {}


def _store(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
