"""The human sweep report: progress while it works, then the findings and a summary.

Where the report goes decides its shape: on a terminal a table (rich); in a pipe or a file one
plain block per finding (severity, subject, container, its strongest evidence, one line each,
never wrapped) and a one-line summary, so ``grep``, ``mail`` and cron get something readable.
``quiet``: the findings only. ``verbose``: also every process that could only be read in part,
and why.

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

from agent.model import Finding, ProcessSnapshot, Severity
from agent.text import terminal_safe

_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan"}
_PLURALS = {"process": "processes", "finding": "findings", "container": "containers", "file": "files"}
PLAIN_EVIDENCE = 3  # evidence lines per finding in a plain block (the strongest first)
# Why a field of a process may be missing from a snapshot (agent.collectors.procfs: a field it
# could not read goes to ProcessSnapshot.partial).
_PARTIAL_WHY = {
    "hashes": "executable not hashed: larger than [watch] max_file_mb, not a regular file, or unreadable",
    "exe": "executable link unreadable (permission denied or a kernel-refused read)",
}


def plural(n: int, word: str) -> str:
    """``1 finding``, ``2 findings``, ``1 process``, ``0 processes``."""
    return f"{n} {word if n == 1 else _PLURALS.get(word, word + 's')}"


def partial_reason(fields: tuple[str, ...]) -> str:
    """What was not read and why, for one process (``-v``)."""
    why = [_PARTIAL_WHY[f] for f in fields if f in _PARTIAL_WHY]
    rest = [f for f in fields if f not in _PARTIAL_WHY]
    if rest:
        why.append(f"{', '.join(rest)} unreadable (permission denied, or the kernel refused the read)")
    return "; ".join(why)


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

    def print_report(self, result, shown: list[Finding], level: Severity, stream, *, quiet: bool = False,
                     verbose: bool = False, partial: list[ProcessSnapshot] | tuple = ()) -> None:
        out = Console(file=stream, highlight=False, soft_wrap=False)
        if out.is_terminal:
            self._table(out, shown, level, quiet)
        else:
            out = Console(file=stream, highlight=False, soft_wrap=True, color_system=None, width=10_000)
            for f in shown:
                _plain_block(out, f)
        if quiet:
            return
        out.print(Text(summary(result, shown, level)))
        for note in result.notes:
            out.print(Text(f"note: {terminal_safe(note)}"))
        if verbose:
            for proc in partial:
                what = terminal_safe(proc.exe or proc.name or "?")
                out.print(Text(f"partly read: pid {proc.pid} {what}: {partial_reason(proc.partial)}"))

    @staticmethod
    def _table(out: Console, shown: list[Finding], level: Severity, quiet: bool) -> None:
        if shown:
            table = Table(title=f"minerwatch sweep: {plural(len(shown), 'finding')} at or above {level.word}",
                          show_lines=True)
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
        elif not quiet:
            out.print(f"minerwatch sweep: nothing at or above {level.word}")


def summary(result, shown: list[Finding], level: Severity) -> str:
    """The one summary line."""
    below = len(result.findings) - len(shown)
    head = f"{plural(len(shown), 'finding')} at or above {level.word}" if shown else f"nothing at or above {level.word}"
    return (
        f"minerwatch sweep: {head}; {plural(result.processes, 'process')}, "
        f"{plural(result.containers, 'container')} and {plural(result.files, 'file')} checked in "
        f"{result.duration_s:.2f} s; {below} below {level.word}; "
        f"{plural(result.partial_processes, 'process')} only partly read"
    )


def _plain_block(out: Console, f: Finding) -> None:
    """One finding, plain: a head line, then indented ``key: value`` lines, then a blank line."""
    lines = [f"{f.severity.word.upper()} (score {f.score}) {terminal_safe(f.rule_name)}"]
    if f.process is not None:
        p = f.process
        lines.append(f"  process: pid {p.pid} {terminal_safe(p.exe or p.name)}")
        cmd = terminal_safe(p.command_line)
        if cmd:
            lines.append(f"  command: {cmd if len(cmd) <= 200 else cmd[:197] + '...'}")
    elif f.file is not None:
        lines.append(f"  file: {terminal_safe(f.file.path)}")
    if f.container is not None:
        c = f.container
        ident = c.id[:12] + (f", image {terminal_safe(c.image)}" if c.image else "")
        named = f"{terminal_safe(c.name)} ({ident})" if c.name else ident
        lines.append(f"  container: {named}")
    else:
        lines.append("  container: none (host)")
    for e in sorted(f.evidence, key=lambda e: -e.weight)[:PLAIN_EVIDENCE]:
        lines.append(f"  evidence ({terminal_safe(e.signal)}): {terminal_safe(e.detail)}")
    if len(f.evidence) > PLAIN_EVIDENCE:
        lines.append(f"  (+{len(f.evidence) - PLAIN_EVIDENCE} more: --json has all)")
    if f.response.action != "none":
        lines.append(terminal_safe(f"  response: {f.response.action} {f.response.result}: {f.response.reason}"))
    out.print(Text("\n".join(lines) + "\n"))


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
