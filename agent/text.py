"""Untrusted text made safe to show on a terminal.

A process's argv, a container's name, an image's Env or a file path can carry escape
sequences (``\\x1b]0;title\\x07``, ``\\x1b[2J``, a CSI as the one character U+009B) that a
terminal would act on: retitle the window, clear the screen, move the cursor over earlier
lines, or worse on some terminals. Everything shown to an operator goes through
``terminal_safe`` first, which makes every such character visible instead:

* C0 controls (U+0000-U+001F), DEL (U+007F) and C1 controls (U+0080-U+009F) become
  ``\\xNN`` (``\\t``, ``\\n`` and ``\\r`` for those three); a plain space stays a space;
* lone surrogates (non-UTF-8 bytes smuggled in by ``surrogateescape``) become ``\\xNN`` for
  the byte they stand for, any other lone surrogate ``\\udNNN``;
* Unicode line/paragraph separators and bidirectional controls (which reorder what is
  shown: "Trojan Source") become ``\\uNNNN``.

Pure: no I/O, no state. Markup (``[bold]``, rich's) is not this module's business: callers
hand the result to rich as ``Text``, never as a markup string.
"""

from __future__ import annotations

_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_UNICODE_CONTROLS = (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))


def _table(keep_newlines: bool) -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in (*range(0x20), 0x7F, *range(0x80, 0xA0)):
        table[cp] = _NAMED.get(cp, f"\\x{cp:02x}")
    for cp in _UNICODE_CONTROLS:
        table[cp] = f"\\u{cp:04x}"
    for cp in range(0xD800, 0xE000):
        # surrogateescape maps byte 0xNN (>= 0x80) to U+DCNN: show the byte
        table[cp] = f"\\x{cp - 0xDC00:02x}" if 0xDC80 <= cp <= 0xDCFF else f"\\u{cp:04x}"
    if keep_newlines:
        del table[0x0A]
    return table


_SAFE = _table(keep_newlines=False)
_SAFE_LINES = _table(keep_newlines=True)


def terminal_safe(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text in which no character can act on a terminal (see the module doc).

    ``keep_newlines``: a ``\\n`` stays a line break (for multi-line text such as a traceback);
    every other control character is still escaped.
    """
    text = value if isinstance(value, str) else str(value)
    return text.translate(_SAFE_LINES if keep_newlines else _SAFE)


def is_terminal_safe(text: str) -> bool:
    """True when ``text`` holds none of the characters ``terminal_safe`` escapes (newlines neither)."""
    return not any(ord(ch) in _SAFE for ch in text)
