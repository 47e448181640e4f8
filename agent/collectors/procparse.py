"""Pure parsing of procfs text: status, cmdline, environ, namespace and ``exe`` links.

No I/O here (``procread`` reads, ``procfs`` collects): these functions take the bytes or
text the kernel gave and never raise on odd input except where documented (``parse_ns_link``).
Text from the kernel becomes valid UTF-8 with undecodable bytes shown as ``\\xNN``
(``decode``), so it can go into JSON alerts as is.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Iterable

CMDLINE_MAX_CHARS = 64 << 10  # the command line kept: first half and last half of the args
ARG_MAX_CHARS = 4096  # one argument longer than this is cut (padding must not hide what follows)
ENV_VALUE_MAX = 1024
ENV_MAX_VARS = 32

# Environment variables kept (the rest of the environment is never stored).
ENV_NAMES = frozenset({"ALGO", "ALGORITHM", "COIN", "WORKER", "WORKER_NAME", "RIG_ID", "DONATE_LEVEL",
                       "CPU_THREADS", "THREADS_HINT"})
ENV_NAME_PATTERN = re.compile(r"^(?:POOL|WALLET|XMRIG|XMR_|MINING|MINER|MONERO|NICEHASH)|STRATUM|WALLET")
ENV_VALUE_PATTERN = re.compile(rb"stratum[0-9]?\+(?:tcp|ssl|tls)://", re.IGNORECASE)
# Kept names that look like secrets keep their name but not their value.
ENV_SECRET_PATTERN = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|API_?KEY|CREDENTIAL|SEED|MNEMONIC")
REDACTED = "<redacted>"


def decode(raw: bytes) -> str:
    """Bytes from the kernel as valid UTF-8 text (undecodable bytes become ``\\xNN``)."""
    return raw.decode("utf-8", "backslashreplace")


def parse_status(text: str) -> dict:
    """``Name`` and the real ``Uid`` from ``/proc/PID/status``."""
    out: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            out["name"] = value.strip()
        elif key == "Uid":
            ids = value.split()
            if ids and ids[0].isascii() and ids[0].isdigit():  # malformed: no uid (the snapshot says partial)
                out["uid"] = int(ids[0])
        if "name" in out and "uid" in out:
            break
    return out


def split_cmdline(raw: bytes) -> list[str]:
    """Arguments from ``/proc/PID/cmdline`` (NUL-separated; space-separated after setproctitle)."""
    raw = raw.rstrip(b"\x00")  # setproctitle pads the old argv area with NULs
    if not raw:
        return []
    args = raw.split(b"\x00")
    if len(args) == 1 and b" " in args[0]:
        args = args[0].split(b" ")  # title rewritten in place: one string with spaces
    return [decode(a) for a in args]


def cap_cmdline(args: list[str], max_chars: int = CMDLINE_MAX_CHARS,
                arg_max: int = ARG_MAX_CHARS) -> tuple[list[str], bool]:
    """``(args, truncated)``: each argument cut to ``arg_max`` and, past ``max_chars`` in
    total, the middle arguments dropped so both the start and the end survive padding."""
    truncated = False
    out = []
    for a in args:
        if len(a) > arg_max:
            a, truncated = a[:arg_max] + "\u2026", True
        out.append(a)
    if sum(len(a) + 1 for a in out) <= max_chars:
        return out, truncated
    half = max_chars // 2
    head, size = [], 0
    for a in out:
        if size + len(a) + 1 > half:
            break
        head.append(a)
        size += len(a) + 1
    tail, size = [], 0
    for a in reversed(out[len(head):]):
        if size + len(a) + 1 > half:
            break
        tail.append(a)
        size += len(a) + 1
    tail.reverse()
    dropped = len(out) - len(head) - len(tail)
    return head + [f"\u2026[{dropped} arguments omitted]\u2026"] + tail, True


_ENV_WORDS = (b"POOL", b"WALLET", b"XMR", b"MINING", b"MINER", b"MONERO", b"NICEHASH", b"STRATUM")


@functools.lru_cache(maxsize=16)
def _env_words(extra: frozenset[str]) -> tuple[bytes, ...]:
    """Upper-case words one of which any kept variable contains (in its name, or 'STRATUM' in its value)."""
    words = set(_ENV_WORDS) | {n.encode() for n in ENV_NAMES} | {n.encode("utf-8", "surrogateescape") for n in extra}
    return tuple(sorted(words))


def filter_environ(raw: bytes, extra_names: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """Only the miner-relevant variables of ``/proc/PID/environ``; secrets redacted, values capped."""
    extra = frozenset(n.upper() for n in extra_names)
    upper_raw = raw.upper()  # a plain substring scan skips most environments at once
    if not any(w in upper_raw for w in _env_words(extra)):
        return ()
    kept: list[tuple[str, str]] = []
    for entry in raw.split(b"\x00"):
        name_b, eq, value_b = entry.partition(b"=")
        if not eq or not name_b:
            continue
        name = decode(name_b)
        upper = name.upper()
        if not (upper in ENV_NAMES or upper in extra or ENV_NAME_PATTERN.search(upper)
                or ENV_VALUE_PATTERN.search(value_b)):
            continue
        value = REDACTED if ENV_SECRET_PATTERN.search(upper) else decode(value_b[:ENV_VALUE_MAX])
        kept.append((name[:256], value))
        if len(kept) >= ENV_MAX_VARS:
            break
    return tuple(kept)


HOME_MAX = 4096


def environ_home(raw: bytes) -> str:
    """``HOME`` from a raw ``/proc/PID/environ`` (the last one wins, as getenv does not promise otherwise):
    an absolute, normalised path of at most ``HOME_MAX`` bytes, or "". Kept apart from the alert's
    environment (``filter_environ``): it only tells ``minerconfig`` where ``$HOME/.xmrig.json`` is."""
    home = b""
    at = 0 if raw.startswith(b"HOME=") else raw.find(b"\x00HOME=")
    while at >= 0:
        start = at if raw.startswith(b"HOME=", at) else at + 1
        end = raw.find(b"\x00", start)
        home = raw[start + 5:end if end >= 0 else len(raw)]
        at = raw.find(b"\x00HOME=", start)
    if not home.startswith(b"/") or len(home) > HOME_MAX or b"\n" in home:
        return ""
    return posixpath.normpath(decode(home))


LD_PRELOAD_MAX = 1024


def environ_ld_preload(raw: bytes) -> str:
    """Every ``LD_PRELOAD`` of a raw ``/proc/PID/environ`` (ld.so reads the last, getenv the first: all
    of them, space-joined), capped at ``LD_PRELOAD_MAX`` bytes, or "". Kept apart from the alert's
    environment (``filter_environ``) as HOME is: detectors.hiding judges where its libraries are."""
    if b"LD_PRELOAD=" not in raw:
        return ""
    values = [entry[len(b"LD_PRELOAD="):] for entry in raw.split(b"\x00") if entry.startswith(b"LD_PRELOAD=")]
    return decode(b" ".join(v for v in values if v)[:LD_PRELOAD_MAX])


def parse_ns_link(target: str) -> int:
    """The inode in a namespace link ``net:[4026531992]``; ValueError otherwise."""
    lb, rb = target.find("["), target.rfind("]")
    if lb < 0 or rb < lb:
        raise ValueError(f"not a namespace link: {target!r}")
    return int(target[lb + 1:rb])


def strip_deleted(target: str) -> tuple[str, bool]:
    """``(path, deleted)`` for a readlink result that may end in `` (deleted)``."""
    if target.endswith(" (deleted)"):
        return target[: -len(" (deleted)")], True
    return target, False
