"""``minerwatch signatures check [DIR]`` and ``minerwatch signatures manifest DIR``.

``check`` validates a bundle and prints what it holds, aligned, one fact a line; every bad entry
with its file and line. ``manifest`` rewrites a custom bundle's ``MANIFEST.sha256`` after it was
edited (the same rule the loader verifies: every file but hidden ones and ``__pycache__``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click

# A digest that no longer matches: the loader's own words name the repository's script; a user of the
# package or of pip has this command instead.
_SCRIPT_HINT = " (changed without running scripts/update_manifest.py?)"
_LABELS = {"yara_files_disabled": "YARA files disabled", "yara_rules": "YARA rules"}


@click.group()
def signatures() -> None:
    """Inspect signature bundles."""


def _label(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " "))


def _value(value) -> list[str]:
    """A described value as text lines: a mapping is one ``name (why)`` line each, ``none`` when empty."""
    if isinstance(value, dict):
        return [f"{k} ({v})" for k, v in value.items()] or ["none"]
    if isinstance(value, (list, tuple)):
        return [", ".join(map(str, value)) or "none"]
    return [str(value)]


def manifest_hint(directory: str | None) -> str:
    if directory is None:
        return ("hint: the bundled signatures are verified as installed; reinstall minerwatch if they fail "
                "(apt install --reinstall minerwatch, or pip install --force-reinstall minerwatch)")
    return (f"hint: if you edited this bundle on purpose, regenerate its manifest with "
            f"`minerwatch signatures manifest {directory}` and check it again")


@signatures.command("check")
@click.argument("directory", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(directory: str | None, as_json: bool) -> int:
    """Validate a signature bundle (default: the bundled one); exit 0 valid, 2 invalid."""
    from agent.signatures import check_bundle, describe

    sig, issues = check_bundle(directory)
    texts = [str(i).replace(_SCRIPT_HINT, "") for i in issues]
    manifest_trouble = any("MANIFEST.sha256" in t for t in texts)
    if as_json:
        out = {"valid": not issues, "issues": texts}
        if sig is not None:
            out["bundle"] = describe(sig)
        click.echo(json.dumps(out, indent=2))
        return 2 if issues else 0
    if sig is not None:
        facts = describe(sig)
        width = max(len(_label(k)) for k in facts)
        for key, value in facts.items():
            lines = _value(value)
            click.echo(f"{_label(key):<{width}}  {lines[0]}")
            for more in lines[1:]:
                click.echo(f"{'':<{width}}  {more}")
    for text in texts:
        click.echo(f"error: {text}", err=True)
    if issues:
        click.echo(f"{len(issues)} problem{'' if len(issues) == 1 else 's'} found", err=True)
        if manifest_trouble:
            click.echo(manifest_hint(directory), err=True)
    else:
        click.echo("bundle is valid")
    return 2 if issues else 0


@signatures.command("manifest")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
def manifest(directory: str) -> int:
    """Rewrite DIRECTORY/MANIFEST.sha256 after editing a custom bundle, then check the bundle (exit 0 valid, 2 not)."""
    from agent.errors import MinerwatchError
    from agent.signature_bundle import MANIFEST, META_FILE, bundle_files
    from agent.signatures import check_bundle

    root = Path(directory)
    if not (root / META_FILE).is_file():
        raise MinerwatchError(f"{root}: not a signature bundle (no {META_FILE})")
    text = "".join(f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}\n" for rel in bundle_files(root))
    target = root / MANIFEST
    tmp = target.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    click.echo(f"{target}: written ({text.count(chr(10))} files)")
    _, issues = check_bundle(directory)
    for issue in issues:
        click.echo(f"error: {issue}", err=True)
    click.echo(f"{len(issues)} problem{'' if len(issues) == 1 else 's'} found" if issues else "bundle is valid",
               err=bool(issues))
    return 2 if issues else 0
