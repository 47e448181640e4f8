"""``minerwatch config check`` and ``minerwatch config defaults``.

``check`` loads the configuration exactly as ``minerwatch run`` does: as root, the trust checks
on the file and the signature directory it names (``agent.trust``), then the file's keys and
values, the host paths and the signature bundle. Every error names the file, the key and, when
the key is found in the file, its line (a TOML syntax error carries its own line). Exit codes:
0 valid, 2 not. ``defaults`` prints a commented configuration with every key and its default,
generated from the config dataclasses (``agent.config.render_defaults``).
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from agent.errors import ConfigError


@click.group()
def config() -> None:
    """Check a configuration file, or print the default one."""


@config.command("check")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
def check(config_path: str | None) -> int:
    """Check the configuration as `minerwatch run` would (trust checks included); exit 0 valid, 2 not."""
    from agent import config as config_mod
    from agent import logging_setup, trust

    logging_setup.configure("warning", style="command")
    try:
        cfg = trust.load_config(config_path)
        config_mod.check_host_paths(cfg)
    except ConfigError as exc:
        raise ConfigError(_with_line(exc), "", exc.message) from None
    sig = trust.load_signatures(cfg)
    if cfg.source == "<defaults>":
        click.echo(f"{config_mod.DEFAULT_PATH} does not exist: the embedded defaults apply "
                   "(`minerwatch config defaults` prints them)")
    else:
        click.echo(f"{cfg.source}: valid")
    click.echo(f"signatures {sig.version} ({sig.directory}): valid")
    return 0


@config.command("defaults")
@click.option("--path", "path", default="/etc/minerwatch/config.toml", show_default=True,
              help="Where the file will live (named in its header comment).")
def defaults(path: str) -> int:
    """Print a configuration with every key commented out at its default (a starting /etc/minerwatch/config.toml)."""
    from agent.config import render_defaults

    click.echo(render_defaults(path), nl=False)
    return 0


def _with_line(exc: ConfigError) -> str:
    """``PATH:LINE: [section] key`` when the key is found in the file; otherwise as the error had it."""
    where = f"{exc.path}: {exc.key}" if exc.key else exc.path
    line = key_line(exc.path, exc.key) if exc.key else 0
    return f"{exc.path}:{line}: {exc.key}" if line else where


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(?:#.*)?$")


def key_line(path: str, key: str) -> int:
    """The 1-based line of ``[section] key`` (or of ``[section]`` alone) in the TOML file; 0 when not found."""
    m = re.fullmatch(r"\[([^\]]+)\](?:\s+(\S+))?", key)
    if not m:
        return 0
    section, name = m.group(1), m.group(2)
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    current, header_line = None, 0
    assign = re.compile(rf"^\s*(?:{re.escape(section)}\s*\.\s*)?{re.escape(name)}\s*=") if name else None
    for number, text in enumerate(lines, 1):
        h = _HEADER.match(text)
        if h:
            current = h.group(1)
            if current == section and not header_line:
                header_line = number
            continue
        if assign is not None and current == section and assign.match(text):
            return number
    return header_line
