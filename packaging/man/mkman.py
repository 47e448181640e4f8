#!/usr/bin/env python3
"""Write the minerwatch(1) man page (roff) from the click commands themselves, so it cannot drift.

    python3 packaging/man/mkman.py [OUT]      (default: stdout; run from the checkout or with
                                               PYTHONPATH pointing at it)

Walks every command and sub-command of ``agent.cli.main.cli``: its usage, help text, options and
arguments. The exit codes and files come from docs/CONTRACT.md's rules, stated once below.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import click  # noqa: E402

from agent import __version__  # noqa: E402
from agent.cli.main import cli  # noqa: E402

TAIL = r""".SH EXIT STATUS
.TP
.B 0
nothing at or above the threshold (sweep, scan-image), valid (checks), delivered (alerts test)
.TP
.B 1
findings (sweep, scan-image); a sink failed (alerts test)
.TP
.B 2
an error: bad usage, configuration, signature bundle or trust check (the message names the file, line and key)
.TP
.B 130
interrupted (Ctrl-C)
.SH ENVIRONMENT
.TP
.B MINERWATCH_LOG_FORMAT=json
a command's own warnings as JSON records instead of one readable line
.SH FILES
.TP
.I /etc/minerwatch/config.toml
configuration (\fBminerwatch config defaults\fR prints every key at its default)
.TP
.I /var/lib/minerwatch
state: alert spool, pause records, quarantine
.TP
.I /var/log/minerwatch/alerts.jsonl
alerts, one JSON object a line
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1);
/usr/share/doc/minerwatch/README.md
"""


def esc(text: str) -> str:
    """Roff-safe text: backslashes doubled, a leading dot or quote guarded, hyphens as minus signs."""
    out = []
    for line in text.replace("\\", "\\\\").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def command_pages(cmd: click.Command, path: list[str], ctx: click.Context) -> list[str]:
    lines: list[str] = []
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            sub = cmd.commands[name]
            if not sub.hidden:
                lines += command_pages(sub, path + [name], click.Context(sub, info_name=name, parent=ctx))
        return lines
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines += [f".SS {esc(' '.join(path))}", f".B {esc(' '.join(path))}", esc(usage), ".PP",
              esc(click.unstyle((cmd.help or "").strip()).replace("\b\n", ""))]
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        lines += [".TP", f".B {esc(opts)}", esc(help_text or "")]
    return lines


def render() -> str:
    when = datetime.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or
                                           datetime.datetime.now().timestamp(), datetime.timezone.utc)
    ctx = click.Context(cli, info_name="minerwatch")
    head = [
        f'.TH MINERWATCH 1 "{when:%Y-%m-%d}" "minerwatch {__version__}" "User Commands"',
        ".SH NAME", "minerwatch \\- find cryptominers among host and container processes",
        ".SH SYNOPSIS", ".B minerwatch", "[\\-\\-version] [\\-h] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION", esc((cli.help or "").strip()),
        "Each command below; \\fBminerwatch COMMAND \\-\\-help\\fR says the same.",
        ".SH COMMANDS",
    ]
    return "\n".join(head + command_pages(cli, ["minerwatch"], ctx)) + "\n" + TAIL


def main(argv: list[str]) -> int:
    text = render()
    if len(argv) > 1:
        Path(argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
