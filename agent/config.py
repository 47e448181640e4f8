"""Configuration: a frozen tree with embedded defaults, loaded from TOML and validated once.

Every key is optional. An unknown key or a bad value raises ConfigError naming the
file and the key (``[agent] interval``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.model import Severity

DEFAULT_PATH = "/etc/minerwatch/config.toml"


@dataclass(frozen=True, slots=True)
class AgentSection:
    interval: float = 5.0
    state_dir: str = "/var/lib/minerwatch"
    signatures: str = ""
    proc_root: str = "/proc"


@dataclass(frozen=True, slots=True)
class DockerSection:
    url: str = "unix:///var/run/docker.sock"


@dataclass(frozen=True, slots=True)
class WatchSection:
    paths: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")
    max_file_mb: int = 128


@dataclass(frozen=True, slots=True)
class DetectSection:
    alert_severity: str = "medium"


@dataclass(frozen=True, slots=True)
class ImagesSection:
    allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseSection:
    mode: str = "enforce"
    pause_severity: str = "critical"
    protect: tuple[str, ...] = ()
    stop_host_processes: bool = False
    # The quarantine of evidence (blocks allocated): in all, per container (the host is one more).
    quarantine_max_mb: int = 512
    quarantine_max_files: int = 100
    quarantine_container_max_mb: int = 128
    quarantine_container_max_files: int = 10
    quarantine_min_free_mb: int = 256  # free space its file system keeps after a copy


@dataclass(frozen=True, slots=True)
class AlertsSection:
    stdout: bool = True
    file: str = "/var/log/minerwatch/alerts.jsonl"
    syslog: str = ""
    webhook: str = ""
    webhook_secret_file: str = ""
    dedupe_minutes: float = 60.0
    format: str = "ecs"  # or "ocsf": what every sink gets (an OCSF 1.x Detection Finding, agent/ocsf.py)


@dataclass(frozen=True, slots=True)
class MetricsSection:
    listen: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    docker: DockerSection = field(default_factory=DockerSection)
    watch: WatchSection = field(default_factory=WatchSection)
    detect: DetectSection = field(default_factory=DetectSection)
    images: ImagesSection = field(default_factory=ImagesSection)
    response: ResponseSection = field(default_factory=ResponseSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    source: str = "<defaults>"

    @property
    def alert_severity(self) -> Severity:
        return Severity.parse(self.detect.alert_severity)


_SECTIONS: dict[str, type] = {
    "agent": AgentSection,
    "docker": DockerSection,
    "watch": WatchSection,
    "detect": DetectSection,
    "images": ImagesSection,
    "response": ResponseSection,
    "alerts": AlertsSection,
    "metrics": MetricsSection,
}


def _check_value(path: str, key: str, value: Any, default: Any) -> Any:
    """Coerce ``value`` to the type of ``default`` or raise ConfigError naming ``key``."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(path, key, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, key, f"expected a number, got {value!r}")
        # TOML allows nan, inf and integers of any size; an infinite interval would never tick.
        if abs(value) > 1e15 or not math.isfinite(value):
            raise ConfigError(path, key, f"must be a finite number below 1e15, got {str(value)[:40]}")
        if value < 0:
            raise ConfigError(path, key, f"must not be negative, got {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise ConfigError(path, key, f"expected a whole number, got {value!r}")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(path, key, f"expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(path, key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(path, key, "unsupported key")  # pragma: no cover - defaults are typed above


def _validate(cfg: Config) -> None:
    """Cross-field and enumerated-value checks; errors name the key."""
    p = cfg.source
    if cfg.agent.interval < 0.5:
        raise ConfigError(p, "[agent] interval", f"must be at least 0.5 seconds, got {cfg.agent.interval}")
    if not cfg.agent.state_dir.startswith("/"):
        raise ConfigError(p, "[agent] state_dir", f"must be an absolute path, got {cfg.agent.state_dir!r}")
    if not cfg.agent.proc_root.startswith("/"):
        raise ConfigError(p, "[agent] proc_root", f"must be an absolute path, got {cfg.agent.proc_root!r}")
    if not (cfg.docker.url.startswith(("unix://", "tcp://", "http://", "https://", "ssh://"))):
        raise ConfigError(p, "[docker] url", f"expected unix://, tcp://, http(s):// or ssh:// URL, got {cfg.docker.url!r}")
    for watched in cfg.watch.paths:
        if not watched.startswith("/"):
            raise ConfigError(p, "[watch] paths", f"must be absolute paths, got {watched!r}")
    if cfg.watch.max_file_mb < 1:
        raise ConfigError(p, "[watch] max_file_mb", "must be at least 1")
    try:
        Severity.parse(cfg.detect.alert_severity)
    except ValueError as exc:
        raise ConfigError(p, "[detect] alert_severity", str(exc)) from None
    if cfg.response.mode not in ("enforce", "observe"):
        raise ConfigError(p, "[response] mode", f"expected 'enforce' or 'observe', got {cfg.response.mode!r}")
    if cfg.response.pause_severity not in ("off", "high", "critical"):
        raise ConfigError(
            p, "[response] pause_severity", f"expected 'off', 'high' or 'critical', got {cfg.response.pause_severity!r}"
        )
    if cfg.alerts.syslog and not cfg.alerts.syslog.startswith(("udp://", "tcp://", "unix://")):
        raise ConfigError(p, "[alerts] syslog", f"expected udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH, got {cfg.alerts.syslog!r}")
    if cfg.alerts.webhook and not cfg.alerts.webhook.startswith(("http://", "https://")):
        raise ConfigError(p, "[alerts] webhook", f"expected an http(s) URL, got {cfg.alerts.webhook!r}")
    if cfg.alerts.format not in ("ecs", "ocsf"):
        raise ConfigError(p, "[alerts] format", f"expected 'ecs' or 'ocsf', got {cfg.alerts.format!r}")
    if cfg.metrics.listen:
        host, sep, port = cfg.metrics.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(p, "[metrics] listen", f"expected HOST:PORT, got {cfg.metrics.listen!r}")


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a validated Config from parsed TOML data."""
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(source, f"[{name}]", f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(source, f"[{name}]", "expected a table")
        cls = _SECTIONS[name]
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, raw in value.items():
            label = f"[{name}] {key}"
            if key not in known:
                raise ConfigError(source, label, f"unknown key (known: {', '.join(sorted(known))})")
            kwargs[key] = _check_value(source, label, raw, getattr(defaults, key))
        sections[name] = cls(**kwargs)
    cfg = Config(**sections, source=source)
    _validate(cfg)
    return cfg


def check_host_paths(cfg: Config) -> None:
    """Paths the agent reads must exist: a missing proc root is a configuration error, not "no findings"."""
    proc = Path(cfg.agent.proc_root)
    if not (proc / "self").exists() and not any(n.isdigit() for n in _listdir(proc)):
        raise ConfigError(cfg.source, "[agent] proc_root", f"{proc} is not a procfs (no /self, no PID directories)")


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration.

    ``path=None`` reads the default path when it exists and otherwise uses the
    embedded defaults; an explicit path must exist.
    """
    if path is None:
        if not Path(DEFAULT_PATH).exists():
            return Config()
        path = DEFAULT_PATH
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(source, "", "invalid TOML: nested too deeply") from None
    return from_dict(data, source)


# --------------------------------------------------------------------------- the default config
# `minerwatch config defaults` prints this; `scripts/install.sh` and the .deb install it. Every key
# comes from the dataclasses above, with its default, so the text cannot drift from the code.

_HELP: dict[str, str] = {
    "agent.interval": "seconds between behaviour samples and periodic re-checks (at least 0.5)",
    "agent.state_dir": "spool, caches, dedupe state, pause records, quarantine (mode 0700)",
    "agent.signatures": "signature bundle directory; empty: the bundled signatures",
    "agent.proc_root": '"/host/proc" when the agent runs in a container',
    "docker.url": "Docker API: unix://, tcp://, http(s):// or ssh://",
    "watch.paths": "directories watched for new executables (container writable layers are added)",
    "watch.max_file_mb": "larger files are not hashed (their first part still gets YARA; reported as partial)",
    "detect.alert_severity": "low, medium, high or critical: the default --min-severity of sweep",
    "images.allow": 'registries, namespaces or globs allowed to run, e.g. ["docker.io/library/*"]; empty: no allow list',
    "response.mode": '"enforce", or "observe": record what would be done, do nothing',
    "response.pause_severity": '"off", "high" or "critical": findings at or above it pause their container',
    "response.protect": "container names, ids (12+ hex) or image globs never paused",
    "response.stop_host_processes": "SIGSTOP host (non-container) processes at pause_severity",
    "response.quarantine_max_mb": "evidence copies in all (blocks allocated)",
    "response.quarantine_max_files": "evidence copies in all",
    "response.quarantine_container_max_mb": "per container (host processes share one budget)",
    "response.quarantine_container_max_files": "per container",
    "response.quarantine_min_free_mb": "a copy is made only if this much stays free",
    "alerts.stdout": "one JSON line per alert on stdout (the journal under systemd)",
    "alerts.file": "JSON lines; empty: no file",
    "alerts.syslog": '"udp://HOST:514", "tcp://HOST:514" or "unix:///dev/log"; empty: none',
    "alerts.webhook": "http(s) URL each alert is POSTed to; empty: none",
    "alerts.webhook_secret_file": "HMAC-SHA256 signing key for the webhook (root-owned, 0600)",
    "alerts.dedupe_minutes": "one alert per incident per this many minutes (sooner when it gets worse)",
    "metrics.listen": 'Prometheus metrics, e.g. "127.0.0.1:9775"; empty: off',
}

_DEFAULTS_HEAD = """\
# minerwatch configuration (TOML), {path}.
# Every key is optional: each is shown commented out with its embedded default. Uncomment and
# change what you need, then check it with
#   minerwatch config check --config {path}
# (exit 2 names the file, the key and the line) and apply it with
#   systemctl reload minerwatch      (a bad reload keeps the last good configuration)
# The service may write only to /var/lib/minerwatch and /var/log/minerwatch: if you move
# state_dir or the alerts file, add a ReadWritePaths= drop-in (systemctl edit minerwatch).
"""


def toml_value(value: Any) -> str:
    """A default as TOML: ``5``, ``0.5``, ``true``, ``"text"``, ``["a", "b"]``."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def render_defaults(path: str = DEFAULT_PATH) -> str:
    """The commented default configuration: every section and key of ``Config``, with its default."""
    lines = [_DEFAULTS_HEAD.format(path=path)]
    for name, cls in _SECTIONS.items():
        lines.append(f"[{name}]")
        defaults = cls()
        for f in dataclasses.fields(cls):
            setting = f"# {f.name} = {toml_value(getattr(defaults, f.name))}"
            note = _HELP.get(f"{name}.{f.name}")
            lines.append(f"{setting:<40} # {note}" if note else setting)
        lines.append("")
    return "\n".join(lines)
