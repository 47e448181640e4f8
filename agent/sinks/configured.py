"""The sinks named in the ``[alerts]`` section of the configuration."""

from __future__ import annotations

from agent.config import Config
from agent.errors import ConfigError
from agent.sinks.base import Sink
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
    return sinks
