"""A finding leaves the worker here: the responder acts on it by policy, then it becomes an alert.

The alert pipeline (dedupe, spool, delivery threads) and the responder are built by the
wiring and handed in; the emitter only orders them and counts. A finding below
``alert_severity`` is still responded to by policy, and alerted when a response was taken.

Incidents grow: the findings of one incident (one ``finding_id``: a container, or a host
executable) are merged, so each alert carries everything known so far (the file that was
dropped, the process that runs it, its container, its evidence and peers) at the highest
severity reached; the pipeline's dedupe lets an alert through when the incident gained a
subject, a signal kind or a peer.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import structlog

from agent import alert
from agent.config import Config
from agent.model import Finding
from agent.sinks.pipeline import SpoolError

log = structlog.get_logger("minerwatch.emitter")

MAX_INCIDENTS = 4096  # incidents remembered (least recently alerted forgotten first)
MAX_EVIDENCE = 16  # as many as an alert carries


def merge(known: Finding | None, new: Finding) -> Finding:
    """``new`` with what its incident already knew: subjects it lacks, evidence it lacks, the higher severity."""
    if known is None or known.finding_id != new.finding_id:
        return new
    have = {(e.signal, e.detail) for e in new.evidence}
    evidence = (*new.evidence, *(e for e in known.evidence if (e.signal, e.detail) not in have))[:MAX_EVIDENCE]
    top = max(known, new, key=lambda f: (f.severity, f.score))
    return dataclasses.replace(new, evidence=evidence, severity=top.severity, score=top.score,
                               process=new.process or known.process, file=new.file or known.file,
                               container=new.container or known.container)


class Emitter:
    def __init__(self, config: Config, responder, alerts, stats) -> None:
        """``responder``: ``respond(finding) -> finding``; ``alerts``: ``submit(alert_dict)``."""
        self.alert_severity = config.alert_severity
        self.responder = responder
        self.alerts = alerts
        self.stats = stats
        self._incidents: OrderedDict[str, Finding] = OrderedDict()

    def emit(self, finding: Finding) -> Finding:
        """Respond to and alert ``finding``; returns it with its response."""
        self.stats.findings[finding.severity.word] += 1
        finding = self.responder.respond(finding)  # never raises; a failed action is alerted (dedupe lets it through)
        if finding.severity < self.alert_severity and finding.response.result not in ("done", "failed"):
            return finding
        finding = merge(self._incidents.get(finding.finding_id), finding)
        self._incidents[finding.finding_id] = finding
        self._incidents.move_to_end(finding.finding_id)
        while len(self._incidents) > MAX_INCIDENTS:
            self._incidents.popitem(last=False)
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
