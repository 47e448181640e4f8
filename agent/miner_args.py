"""What a miner's command line says about its configuration (pure; shared by collectors and detectors)."""

from __future__ import annotations

from collections.abc import Sequence

_MAX_CONFIG_ARGS = 4
_MAX_ARG_LEN = 4096


def config_args(cmdline: Sequence[str]) -> list[str]:
    """The values of ``-c FILE``, ``--config FILE`` and ``--config=FILE`` on a command line."""
    found: list[str] = []
    for i, arg in enumerate(cmdline[1:], start=1):
        value = None
        if arg in ("-c", "--config") and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--config="):
            value = arg[len("--config="):]
        if value and len(value) <= _MAX_ARG_LEN and "\x00" not in value and "\n" not in value:
            found.append(value)
            if len(found) >= _MAX_CONFIG_ARGS:
                break
    return found
