"""`minerwatch config check` and `minerwatch config defaults`, and install.sh installing the default config.

The real CLI in a subprocess; the trust checks are real (the suite runs as root).
"""
from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent import config
from tests.sweeping import REPO


def mw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n' + text)
    return path


def test_check_valid_config_exits_0():
    run = mw("config", "check", "--config", str(REPO / "packaging/container/config.toml"))
    if run.returncode != 0 and "proc_root" in run.stderr:
        pytest.skip("no /host/proc here")  # the container config reads the host's /proc at /host/proc
    assert run.returncode == 0, run.stderr
    assert "valid" in run.stdout


def test_check_own_config_exits_0_and_names_signatures(tmp_path):
    run = mw("config", "check", "--config", str(write(tmp_path, "[watch]\nmax_file_mb = 64\n")))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == f"{tmp_path}/config.toml: valid"
    assert run.stdout.splitlines()[1].startswith("signatures ")


@pytest.mark.parametrize("body, line, key", [
    ('[response]\nmode = "enforce"\npause_severity = "sometimes"\n', 5, "[response] pause_severity"),
    ("\n[watch]\n# a comment\nmax_file_mb = 1\nbogus = 3\n", 7, "[watch] bogus"),
    ("[detect]\nalert_severity = 7\n", 4, "[detect] alert_severity"),
])
def test_check_bad_value_exits_2_naming_file_line_and_key(tmp_path, body, line, key):
    """A bad value or unknown key: exit 2, 'FILE:LINE: [section] key: why' (it said 'FILE: key' before)."""
    path = write(tmp_path, body)
    run = mw("config", "check", "--config", str(path))
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"minerwatch: error: {path}:{line}: {key}: "), run.stderr


def test_check_toml_syntax_error_names_its_line(tmp_path):
    path = write(tmp_path, "[watch]\nmax_file_mb = = 3\n")
    run = mw("config", "check", "--config", str(path))
    assert run.returncode == 2
    assert str(path) in run.stderr and "invalid TOML" in run.stderr and "line 4" in run.stderr, run.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the trust checks apply as root")
def test_check_applies_runs_trust_checks_to_config_and_signatures(tmp_path):
    """As `run` would: a world-writable config file, or a signature directory another user owns, exits 2 naming it."""
    path = write(tmp_path, "")
    path.chmod(0o666)
    run = mw("config", "check", "--config", str(path))
    assert run.returncode == 2
    assert f"refusing to run as root: {path}" in run.stderr and "world-writable" in run.stderr, run.stderr

    path.chmod(0o644)
    sig = tmp_path / "sigs"
    sig.mkdir()
    os.chown(sig, 65534, 65534)
    path.write_text(path.read_text().replace("[agent]\n", f'[agent]\nsignatures = "{sig}"\n'))
    run = mw("config", "check", "--config", str(path))
    assert run.returncode == 2
    assert f"refusing to run as root: {sig}" in run.stderr and "uid 65534" in run.stderr, run.stderr


def uncommented(text: str) -> str:
    """The defaults text with every '# key = value  # note' line made live."""
    out = []
    for ln in text.splitlines():
        if ln.startswith("# ") and " = " in ln.split("  #")[0]:
            ln = ln[2:].split("  #")[0].rstrip()
        out.append(ln)
    return "\n".join(out)


def test_defaults_lists_every_key_at_its_default():
    """`config defaults` parses as TOML (all commented: the defaults); uncommented, it names every key of
    every section and loads to exactly the embedded defaults."""
    run = mw("config", "defaults")
    assert run.returncode == 0, run.stderr
    assert config.from_dict(tomllib.loads(run.stdout), "x") == config.Config(source="x")
    live = tomllib.loads(uncommented(run.stdout))
    wanted = {f.name: {g.name for g in dataclasses.fields(f.default_factory)}
              for f in dataclasses.fields(config.Config) if f.name != "source"}
    assert {s: set(keys) for s, keys in live.items()} == wanted
    assert config.from_dict(live, "x") == config.Config(source="x")


def test_the_debs_conffile_is_the_generated_defaults():
    """packaging/deb/config.toml is `minerwatch config defaults` (regenerate it when a key is added)."""
    assert (REPO / "packaging/deb/config.toml").read_text() == config.render_defaults()


def test_install_sh_installs_the_default_config_once_0644(tmp_path):
    """install.sh writes ETC/config.toml from `config defaults` (0644, root) when none exists, keeps an
    existing one. pip is stubbed (the prefix's minerwatch runs this checkout); everything else is real."""
    prefix, etc, link = tmp_path / "opt", tmp_path / "etc", tmp_path / "bin" / "minerwatch"
    (prefix / "bin").mkdir(parents=True)
    link.parent.mkdir()
    (prefix / "bin" / "python").symlink_to(sys.executable)
    (prefix / "bin" / "pip").write_text("#!/bin/sh\nexit 0\n")
    (prefix / "bin" / "minerwatch").write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m agent "$@"\n')
    for name in ("pip", "minerwatch"):
        (prefix / "bin" / name).chmod(0o755)
    env = {**os.environ, "MINERWATCH_PREFIX": str(prefix), "MINERWATCH_ETC": str(etc), "MINERWATCH_LINK": str(link)}
    run = subprocess.run(["bash", str(REPO / "scripts/install.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    cfg = etc / "config.toml"
    st = cfg.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and (os.geteuid() != 0 or st.st_uid == 0)
    assert cfg.read_text() == config.render_defaults(str(cfg))
    assert f"installed {cfg}" in run.stdout
    assert link.is_symlink()
    assert not list(etc.glob(".config.toml.*"))

    cfg.write_text("[agent]\ninterval = 7\n")
    again = subprocess.run(["bash", str(REPO / "scripts/install.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert cfg.read_text() == "[agent]\ninterval = 7\n"
    assert f"kept {cfg}" in again.stdout
