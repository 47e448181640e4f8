"""Reading the files of one signature bundle, collecting every issue with its file and line.

Part of agent.signatures (import from there); used by the list, pattern, YARA and manifest readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import SignatureIssue

SEPARATOR = re.compile(r"(?:^|\s+)\|(?:\s+|$)")
NUMBER = re.compile(r"[0-9]{1,6}")  # ASCII only: str.isdigit() accepts digits int() rejects


class Reader:
    """Reads the files of one bundle once and collects every issue found in them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.issues: list[SignatureIssue] = []
        self._data: dict[str, bytes | None] = {}
        self._text: dict[str, str | None] = {}

    def issue(self, file: str, line: int, message: str) -> None:
        self.issues.append(SignatureIssue(file, line, message))

    def mark_missing(self, rel: str) -> None:
        """Record that ``rel`` is missing, already reported, so later reads stay quiet."""
        self._data[rel] = None

    def data(self, rel: str) -> bytes | None:
        if rel not in self._data:
            try:
                self._data[rel] = (self.root / rel).read_bytes()
            except FileNotFoundError:
                self.issue(rel, 0, "file is missing")
                self._data[rel] = None
            except OSError as exc:
                self.issue(rel, 0, f"cannot read: {exc.strerror or exc}")
                self._data[rel] = None
        return self._data[rel]

    def text(self, rel: str) -> str | None:
        if rel not in self._text:
            raw = self.data(rel)
            try:
                self._text[rel] = None if raw is None else raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.issue(rel, raw.count(b"\n", 0, exc.start) + 1, "not valid UTF-8")
                self._text[rel] = None
        return self._text[rel]

    def rows(self, rel: str, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, columns) for every entry line with the right, non-empty columns."""
        text = self.text(rel)
        # split("\n"), not splitlines(): that also breaks at \x1c-\x1e, \x85, \u2028..., and the
        # line numbers in issues would then not be the ones an editor shows.
        for number, raw in enumerate((text or "").split("\n"), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            cols = [c.strip() for c in SEPARATOR.split(line)]
            if len(cols) != len(columns):
                self.issue(rel, number, f"expected {len(columns)} columns ({' | '.join(columns)}), "
                           f"found {len(cols)} (columns are separated by ' | ')")
                continue
            empty = [name for name, value in zip(columns, cols) if not value]
            if empty:
                self.issue(rel, number, f"missing {empty[0]}")
                continue
            yield number, cols

    def first(self, seen: dict[Any, int], key: Any, rel: str, line: int, what: str) -> bool:
        """True the first time ``key`` is seen; a duplicate is an issue."""
        if key in seen:
            self.issue(rel, line, f"duplicate {what} {key!r} (first on line {seen[key]})")
            return False
        seen[key] = line
        return True

    def status(self, rel: str, line: int, status: str, source: str) -> bool | None:
        """enabled -> True, disabled (with its reason) -> False, anything else -> None."""
        if status not in ("enabled", "disabled"):
            self.issue(rel, line, f"status must be 'enabled' or 'disabled', not {status!r}")
            return None
        if status == "disabled" and "disabled:" not in source:
            self.issue(rel, line, "a disabled entry must give its reason after 'disabled:' in the source")
            return None
        return status == "enabled"
