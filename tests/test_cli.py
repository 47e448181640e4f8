"""The command line as users call it: entry points, exit codes, and the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.sweeping import REPO


def mw(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_version_prints_agent_and_bundle_versions():
    """`minerwatch version` names the agent version and the signature bundle version."""
    from agent import __version__
    from agent.signatures import load_bundle

    out = mw("version")
    assert out.returncode == 0
    assert f"minerwatch {__version__}" in out.stdout and load_bundle().version in out.stdout


def test_signatures_check_valid_bundle_exits_0():
    """The bundled signatures check clean and the JSON output describes them."""
    out = mw("signatures", "check", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["valid"] is True and data["issues"] == []


def test_signatures_check_bad_bundle_exits_2_with_every_issue():
    """A broken bundle exits 2 and lists bad entries with file and line."""
    out = mw("signatures", "check", str(REPO / "tests" / "data" / "bad_bundle"))
    assert out.returncode == 2
    assert "hashes.txt:" in out.stderr and "7 problems found" in out.stderr


def test_signatures_check_aligns_its_facts_and_prints_no_python_dict():
    """One fact a line, every value starting in the same column; a mapping (disabled YARA files) is
    'name (why)', never a Python dict."""
    out = mw("signatures", "check")
    assert out.returncode == 0, out.stderr
    facts = out.stdout.splitlines()[:-1]
    assert out.stdout.splitlines()[-1] == "bundle is valid"
    columns = {len(ln) - len(ln.split("  ", 1)[1].lstrip()) for ln in facts if ln.strip() and not ln.startswith(" ")}
    assert len(columns) == 1, out.stdout
    assert "{" not in out.stdout and "'" not in out.stdout.split("YARA files disabled", 1)[1].split("(", 1)[0]
    assert any(ln.startswith("YARA files disabled ") and "noisy.yar (" in ln for ln in facts), out.stdout


def test_signatures_manifest_regenerates_an_edited_bundle_and_the_hint_names_it(tmp_path):
    """An edited copy of the bundle fails with a hint naming `minerwatch signatures manifest DIR` (not the
    repository's script, which pip and .deb users do not have); that command makes it valid again."""
    bundle = tmp_path / "sigs"
    shutil.copytree(REPO / "signatures", bundle, ignore=shutil.ignore_patterns("__pycache__"))
    with open(bundle / "miner_names.txt", "a") as f:
        f.write("mwtestminer | minerwatch: a name added by this test\n")
    bad = mw("signatures", "check", str(bundle))
    assert bad.returncode == 2
    assert "update_manifest" not in bad.stdout + bad.stderr
    assert f"minerwatch signatures manifest {bundle}" in bad.stderr, bad.stderr
    fixed = mw("signatures", "manifest", str(bundle))
    assert fixed.returncode == 0, fixed.stderr
    assert mw("signatures", "check", str(bundle)).returncode == 0
    assert "mwtestminer" in (bundle / "miner_names.txt").read_text()


def test_signatures_manifest_refuses_a_directory_that_is_no_bundle(tmp_path):
    out = mw("signatures", "manifest", str(tmp_path))
    assert out.returncode == 2 and "not a signature bundle" in out.stderr
    assert not (tmp_path / "MANIFEST.sha256").exists()


def test_unknown_subcommand_exits_2():
    """Usage errors exit 2 like every other error."""
    assert mw("frobnicate").returncode == 2


def test_console_script_is_installed():
    """The `minerwatch` console script behaves like `python -m agent`."""
    script = Path(sys.executable).parent / "minerwatch"
    out = subprocess.run([str(script), "version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("minerwatch ")


def test_built_wheel_carries_signatures_and_works_without_the_source_tree(tmp_path):
    """The wheel holds the bundle and schema; unpacked alone, it validates its bundle from any directory."""
    # Build from a clean copy: setuptools reuses ./build, where stale files would slip into the wheel.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".ruff_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("minerwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "minerwatch_signatures/MANIFEST.sha256" in names
    assert any(n.startswith("minerwatch_signatures/yara/") for n in names)
    assert "agent/schema/alert.schema.json" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = mw("signatures", "check", "--json", cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stderr
    probe = subprocess.run([sys.executable, "-c", "import agent, agent.signatures as s; print(agent.__file__); "
                            "print(s.load_bundle().directory)"], capture_output=True, text=True, cwd=elsewhere,
                           env=env, timeout=60)
    agent_file, bundle_dir = probe.stdout.split()
    assert agent_file.startswith(str(site)) and bundle_dir.startswith(str(site)), probe.stdout


def test_docs_stand_alone_and_signature_sources_cite_nothing_users_lack():
    """README and docs/ point only inside the repository (no ../shared/PRODUCT.md); no signature source
    cites it; every docs/ file the README names exists."""
    texts = {p: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
    for path, text in texts.items():
        assert "PRODUCT.md" not in text and "../shared" not in text, path
    for path in (REPO / "signatures").rglob("*"):
        if path.is_file() and path.suffix in (".txt", ".md", ".toml", ".yar"):
            assert "spec:PRODUCT" not in path.read_text(), path
    import re

    named = set(re.findall(r"\bdocs/[A-Za-z0-9_.-]+\.md\b", texts[REPO / "README.md"]))
    assert "docs/CONTRACT.md" in named
    for rel in named:
        assert (REPO / rel).is_file(), rel


def test_contract_lists_every_command_and_config_key():
    """docs/CONTRACT.md names every top-level command and every configuration key."""
    import dataclasses

    from agent import config
    from agent.cli.main import cli

    text = (REPO / "docs" / "CONTRACT.md").read_text()
    for name in cli.commands:
        assert f"`minerwatch {name}" in text, name
    for f in dataclasses.fields(config.Config):
        if f.name == "source":
            continue
        for key in dataclasses.fields(f.default_factory):
            assert key.name in text and f"[{f.name}]" in text, (f.name, key.name)
