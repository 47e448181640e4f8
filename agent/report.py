"""The human sweep report: progress while it works, then a table and a summary.

Everything a process, a container, an image or a file name supplied is passed through
``agent.text.terminal_safe`` (no control character reaches the terminal) and handed to rich
as ``Text`` (never parsed as markup).
"""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from agent.model import Finding, Severity
from agent.text import terminal_safe

_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan"}


class Reporter:
    def __init__(self, stream, enabled: bool = True) -> None:
        self.console = Console(file=stream, stderr=True)
        self.enabled = enabled and self.console.is_terminal

    @contextlib.contextmanager
    def progress(self):
        """Yields a ``(stage, done, total)`` callback; shows a bar only on a terminal."""
        if not self.enabled:
            yield None
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=self.console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def update(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(f"sweeping {stage}", total=total)
                bar.update(tasks[stage], completed=done, total=total)

            yield update

    def print_report(self, result, shown: list[Finding], level: Severity, stream) -> None:
        out = Console(file=stream, highlight=False, soft_wrap=False)
        if shown:
            table = Table(title=f"minerwatch sweep: {len(shown)} finding(s) at or above {level.word}", show_lines=True)
            for col in ("severity", "score", "where", "process / file", "evidence"):
                table.add_column(col, overflow="fold")
            for f in shown:
                # Untrusted text (command lines, paths) is escaped, then goes in as Text, never as markup.
                lines = [terminal_safe(f"{e.signal}: {e.detail}") for e in f.evidence[:6]]
                if f.response.action != "none":
                    lines.append(terminal_safe(f"response: {f.response.action} {f.response.result}: {f.response.reason}"))
                table.add_row(Text(f.severity.word, style=_STYLE[f.severity]), Text(str(f.score)), Text(_where(f)),
                              Text(_what(f)), Text("\n".join(lines)))
            out.print(table)
        else:
            out.print(f"minerwatch sweep: nothing at or above {level.word}")
        below = len(result.findings) - len(shown)
        out.print(
            f"{result.processes} processes, {result.containers} containers, {result.files} files checked in "
            f"{result.duration_s:.2f} s; {below} finding(s) below {level.word}; "
            f"{result.partial_processes} processes partly unreadable"
        )
        for note in result.notes:
            out.print(Text(f"note: {terminal_safe(note)}"))


def _where(f: Finding) -> str:
    if f.container is not None:
        name = terminal_safe(f.container.name or f.container.id[:12])
        image = f" ({terminal_safe(f.container.image)})" if f.container.image else ""
        return f"container {name}{image}"
    return "host"


def _what(f: Finding) -> str:
    if f.process is not None:
        p = f.process
        cmd = terminal_safe(p.command_line)
        cmd = cmd if len(cmd) <= 80 else cmd[:77] + "..."
        return f"pid {p.pid} {terminal_safe(p.exe or p.name)}\n{cmd}"
    if f.file is not None:
        return terminal_safe(f.file.path)
    return terminal_safe(f.container.image) if f.container else ""
