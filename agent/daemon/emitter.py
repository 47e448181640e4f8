"""A finding leaves the worker here: the responder acts on it by policy, then it becomes an alert.

The alert pipeline (dedupe, spool, delivery threads) and the responder are built by the
wiring and handed in; the emitter only orders them and counts. A finding below
``alert_severity`` is still responded to by policy, and alerted when a response was taken.
"""

from __future__ import annotations

import structlog

from agent import alert
from agent.config import Config
from agent.model import Finding
from agent.sinks.pipeline import SpoolError

log = structlog.get_logger("minerwatch.emitter")


class Emitter:
    def __init__(self, config: Config, responder, alerts, stats) -> None:
        """``responder``: ``respond(finding) -> finding``; ``alerts``: ``submit(alert_dict)``."""
        self.alert_severity = config.alert_severity
        self.responder = responder
        self.alerts = alerts
        self.stats = stats

    def emit(self, finding: Finding) -> Finding:
        """Respond to and alert ``finding``; returns it with its response."""
        self.stats.findings[finding.severity.word] += 1
        finding = self.responder.respond(finding)  # never raises; a failed action is alerted (dedupe lets it through)
        if finding.severity < self.alert_severity and finding.response.result not in ("done", "failed"):
            return finding
        try:
            self.alerts.submit(alert.build(finding))
        except SpoolError as exc:  # disk full or state dir unusable: say so loudly, keep detecting
            self.stats.alert_spool_errors += 1
            log.error("alert_not_spooled", finding=finding.finding_id, severity=finding.severity.word, error=str(exc))
        return finding

    def use(self, config: Config) -> None:
        """A reloaded config: new thresholds and policy; what the responder remembers stays."""
        self.alert_severity = config.alert_severity
        self.responder.reconfigure(config)
        self.alerts.reopen()
