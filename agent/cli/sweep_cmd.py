"""``minerwatch sweep``: one-shot sweep of processes, containers and watched paths.

Exit codes: 0 nothing at or above --min-severity, 1 findings, 2 error, 130 interrupted (Ctrl-C).
On a terminal: a table; in a pipe or a file: one plain block per finding and a summary line.
"""

from __future__ import annotations

import json
import sys

import click

from agent.model import Severity
from agent.text import terminal_safe

LEVELS = ["low", "medium", "high", "critical"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of alert objects.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
@click.option("--min-severity", type=click.Choice(LEVELS), default=None,
              help="Report findings at or above this level (default: [detect] alert_severity, medium).")
@click.option("--respond", is_flag=True, help="Apply the [response] policy: pause containers whose findings reach pause_severity.")
@click.option("-q", "--quiet", is_flag=True, help="Print the findings only (no progress, summary or notes); the exit code says the rest.")
@click.option("-v", "--verbose", is_flag=True, help="Also list every process that could only be read in part, and why.")
def sweep(as_json: bool, config_path: str | None, min_severity: str | None, respond: bool, quiet: bool,
          verbose: bool) -> int:
    """Sweep every process (host and containers), running containers and watched paths."""
    from agent import alert, config, logging_setup, trust
    from agent.report import Reporter, partial_reason
    from agent.sweep import Sweeper

    logging_setup.configure("error" if quiet else "warning", style="command")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    config.check_host_paths(cfg)
    sig = trust.load_signatures(cfg)
    level = Severity.parse(min_severity) if min_severity else cfg.alert_severity
    reporter = Reporter(sys.stderr, enabled=not quiet and (not as_json or sys.stderr.isatty()))
    sweeper = Sweeper(cfg, sig, respond=respond)
    partial = _keep_partial(sweeper) if verbose else []
    with reporter.progress() as progress:
        result = sweeper.run(progress=progress)
    shown = [f for f in result.findings if f.severity >= level]
    if as_json:
        click.echo(json.dumps([alert.build(f) for f in shown], indent=None, ensure_ascii=False))
        if not quiet:
            for note in result.notes:
                click.echo(f"minerwatch: note: {terminal_safe(note)}", err=True)
        for proc in partial:
            click.echo(f"minerwatch: partly read: pid {proc.pid} {terminal_safe(proc.exe or proc.name or '?')}: "
                       f"{partial_reason(proc.partial)}", err=True)
    else:
        reporter.print_report(result, shown, level, sys.stdout, quiet=quiet, verbose=verbose, partial=partial)
    return 1 if shown else 0


def _keep_partial(sweeper) -> list:
    """Collects, as the sweep reads /proc, every process snapshot with a field it could not read."""
    kept: list = []
    procfs = sweeper.collect.procfs
    read_all = procfs.snapshot_all

    def snapshot_all(*args, **kwargs):
        snaps, stats = read_all(*args, **kwargs)
        kept.extend(s for s in snaps if s.partial)
        return snaps, stats

    procfs.snapshot_all = snapshot_all
    return kept
