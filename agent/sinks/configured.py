"""The sinks named in the ``[alerts]`` section of the configuration.

With ``format = "ocsf"`` every sink is wrapped in ``OcsfSink``: it sends the OCSF Detection
Finding (``agent.ocsf``) the pipeline spooled, and makes one of an ECS alert handed to it
directly (``minerwatch alerts test``).
"""

from __future__ import annotations

from agent import ocsf
from agent.config import Config
from agent.errors import ConfigError
from agent.sinks.base import Record, Sink, encode
from agent.sinks.file import FileSink
from agent.sinks.stdout import StdoutSink
from agent.sinks.syslog import SyslogSink
from agent.sinks.webhook import SecretFileError, WebhookSink, load_secret


def build_sinks(config: Config, *, timeout: float = 10.0) -> list[Sink]:
    """One sink per configured destination, in a fixed order; ConfigError names a bad key.

    ``timeout`` bounds each network send (syslog connect/send, webhook request).
    """
    alerts, source = config.alerts, config.source
    sinks: list[Sink] = []
    if alerts.stdout:
        sinks.append(StdoutSink())
    if alerts.file:
        if not alerts.file.startswith("/"):
            raise ConfigError(source, "[alerts] file", f"must be an absolute path, got {alerts.file!r}")
        sinks.append(FileSink(alerts.file))
    if alerts.syslog:
        try:
            sinks.append(SyslogSink(alerts.syslog, timeout=timeout))
        except ValueError as exc:
            raise ConfigError(source, "[alerts] syslog", str(exc)) from None
    if alerts.webhook_secret_file and not alerts.webhook:
        raise ConfigError(source, "[alerts] webhook_secret_file", "set, but [alerts] webhook is empty")
    if alerts.webhook:
        secret = None
        if alerts.webhook_secret_file:
            try:
                secret = load_secret(alerts.webhook_secret_file)
            except SecretFileError as exc:
                raise ConfigError(source, "[alerts] webhook_secret_file", str(exc)) from None
        try:
            sinks.append(WebhookSink(alerts.webhook, secret=secret, timeout=timeout))
        except ValueError as exc:
            raise ConfigError(source, "[alerts] webhook", str(exc)) from None
    if alerts.format == "ocsf":
        return [OcsfSink(s) for s in sinks]
    return sinks


# Room a syslog header takes before the alert (PRI, version, timestamp, a 255-byte host, app, pid, msgid).
_SYSLOG_HEADER_ROOM = 400


class OcsfSink:
    """A sink of ``[alerts] format = "ocsf"``: the line it delivers is the OCSF alert; what the sink
    reads beside the line (time, host, severity, event id) comes from ``ocsf.header``. A sink with a
    message limit (syslog's ``max_bytes``) gets an alert already bounded to fit under its header."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = sink.name

    def describe(self) -> str:
        return self.sink.describe()

    def reopen(self) -> None:
        self.sink.reopen()

    def close(self) -> None:
        self.sink.close()

    def send(self, record: Record) -> None:
        alert, line = record.alert, record.line
        if not ocsf.is_ocsf(alert):  # handed an ECS alert directly (alerts test): the same finding in OCSF
            alert = ocsf.from_alert(alert)
            line = encode(alert)
        limit = getattr(self.sink, "max_bytes", None)
        if isinstance(limit, int) and len(line) > limit - _SYSLOG_HEADER_ROOM:
            alert = ocsf.fit(alert, max(limit - _SYSLOG_HEADER_ROOM, 256))
            line = encode(alert)
        self.sink.send(Record(line, ocsf.header(alert)))
