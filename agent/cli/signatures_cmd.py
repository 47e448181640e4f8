"""``minerwatch signatures check [DIR]``: validate a bundle and print what it holds."""

from __future__ import annotations

import json

import click


@click.group()
def signatures() -> None:
    """Inspect signature bundles."""


@signatures.command("check")
@click.argument("directory", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(directory: str | None, as_json: bool) -> int:
    """Validate a signature bundle (default: the bundled one); exit 0 valid, 2 invalid."""
    from agent.signatures import check_bundle, describe

    sig, issues = check_bundle(directory)
    if as_json:
        out = {"valid": not issues, "issues": [str(i) for i in issues]}
        if sig is not None:
            out["bundle"] = describe(sig)
        click.echo(json.dumps(out, indent=2))
    else:
        if sig is not None:
            for key, value in describe(sig).items():
                click.echo(f"{key:>18}: {value}")
        for issue in issues:
            click.echo(f"error: {issue}", err=True)
        click.echo(f"{len(issues)} problem(s) found" if issues else "bundle is valid", err=bool(issues))
    return 2 if issues else 0
