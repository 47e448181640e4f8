"""The ``minerwatch`` command: one module per subcommand, one top-level error handler."""

from __future__ import annotations

import sys

import click

from agent.errors import MinerwatchError
from agent.text import terminal_safe


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """minerwatch: find cryptominers among host and container processes."""


def _register() -> None:
    from agent.cli import alerts_cmd, release_cmd, run_cmd, scan_image_cmd, signatures_cmd, sweep_cmd, version_cmd

    cli.add_command(alerts_cmd.alerts)
    cli.add_command(release_cmd.release)
    cli.add_command(scan_image_cmd.scan_image)
    cli.add_command(run_cmd.run)
    cli.add_command(sweep_cmd.sweep)
    cli.add_command(signatures_cmd.signatures)
    cli.add_command(version_cmd.version)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point; typed errors print one clear line and exit with their code."""
    try:
        rv = cli.main(args=argv, prog_name="minerwatch", standalone_mode=False)
    except MinerwatchError as exc:
        click.echo(f"minerwatch: error: {terminal_safe(str(exc), keep_newlines=True)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("minerwatch: aborted", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
