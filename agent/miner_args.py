"""What a miner's command line says about its configuration (pure; shared by collectors and detectors).

``-c`` means "run this code" to every shell and interpreter (``sh -c``, ``python -c``, ``perl -e``...),
so a file of that name in a shared working directory is whatever its writer wants: it is never a
config path for them, nor is ``--config`` (an option of their script, not of a miner). For other
programs ``--config FILE`` / ``--config=FILE`` (XMRig, cpuminer-opt, xmr-stak) and ``--config-file FILE``
(SRBMiner-MULTI) name a config; the short ``-c FILE`` (``gcc -c``,
``tar -c``, ``ssh -c``) only for a process that otherwise looks like a miner, which the caller
decides where those facts are (``short_c``: the detectors know names, hashes and YARA hits).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_MAX_CONFIG_ARGS = 4
_MAX_ARG_LEN = 4096
# Long options that name a miner's config file, per family:
#   --config      XMRig (``-c, --config=FILE``: xmrig/xmrig src/base/kernel/config/BaseTransform / --help),
#                 cpuminer-opt and cpuminer-multi (``-c, --config=FILE``: JayDDee/cpuminer-opt README/--help),
#                 xmr-stak (``-c, --config FILE``: fireice-uk/xmr-stak doc/usage.md)
#   --config-file SRBMiner-MULTI (``--config-file FILE``: doktor83/SRBMiner-Multi README, "Parameters")
#   --poolconf    xmr-stak pools file (``-C, --poolconf FILE``: fireice-uk/xmr-stak doc/usage.md)
CONFIG_OPTIONS = ("--config", "--config-file", "--poolconf")
# Options only miners take (one is enough), and options miners share with other tools (two needed):
# what makes a bare ``--url host:port`` a pool rather than a tunnel's or a proxy's target.
_MINER_OPTIONS = ("--algo", "--coin", "--donate-level", "--rig-id", "--nicehash", "--tls-fingerprint", "--randomx",
                  "--cpu-max-threads-hint", "--cpu-priority", "--cpu-affinity", "--huge-pages", "--no-huge-pages",
                  "--asm", "--pool", "--wallet", "--worker")
_SHARED_OPTIONS = frozenset({"-u", "--user", "-p", "--pass", "-t", "--threads", "-k", "--keepalive", "--tls", "-a",
                             "-B", "--background"})

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
    """The values of ``-c FILE`` (only with ``short_c``) and of ``CONFIG_OPTIONS`` (``--config FILE``,
    ``--config=FILE``, ``--config-file FILE``...);
    none at all for a shell or an interpreter (``exe`` or ``cmdline[0]``)."""
    if is_interpreter(exe, cmdline[0] if cmdline else ""):
        return []
    found: list[str] = []
    for i, arg in enumerate(cmdline[1:], start=1):
        value = None
        name, eq, inline = arg.partition("=")
        if (arg in CONFIG_OPTIONS or (short_c and arg == "-c")) and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif eq and name in CONFIG_OPTIONS:
            value = inline
        if value and len(value) <= _MAX_ARG_LEN and "\x00" not in value and "\n" not in value:
            found.append(value)
            if len(found) >= _MAX_CONFIG_ARGS:
                break
    return found


def miner_shaped(cmdline: Sequence[str]) -> bool:
    """Does the command line carry a miner's options besides a pool address: one option only miners take
    (``--algo``, ``--donate-level``, ``--coin``...), or two that miners share with other tools (``-u``,
    ``-p``, ``-t``, ``-k``...)? ``tunnel --url 127.0.0.1:8080`` is not; ``xmrig --url h:p -u W -p x`` is."""
    shared = set()
    for arg in cmdline[1:64]:
        name = arg.partition("=")[0]
        if name.startswith(_MINER_OPTIONS):
            return True
        if name in _SHARED_OPTIONS:
            shared.add(name.lstrip("-")[:1])
    return len(shared) >= 2


def url_by_dash_o(cmdline: Sequence[str]) -> bool:
    """Is a URL given with ``-o URL`` / ``-oURL`` (the cpuminer and XMRig pool flag), not a generic ``--url``?"""
    return any(a == "-o" or (a.startswith("-o") and ":" in a) for a in cmdline[1:64])


def looks_like_a_miner(proc, signatures) -> bool:
    """By name (executable, the program behind a loader, argv[0], comm), a known hash or a miner YARA hit on a
    file: the facts that make ``-c FILE`` a miner's config and a bare ``--url host:port`` its pool."""
    argv0 = proc.cmdline[0].rsplit("/", 1)[-1] if proc.cmdline else ""
    names = {n.lower() for n in (proc.exe_name, getattr(proc, "program_name", ""), argv0, proc.name) if n}
    if names & signatures.miner_names.keys() or any(h.category == "miner" for h in proc.yara):
        return True
    if proc.name and len(proc.name) == 15 and any(n[:15] == proc.name.lower() for n in signatures.miner_names):
        return True  # comm is cut to 15 characters
    digests = [getattr(h, a) for h in (proc.hashes, getattr(proc, "program_hashes", None)) if h is not None
               for a in ("sha256", "sha1", "md5")]
    return any(d in signatures.hashes for d in digests)
