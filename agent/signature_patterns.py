"""Signature regexes: compiled with RE2, and the caps on the text handed to them.

Part of agent.signatures (import from there). Every regex of the bundle (cmdline_patterns.txt,
wallet_patterns.txt) is compiled with RE2 (the ``google-re2`` binding), whose matching time is
linear in the length of the text whatever the pattern: no pattern can be made to backtrack by a
crafted command line, image Env or label. A pattern RE2 cannot compile (backreferences, look-around,
``\\Z``, possessive or atomic groups...) is a bad entry, reported with its file and line.

RE2 syntax is Python's ``re`` syntax without those constructs; the inline flags ``(?i)``, ``(?s)``,
``(?m)`` and ``(?U)`` mean what they mean to ``re``. One difference to know: ``\\d``, ``\\w``,
``\\s`` and ``\\b`` are ASCII-only in RE2 (Unicode in ``re``), and ``\\s`` does not match ``\\v``.

Linear is not free: the detectors also cap what they hand to a matcher (``clip_middle``,
``match_text``, ``clip_items``), keeping the start and the end of a long text so that padding put
in front of the miner's arguments (or after them) does not push them out of view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import re2

from agent.signature_reader import NUMBER, Reader

# Characters of text handed to one signature regex: a joined command line, an image config.
MAX_MATCH_TEXT = 16 * 1024
# Characters kept of one part of such a text (one argument, one Env entry, one label, one URL).
MAX_MATCH_PART = 4 * 1024
# Items of a list looked at one by one (pool URLs of a command line, users of a miner config).
MAX_MATCH_ITEMS = 64

_T = TypeVar("_T")


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every rejected pattern to stderr
    return options


_OPTIONS = _options()


def compile_signature_regex(text: str) -> Any:
    """``text`` compiled with RE2 (same ``search``/``match``/``group`` API as ``re``).

    Raises ValueError with RE2's message when RE2 cannot compile it.
    """
    try:
        return re2.compile(text, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None


@dataclass(frozen=True, slots=True)
class Pattern:
    """A named regular expression with a weight and a source."""

    name: str
    regex: Any  # an RE2 regex from compile_signature_regex (anything with re's search() API)
    weight: int
    source: str
    file: str = ""
    line: int = 0


class PatternSet:
    """The patterns of one file, and the same patterns as one RE2 set: ``matching(text)`` says which
    of them match in one pass over the text (a few microseconds for a clean command line, against
    tens for searching each pattern in turn), so a detector searches only those for their match.
    Iterates, indexes and compares like the tuple of patterns it holds."""

    __slots__ = ("patterns", "_set")

    def __init__(self, patterns: Sequence[Pattern] = ()) -> None:
        self.patterns = tuple(patterns)
        self._set = self._compile(self.patterns) if self.patterns else None

    @staticmethod
    def _compile(patterns: tuple[Pattern, ...]):
        """The RE2 set of ``patterns``; None when RE2 will not build one (over its memory budget, say):
        then every pattern is searched in turn, which is slower but finds the same."""
        try:
            regex_set = re2.Set.SearchSet(_OPTIONS)
            for n, pattern in enumerate(patterns):
                if regex_set.Add(pattern.regex.pattern) != n:
                    return None
            return regex_set if regex_set.Compile() is not False else None
        except re2.error:
            return None

    def matching(self, text: str) -> tuple[Pattern, ...]:
        """The patterns that match somewhere in ``text``, in file order (all of them without a set)."""
        if self._set is None:
            return self.patterns
        hits = self._set.Match(text)  # None when nothing matches
        return tuple(self.patterns[i] for i in sorted(hits)) if hits else ()

    def __iter__(self):
        return iter(self.patterns)

    def __len__(self) -> int:
        return len(self.patterns)

    def __getitem__(self, index):
        return self.patterns[index]

    def __eq__(self, other) -> bool:
        if isinstance(other, PatternSet):
            return self.patterns == other.patterns
        return self.patterns == other

    __hash__ = None  # mutable-looking: compared by content, never a dict key

    def __repr__(self) -> str:
        return f"PatternSet({len(self.patterns)} patterns)"


def read_patterns(r: Reader, rel: str, ident: Any) -> PatternSet:
    """A ``name | weight | regex | source`` file; ``ident`` validates names."""
    out, seen = [], {}
    for line, (name, weight, text, source) in r.rows(rel, ("name", "weight", "regex", "source")):
        problems = len(r.issues)
        if not ident.fullmatch(name):
            r.issue(rel, line, f"name {name!r} must be a lower-case identifier")
        if not NUMBER.fullmatch(weight) or not 1 <= int(weight) <= 100:
            r.issue(rel, line, f"weight must be an integer from 1 to 100, not {weight!r}")
        try:
            regex = compile_signature_regex(text)
        except ValueError as exc:
            r.issue(rel, line, f"regex does not compile with RE2 (linear-time matching; no backreferences "
                    f"or look-around): {exc}")
        else:
            if regex.search("") is not None:
                r.issue(rel, line, "regex matches the empty string, so it would match every input")
        if len(r.issues) == problems and r.first(seen, name, rel, line, "pattern name"):
            out.append(Pattern(name, regex, int(weight), source, rel, line))
    return PatternSet(out)


# --- what a matcher is given ------------------------------------------------------------


def clip_middle(text: str, limit: int = MAX_MATCH_TEXT) -> str:
    """``text`` if it is at most ``limit`` characters, else its start and its end joined by a space."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return f"{text[:head]} {text[len(text) - tail:]}" if tail else text[:head]


def match_text(parts: Sequence[str], part_limit: int = MAX_MATCH_PART, limit: int = MAX_MATCH_TEXT) -> str:
    """``parts`` joined with spaces for a matcher: each part cut to ``part_limit``, the whole to ``limit``.

    Cutting each part first keeps one huge argument (or Env entry) from hiding the ones on
    either side of it; of very many parts, the first and the last are kept.
    """
    pieces = [clip_middle(part, part_limit) for part in clip_items(parts, limit // 2)]
    return clip_middle(" ".join(pieces), limit)


def clip_items(items: Sequence[_T], limit: int = MAX_MATCH_ITEMS) -> list[_T]:
    """The first and the last items of ``items``, ``limit`` in all."""
    if len(items) <= limit:
        return list(items)
    head = limit // 2
    return [*items[:head], *items[len(items) - (limit - head):]]
