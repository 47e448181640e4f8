"""``minerwatch scan-image IMAGE``: static scan of a local image's layers and config.

Exit codes, as the sweep: 0 nothing at or above --min-severity, 1 findings, 2 error (no such
image, Docker unreachable, export unreadable or timed out).
"""

from __future__ import annotations

import json
import sys

import click

from agent.cli.status import StatusLine
from agent.model import Severity
from agent.text import terminal_safe

LEVELS = ["low", "medium", "high", "critical"]
DEFAULT_TIMEOUT_S = 600.0  # as agent.images.scanner.DEFAULT_TIMEOUT_S (not imported here: it pulls in YARA)
_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red", Severity.MEDIUM: "yellow", Severity.LOW: "cyan"}
_KINDS = {"odd_name": "name(s) with '..' or a leading '/'", "symlink": "symlink(s)", "hardlink": "hard link(s)",
          "fifo": "FIFO(s)", "device": "device(s)", "other": "other special file(s)"}


@click.command("scan-image")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of alert objects.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
@click.option("--min-severity", type=click.Choice(LEVELS), default=None,
              help="Report findings at or above this level (default: [detect] alert_severity, medium).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Give up (exit 2) after this many seconds.")
def scan_image(image: str, as_json: bool, config_path: str | None, min_severity: str | None, timeout_s: float) -> int:
    """Scan a local image without running it: every executable, ELF file and script in every
    layer (also files a later layer deleted) is hashed and YARA-scanned, and the image config
    and name are checked. Streams Docker's image export; writes nothing to disk; never pulls."""
    from agent import logging_setup, trust
    from agent.images import scanner as image_scan

    logging_setup.configure("warning", style="command")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    sig = trust.load_signatures(cfg)
    level = Severity.parse(min_severity) if min_severity else cfg.alert_severity
    with StatusLine(sys.stderr.isatty(), "reading the image export",
                    lambda n: f"reading the image export: {n / 1e6:.0f} MB") as progress:
        result = image_scan.scan_local_image(image, cfg, sig, timeout_s=timeout_s, progress=progress)
    shown = [f for f in result.findings if f.severity >= level]
    if as_json:
        click.echo(json.dumps(image_scan.alerts(result, shown), ensure_ascii=False))
        for note in result.notes:
            click.echo(f"minerwatch: note: {terminal_safe(note)}", err=True)
    else:
        _print_report(result, shown, level)
    return 1 if shown else 0


def _print_report(result, shown, level: Severity) -> None:
    """The table on stdout. Image names, paths and config values come from the image: each is
    escaped (``agent.text.terminal_safe``: no control character reaches the terminal) and goes
    to rich as ``Text``, never as markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from agent.text import terminal_safe as safe

    image = safe(result.image)
    out = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if shown:
        table = Table(title=Text(f"minerwatch scan-image {image}: {len(shown)} finding(s) at or above {level.word}"),
                      show_lines=True)
        for col in ("severity", "score", "where", "evidence"):
            table.add_column(col, overflow="fold")
        for f in shown:
            if f.file is not None:
                index = result.layer_of.get(f.finding_id, 0)
                where = f"{safe(f.file.path)}\nlayer {index} of {len(result.layers)}" + (" (hidden)" if f.file.hidden else "")
            else:
                where = "image config and name"
            table.add_row(Text(f.severity.word, style=_STYLE[f.severity]), Text(str(f.score)), Text(where),
                          Text("\n".join(safe(f"{e.signal}: {e.detail}") for e in f.evidence[:6])))
        out.print(table)
    else:
        out.print(Text(f"minerwatch scan-image {image}: nothing at or above {level.word}"))
    below = len(result.findings) - len(shown)
    out.print(Text(
        f"{len(result.layers)} layers, {result.files} files, {result.candidates} executables and scripts "
        f"({result.bytes_hashed / 1e6:.1f} MB) checked in {result.duration_s:.2f} s; "
        f"{below} finding(s) below {level.word}; {result.partial_files} file(s) only partly read"
    ))
    skipped = ", ".join(f"{n} {_KINDS.get(kind, safe(kind))}" for kind, n in sorted(result.skipped.items()) if n)
    if skipped:
        out.print(Text(f"treated as data (never followed, opened or created): {skipped}"))
    for note in result.notes:
        out.print(Text(f"note: {safe(note)}"))
