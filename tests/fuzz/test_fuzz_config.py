"""Fuzz the configuration loader: any file or parsed table gives a valid Config or a ConfigError, nothing else."""
from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import config
from agent.errors import ConfigError
from tests.fuzz.fuzzing import FUZZ, inputs, seed_ids, seed_paths

SECTIONS = {
    "agent": {"interval": float, "state_dir": str, "signatures": str, "proc_root": str},
    "docker": {"url": str},
    "watch": {"paths": list, "max_file_mb": int},
    "detect": {"alert_severity": str},
    "images": {"allow": list},
    "response": {"mode": str, "pause_severity": str, "protect": list, "stop_host_processes": bool},
    "alerts": {"stdout": bool, "file": str, "syslog": str, "webhook": str, "webhook_secret_file": str,
               "dedupe_minutes": float},
    "metrics": {"listen": str},
}
WORDS = ("/tmp", "/var/lib/minerwatch", "unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "medium", "critical",
         "enforce", "observe", "off", "high", "udp://127.0.0.1:514", "http://127.0.0.1:8080/x", "127.0.0.1:9775",
         "", "relative", "\x00", "\udcff", "::1:80")


def check_valid(cfg: config.Config) -> None:
    """What every Config the loader hands out guarantees."""
    assert math.isfinite(cfg.agent.interval) and cfg.agent.interval >= 0.5
    assert math.isfinite(cfg.alerts.dedupe_minutes) and cfg.alerts.dedupe_minutes >= 0
    assert isinstance(cfg.watch.max_file_mb, int) and cfg.watch.max_file_mb >= 1
    assert cfg.agent.state_dir.startswith("/") and cfg.agent.proc_root.startswith("/")
    assert all(p.startswith("/") for p in cfg.watch.paths)
    assert cfg.response.mode in ("enforce", "observe")
    assert cfg.response.pause_severity in ("off", "high", "critical")
    assert cfg.alert_severity is not None  # the word parses


def load_bytes(tmp_path_factory, data: bytes):
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_bytes(data)
    try:
        cfg = config.load(path)
    except ConfigError as exc:
        assert exc.exit_code == 2 and exc.path == str(path) and str(exc)
        return None
    check_valid(cfg)
    return cfg


@pytest.mark.parametrize("path", seed_paths("config"), ids=seed_ids("config"))
def test_corpus_replays_to_config_or_config_error(path, tmp_path_factory):
    """Each seed file loads to a valid Config (good-*) or fails with a ConfigError (bad-*)."""
    cfg = load_bytes(tmp_path_factory, path.read_bytes())
    assert (cfg is None) == path.name.startswith("bad-"), path.name


@FUZZ
@given(data=inputs("config", max_random=2048))
def test_mutated_files_load_or_raise_config_error(data, tmp_path_factory):
    """Any bytes in a config file: a valid Config or a ConfigError (never another exception)."""
    load_bytes(tmp_path_factory, data)


scalar = st.one_of(st.booleans(), st.integers(-2**70, 2**70), st.integers(-10**400, 10**400),
                   st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS), st.text(max_size=40))
value = st.one_of(scalar, st.lists(scalar, max_size=4), st.dictionaries(st.text(max_size=8), scalar, max_size=3))


@st.composite
def tables(draw):
    """Parsed-TOML-like dicts: mostly known sections and keys, with any values, sometimes unknown names."""
    out = {}
    for name in draw(st.lists(st.sampled_from([*SECTIONS, "extra"]), max_size=5, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            out[name] = draw(scalar)
            continue
        keys = list(SECTIONS.get(name, {})) + ["bogus"]
        out[name] = {k: draw(value) for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))}
    return out


@FUZZ
@given(data=tables())
def test_from_dict_gives_valid_config_or_error_naming_the_key(data):
    """Any parsed table: a valid Config, or a ConfigError that names a section or key present in the input."""
    try:
        cfg = config.from_dict(data, "fuzz.toml")
    except ConfigError as exc:
        assert exc.path == "fuzz.toml" and exc.key.startswith("[")
        section = exc.key[1:].split("]", 1)[0]
        assert section in data, exc
        return
    check_valid(cfg)


@FUZZ
@given(interval=st.floats(0.5, 1e6), paths=st.lists(st.text(min_size=1, max_size=20).map(lambda s: "/" + s), max_size=4),
       mb=st.integers(1, 1 << 20), stdout=st.booleans())
def test_valid_values_round_trip_exactly(interval, paths, mb, stdout):
    """Values within their documented ranges come back unchanged from from_dict."""
    cfg = config.from_dict({"agent": {"interval": interval}, "watch": {"paths": paths, "max_file_mb": mb},
                            "alerts": {"stdout": stdout}})
    assert (cfg.agent.interval, list(cfg.watch.paths), cfg.watch.max_file_mb, cfg.alerts.stdout) == \
        (interval, paths, mb, stdout)


def test_non_finite_or_huge_numbers_are_rejected_with_the_key():
    """nan, inf and huge integers (valid TOML) are refused with the key, not an OverflowError or a silent stop."""
    for text, key in (("[agent]\ninterval = nan\n", "[agent] interval"), ("[agent]\ninterval = inf\n", "[agent] interval"),
                      ("[alerts]\ndedupe_minutes = nan\n", "[alerts] dedupe_minutes"),
                      ("[watch]\nmax_file_mb = 1" + "0" * 400 + "\n", "[watch] max_file_mb")):
        with pytest.raises(ConfigError) as info:
            config.from_dict(tomllib.loads(text))
        assert info.value.key == key
