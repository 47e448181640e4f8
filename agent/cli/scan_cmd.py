"""``minerwatch scan PATH...``: hash and YARA-scan files and directories, read scripts and config files
for miner command lines, wallets and pools (as ``clamscan PATH`` or ``yara -r RULES PATH``).

Every regular file under each PATH (directories recursively; a symlink is never followed, a FIFO or
a device never opened) is hashed (SHA-256, SHA-1, MD5) and YARA-scanned with the signature bundle;
scripts and config files also go through the command-line, wallet and pool patterns. Files are
judged by the same detectors as the sweep's.

Exit codes, as the sweep: 0 nothing at or above --min-severity, 1 findings, 2 error (a PATH that does
not exist, a bad configuration or signature bundle).
"""

from __future__ import annotations

import gc
import json
import sys
import time

import click

from agent.cli.status import StatusLine
from agent.errors import MinerwatchError
from agent.model import Severity
from agent.text import terminal_safe

LEVELS = ["low", "medium", "high", "critical"]
_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan"}


class PathNotFound(MinerwatchError):
    """A PATH given on the command line does not exist."""


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=True, file_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of alert objects.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
@click.option("--min-severity", type=click.Choice(LEVELS), default=None,
              help="Report findings at or above this level (default: [detect] alert_severity, medium).")
def scan(paths: tuple[str, ...], as_json: bool, config_path: str | None, min_severity: str | None) -> int:
    """Scan files and directories: every regular file is hashed and YARA-scanned, scripts and config
    files are read for miner command lines, wallets and pool URLs. Symlinks are never followed."""
    import os

    _import_structlog_without_rich()
    from agent import alert, logging_setup, trust
    from agent.collectors.scan_paths import PathScanner
    from agent.judge import Judge

    logging_setup.configure("warning", style="command")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    sig = trust.load_signatures(cfg)
    for path in paths:
        if not os.path.lexists(path):
            raise PathNotFound(f"{terminal_safe(path)}: no such file or directory")
    level = Severity.parse(min_severity) if min_severity else cfg.alert_severity
    judge = Judge.from_config(cfg, sig)
    scanner = PathScanner(sig.yara, max_bytes=cfg.watch.max_file_mb << 20)
    # Everything made so far (modules, config, signatures, rules) lives until exit: out of the garbage
    # collector's sight, neither the scan's full collections nor the interpreter's final ones walk it
    # (a tenth of the start-up's instructions). What the scan makes is collected as usual.
    gc.freeze()
    started = time.monotonic()
    findings = []
    with StatusLine(sys.stderr.isatty(), "scanning",
                    lambda stats: f"scanning: {stats.files} files, {stats.bytes_read / 1e6:.0f} MB") as progress:
        for snap in scanner.scan(paths, progress=progress):
            if (finding := judge.file(snap)) is not None:
                findings.append(finding)
    duration = time.monotonic() - started
    findings.sort(key=lambda f: (-f.severity, -f.score, f.file.path if f.file else ""))
    shown = [f for f in findings if f.severity >= level]
    stats = scanner.stats
    if as_json:
        click.echo(json.dumps([alert.build(f) for f in shown], ensure_ascii=False))
        for note in stats.notes:
            click.echo(f"minerwatch: note: {terminal_safe(note)}", err=True)
    else:
        _print_report(paths, stats, findings, shown, level, duration)
    return 1 if shown else 0


def _import_structlog_without_rich() -> None:
    """structlog imports rich (its console and tracebacks) whenever it is installed: a fifth of this
    command's start-up (216 M of 1,040 M instructions). The command renders its own warnings
    (``logging_setup``'s command style) and needs rich only for the table on a terminal, so structlog
    is imported first with rich hidden; rich stays importable for the table."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" raises ImportError: structlog goes without
    try:
        import structlog  # noqa: F401
    finally:
        if sys.modules.get("rich", 0) is None:
            del sys.modules["rich"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_report(paths, stats, findings, shown, level: Severity, duration: float) -> None:
    """The table on stdout. Paths and evidence come from the files: each is escaped
    (``terminal_safe``) and goes to rich as ``Text``, never as markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    what = terminal_safe(" ".join(paths))
    if shown and not sys.stdout.isatty():  # a pipe or a file: one plain block per finding, never a squeezed table
        for f in shown:
            digest = f" sha256 {f.file.hashes.sha256}" if f.file.hashes else ""
            click.echo(f"{f.severity.word.upper()} {f.score} {terminal_safe(f.file.path)}{digest}")
            for e in f.evidence[:6]:
                click.echo(f"  {terminal_safe(f'{e.signal}: {e.detail}')}")
    elif shown:
        table = Table(title=Text(f"minerwatch scan {what}: {_plural(len(shown), 'finding')} at or above {level.word}"),
                      show_lines=True)
        for col in ("severity", "score", "file", "evidence"):
            table.add_column(col, overflow="fold")
        for f in shown:
            digest = f"\nsha256 {f.file.hashes.sha256}" if f.file.hashes else ""
            table.add_row(Text(f.severity.word, style=_STYLE[f.severity]), Text(str(f.score)),
                          Text(terminal_safe(f.file.path) + digest),
                          Text("\n".join(terminal_safe(f"{e.signal}: {e.detail}") for e in f.evidence[:6])))
        out.print(table)
    else:
        out.print(Text(f"minerwatch scan {what}: nothing at or above {level.word}"))
    below = len(findings) - len(shown)
    out.print(Text(f"{_plural(stats.files, 'file')} ({stats.bytes_read / 1e6:.1f} MB) checked in {duration:.2f} s; "
                   f"{below} below {level.word}; {stats.partial} only partly read; "
                   f"{_plural(stats.errors, 'error')}"))
    for note in stats.notes:
        out.print(Text(f"note: {terminal_safe(note)}"))
