"""Configure structlog once, in main.

Two styles:
* ``daemon`` (``minerwatch run``): console output on a terminal, JSON lines otherwise (journald).
  Python warnings (``warnings.warn`` by us or a library) become JSON events too
  (``python_warning``), so nothing but JSON reaches the journal.
* ``command`` (sweep, release, alerts test...): a command's own warnings are one readable line on
  stderr (``minerwatch: warning: docker unreachable: url=... error=...``), on a terminal or not;
  JSON lines only when asked for (``MINERWATCH_LOG_FORMAT=json``).

Log values often carry what a process or a container supplied (a command line, a path, a
container name). On a terminal, the rendered line goes through ``agent.text.terminal_safe``
keeping only line breaks (a traceback has them), so no control character written by anyone
else reaches the operator's terminal. Line breaks cannot be forged either: the console
renderer writes a value that holds one as its ``repr`` (escaped), the event text, which it
writes as is, is escaped in full first, and so is each exception's message in a traceback
(only the traceback's own lines break). JSON lines need nothing: the JSON encoder escapes
every control character (and, with its default ``ensure_ascii``, all of non-ASCII).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

import structlog

from agent.text import terminal_safe


def escape_event(_logger, _name, event_dict: dict) -> dict:
    """structlog processor: the event text (which the console renderer writes unquoted) made
    terminal-safe, newlines included."""
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = terminal_safe(event)
    return event_dict


def _exc_info(value) -> tuple | None:
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3:
        return value if value[0] is not None else None
    if value:
        info = sys.exc_info()
        return info if info[0] is not None else None
    return None


def _traceback_lines(te: traceback.TracebackException, seen: set[int]):
    """What ``te.format()`` writes, but each exception's message on one line (its line breaks escaped)."""
    seen.add(id(te))
    if te.__cause__ is not None and id(te.__cause__) not in seen:
        yield from _traceback_lines(te.__cause__, seen)
        yield "\nThe above exception was the direct cause of the following exception:\n\n"
    elif te.__context__ is not None and not te.__suppress_context__ and id(te.__context__) not in seen:
        yield from _traceback_lines(te.__context__, seen)
        yield "\nDuring handling of the above exception, another exception occurred:\n\n"
    if te.stack:
        yield "Traceback (most recent call last):\n"
        yield from te.stack.format()
    for line in te.format_exception_only():
        yield terminal_safe(line.rstrip("\n")) + "\n"


def format_exc_info_escaped(_logger, _name, event_dict: dict) -> dict:
    """structlog's ``format_exc_info`` for a terminal: ``exc_info`` becomes ``exception``, the
    traceback text, in which no exception message can start a line of its own."""
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is not None:
        te = traceback.TracebackException(*info)
        event_dict["exception"] = "".join(_traceback_lines(te, set())).rstrip("\n")
    return event_dict


class TerminalSafe:
    """Wraps a renderer: whatever it produced, no control character but a newline is left."""

    def __init__(self, renderer) -> None:
        self.renderer = renderer

    def __call__(self, logger, name: str, event_dict: dict) -> str:
        return terminal_safe(self.renderer(logger, name, event_dict), keep_newlines=True)


def _command_line_renderer(_logger, name: str, event_dict: dict) -> str:
    """One readable line: ``minerwatch: warning: docker unreachable: url=... error=...``."""
    event_dict.pop("timestamp", None)
    level = event_dict.pop("level", name)
    event = str(event_dict.pop("event", "")).replace("_", " ")
    exception = event_dict.pop("exception", None)
    rest = " ".join(f"{k}={v}" for k, v in event_dict.items() if v not in (None, ""))
    line = f"minerwatch: {level}: {event}" + (f": {rest}" if rest else "")
    if exception:
        line += "\n" + str(exception)
    return terminal_safe(line, keep_newlines=True)


def json_requested() -> bool:
    return os.environ.get("MINERWATCH_LOG_FORMAT", "").lower() == "json"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` replacement: a warning is a structlog event, one JSON line in the journal."""
    structlog.get_logger("minerwatch.python").warning(
        "python_warning", category=category.__name__, message=str(message)[:2000], where=f"{filename}:{lineno}")


def configure(level: str = "info", stream=None, *, style: str = "daemon") -> None:
    """``style``: ``daemon`` (JSON unless on a terminal; Python warnings as events) or ``command``."""
    stream = stream or sys.stderr
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_requested() or (style == "daemon" and not stream.isatty()):
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    elif style == "daemon":
        processors += [format_exc_info_escaped, escape_event]
        renderer = TerminalSafe(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors.append(format_exc_info_escaped)
        renderer = _command_line_renderer
    if style == "daemon":
        warnings.showwarning = _show_warning
        logging.captureWarnings(False)  # warnings go to structlog, not to the logging module
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
