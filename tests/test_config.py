"""Configuration loading: defaults, TOML files, and errors that name the key."""

from __future__ import annotations

import pytest

from agent import config
from agent.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_product_spec():
    """With no file at all, the embedded defaults are the documented ones."""
    cfg = config.Config()
    assert cfg.agent.interval == 5
    assert cfg.agent.proc_root == "/proc"
    assert cfg.watch.paths == ("/tmp", "/var/tmp", "/dev/shm")
    assert cfg.response.mode == "enforce" and cfg.response.pause_severity == "critical"
    assert cfg.alerts.dedupe_minutes == 60
    assert cfg.alert_severity.word == "medium"


def test_a_full_file_is_loaded(tmp_path):
    """Every documented key can be set from TOML."""
    path = write(tmp_path, """
[agent]
interval = 2
state_dir = "/tmp/mw"
signatures = ""
proc_root = "/host/proc"
[docker]
url = "unix:///run/docker.sock"
[watch]
paths = ["/tmp"]
max_file_mb = 64
[detect]
alert_severity = "high"
[images]
allow = ["docker.io/library/*"]
[response]
mode = "observe"
pause_severity = "high"
protect = ["db-*"]
stop_host_processes = true
[alerts]
stdout = false
file = "/tmp/a.jsonl"
syslog = "udp://127.0.0.1:514"
webhook = "https://siem.example/hook"
webhook_secret_file = "/etc/minerwatch/secret"
dedupe_minutes = 30
[metrics]
listen = "127.0.0.1:9775"
""")
    cfg = config.load(path)
    assert cfg.agent.interval == 2.0 and cfg.agent.proc_root == "/host/proc"
    assert cfg.watch.paths == ("/tmp",) and cfg.watch.max_file_mb == 64
    assert cfg.images.allow == ("docker.io/library/*",)
    assert cfg.response.stop_host_processes is True
    assert cfg.metrics.listen == "127.0.0.1:9775"
    assert cfg.source == str(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agent]\nintervall = 3\n", "[agent] intervall"),
        ("[agent]\ninterval = 'soon'\n", "[agent] interval"),
        ("[agent]\ninterval = -1\n", "[agent] interval"),
        ("[watch]\npaths = '/tmp'\n", "[watch] paths"),
        ("[watch]\nmax_file_mb = 1.5\n", "[watch] max_file_mb"),
        ("[detect]\nalert_severity = 'urgent'\n", "[detect] alert_severity"),
        ("[response]\nmode = 'kill'\n", "[response] mode"),
        ("[response]\npause_severity = 'medium'\n", "[response] pause_severity"),
        ("[alerts]\nstdout = 'yes'\n", "[alerts] stdout"),
        ("[alerts]\nsyslog = '127.0.0.1:514'\n", "[alerts] syslog"),
        ("[metrics]\nlisten = '9775'\n", "[metrics] listen"),
        ("[surprise]\nx = 1\n", "[surprise]"),
        ("agent = 3\n", "[agent]"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    """An unknown key or a bad value is an error naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.key == key
    assert str(path) in str(info.value) and key in str(info.value)
    assert info.value.exit_code == 2


def test_malformed_toml_names_the_file_and_line(tmp_path):
    """A TOML syntax error says where it is."""
    path = write(tmp_path, "[agent]\ninterval = = 3\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_explicit_file_is_an_error(tmp_path):
    """A --config path that does not exist is an error, not a silent fallback."""
    with pytest.raises(ConfigError):
        config.load(tmp_path / "nope.toml")
