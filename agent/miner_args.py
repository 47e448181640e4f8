"""What a miner's command line says about its configuration (pure; shared by collectors and detectors).

``-c`` means "run this code" to every shell and interpreter (``sh -c``, ``python -c``, ``perl -e``...),
so a file of that name in a shared working directory is whatever its writer wants: it is never a
config path for them, nor is ``--config`` (an option of their script, not of a miner). For other
programs ``--config FILE`` / ``--config=FILE`` name a config; the short ``-c FILE`` (``gcc -c``,
``tar -c``, ``ssh -c``) only for a process that otherwise looks like a miner, which the caller
decides where those facts are (``short_c``: the detectors know names, hashes and YARA hits).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_MAX_CONFIG_ARGS = 4
_MAX_ARG_LEN = 4096

# Shells and interpreters, by executable basename (versions such as python3.11, perl5.36, lua5.4 too).
INTERPRETERS = frozenset({
    "sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "pdksh", "yash", "csh", "tcsh", "fish", "rbash", "busybox",
    "toybox", "python", "pypy", "perl", "ruby", "jruby", "node", "nodejs", "deno", "bun", "php", "php-cgi", "lua",
    "luajit", "tclsh", "wish", "expect", "awk", "gawk", "mawk", "nawk", "pwsh", "powershell", "rscript", "julia",
    "guile", "sbcl", "ocaml", "elixir", "erl", "escript", "groovy", "jshell", "osascript", "vim", "nvim", "emacs",
})
_VERSIONED = re.compile(r"^(python|pypy|perl|ruby|php|lua|node|tclsh|wish|pwsh|guile)[0-9][0-9.]*[a-z]?$")


_MULTI_CALL = frozenset({"busybox", "toybox"})  # the applet is argv[0]: "sh" is a shell, "sleep" is not


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1].lower().removeprefix("-")  # "-bash": a login shell


def is_interpreter(exe: str, argv0: str = "") -> bool:
    """Is the process a shell or an interpreter, by the basename of its executable (of argv[0] for a
    multi-call binary such as busybox, and when the executable is unknown)?"""
    name, applet = _base(exe), _base(argv0)
    names = (applet,) if name in _MULTI_CALL or not name else (name, applet)
    return any(n and (n in INTERPRETERS or _VERSIONED.match(n)) for n in names)


def config_args(cmdline: Sequence[str], *, exe: str = "", short_c: bool = True) -> list[str]:
    """The values of ``-c FILE`` (only with ``short_c``), ``--config FILE`` and ``--config=FILE``;
    none at all for a shell or an interpreter (``exe`` or ``cmdline[0]``)."""
    if is_interpreter(exe, cmdline[0] if cmdline else ""):
        return []
    found: list[str] = []
    for i, arg in enumerate(cmdline[1:], start=1):
        value = None
        if (arg == "--config" or (short_c and arg == "-c")) and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--config="):
            value = arg[len("--config="):]
        if value and len(value) <= _MAX_ARG_LEN and "\x00" not in value and "\n" not in value:
            found.append(value)
            if len(found) >= _MAX_CONFIG_ARGS:
                break
    return found
