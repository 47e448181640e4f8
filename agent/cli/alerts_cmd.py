"""``minerwatch alerts test``: send a marked synthetic alert to every configured sink.

Exit codes: 0 every sink took it, 1 a sink failed (or none is configured), 2 bad config.
The alert goes straight to each sink, not through the daemon's spool, so the check works
while the daemon runs and tells about this moment's pipe, not a retry later. The ``ok`` /
``FAILED`` lines and the summary go to stderr; the stdout sink's copy of the test alert is held
back and printed on stdout after them, so the raw alert never lands between those lines.
"""

from __future__ import annotations

import io
import uuid

import click

from agent.detectors import selftest
from agent.model import Finding, ResponseRecord, Severity

TEST_DETAIL = selftest.DETAIL


def synthetic_finding() -> Finding:
    """A clearly fake finding: signal ``test``, weight 0, a fresh id (never deduplicated)."""
    return Finding(
        finding_id=uuid.uuid4().hex,
        severity=Severity.MEDIUM,
        score=0,
        rule_name=selftest.TITLE,
        evidence=(selftest.evidence(),),
        response=ResponseRecord("none", "skipped", "test alert: nothing to do"),
        category=("host",),
    )


@click.group()
def alerts() -> None:
    """Check the alert sinks."""


@alerts.command("test")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
@click.option("--timeout", type=click.FloatRange(0.1, 120.0), default=5.0, show_default=True,
              help="Seconds allowed for each network sink.")
def test(config_path: str | None, timeout: float) -> int:
    """Send a synthetic, clearly marked alert to every configured sink; exit 0 delivered, 1 a sink failed."""
    from agent import alert, logging_setup, trust
    from agent.sinks.base import Record, SinkError, encode
    from agent.sinks.configured import build_sinks
    from agent.sinks.stdout import StdoutSink

    logging_setup.configure("warning", style="command")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    held = io.StringIO()  # what the stdout sink writes: shown after the status lines, not among them
    sinks = [StdoutSink(held) if isinstance(s, StdoutSink) else s for s in build_sinks(cfg, timeout=timeout)]
    if not sinks:
        click.echo(f"minerwatch: no alert sink configured ([alerts] in {cfg.source})", err=True)
        return 1
    synthetic = alert.build(synthetic_finding(), test=True)
    record = Record(encode(synthetic), synthetic)
    failed = 0
    for sink in sinks:
        try:
            sink.send(record)
            note = " (UDP: sent, delivery cannot be confirmed)" if sink.describe().startswith("syslog udp:") else ""
            click.echo(f"ok      {sink.describe()}{note}", err=True)
        except SinkError as exc:
            failed += 1
            click.echo(f"FAILED  {sink.describe()}: {exc.message}", err=True)
        finally:
            sink.close()
    click.echo(f"test alert {synthetic['event']['id']}: {len(sinks) - failed} of {len(sinks)} sinks took it", err=True)
    if held.getvalue():
        click.echo(held.getvalue(), nl=False)
    return 1 if failed else 0
