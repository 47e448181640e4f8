"""The ``minerwatch`` command: one module per subcommand, one top-level error handler.

Exit codes every command shares: 2 a usage or configuration error (the message names what),
130 interrupted (Ctrl-C), as a shell reports a command killed by SIGINT.
"""

from __future__ import annotations

import sys

import click

from agent import __version__
from agent.errors import MinerwatchError
from agent.text import terminal_safe

EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="minerwatch", message="%(prog)s %(version)s")
def cli() -> None:
    """minerwatch: find cryptominers among host and container processes."""


def _register() -> None:
    # Plain imports (not __import__): PyInstaller finds the subcommands by reading these.
    from agent.cli import (alerts_cmd, config_cmd, release_cmd, run_cmd, scan_cmd, scan_image_cmd, signatures_cmd,
                           sweep_cmd, version_cmd)

    cli.add_command(alerts_cmd.alerts)
    cli.add_command(config_cmd.config)
    cli.add_command(release_cmd.release)
    cli.add_command(scan_image_cmd.scan_image)
    cli.add_command(scan_cmd.scan)
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
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt)
        click.echo("minerwatch: interrupted" if interrupted else "minerwatch: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED if interrupted else 2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
