"""``minerwatch version``: the agent's version and the signature bundle's."""

from __future__ import annotations

import click

from agent import __version__


@click.command()
@click.option("--signatures", "sig_dir", default=None, help="Signature bundle directory (default: the bundled one).")
def version(sig_dir: str | None) -> int:
    """Print the version and the signature bundle version."""
    from agent.signatures import load_bundle

    sig = load_bundle(sig_dir)
    click.echo(f"minerwatch {__version__}")
    click.echo(f"signatures {sig.version} ({sig.directory})")
    return 0
