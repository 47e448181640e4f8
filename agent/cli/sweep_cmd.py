"""``minerwatch sweep``: one-shot sweep of processes, containers and watched paths.

Exit codes: 0 nothing at or above --min-severity, 1 findings, 2 error.
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
def sweep(as_json: bool, config_path: str | None, min_severity: str | None, respond: bool) -> int:
    """Sweep every process (host and containers), running containers and watched paths."""
    from agent import alert, config, logging_setup, trust
    from agent.report import Reporter
    from agent.sweep import Sweeper

    logging_setup.configure("warning")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    config.check_host_paths(cfg)
    sig = trust.load_signatures(cfg)
    level = Severity.parse(min_severity) if min_severity else cfg.alert_severity
    reporter = Reporter(sys.stderr, enabled=not as_json or sys.stderr.isatty())
    with reporter.progress() as progress:
        result = Sweeper(cfg, sig, respond=respond).run(progress=progress)
    shown = [f for f in result.findings if f.severity >= level]
    if as_json:
        click.echo(json.dumps([alert.build(f) for f in shown], indent=None, ensure_ascii=False))
        for note in result.notes:
            click.echo(f"minerwatch: note: {terminal_safe(note)}", err=True)
    else:
        reporter.print_report(result, shown, level, sys.stdout)
    return 1 if shown else 0
