"""Refuse, as root, to read configuration or signatures that another user could have changed.

The agent runs as root, and its configuration decides what it reads, where it writes and what
it pauses; its signature bundle decides what it calls a miner. If another user can change
either, that user controls a root daemon. So, when the effective user is root, each path
checked here, and every directory above it, must be:

* not writable by everyone (mode ``o+w``), unless it is a directory with the sticky bit
  (``/tmp``: only an entry's owner may then replace it) that is an *ancestor*, not the
  checked directory itself;
* owned by root (a file owned by another user is as good as writable by that user).

For a signature directory this holds for the directory, every file in it and every
sub-directory (``yara/``). Both the path as given (where a symlink's owner counts: it could
re-point the link) and its symlink-resolved real path are checked. Group write is accepted (group ``root`` or an admin group is a site's choice). Not root: no
checks (the agent then has no more power than the user running it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import MinerwatchError

MAX_BUNDLE_ENTRIES = 10_000  # a bundle has a few dozen files; stop walking a runaway tree


class TrustError(MinerwatchError):
    """A file the agent would trust as root can be changed by other users; names the path."""

    def __init__(self, path: str, why: str, fix: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"refusing to run as root: {path} {why}; fix: {fix}")


def _problem(path: str, st: os.stat_result, *, ancestor: bool) -> tuple[str, str] | None:
    """(why, fix) when ``path`` (its ``lstat``) could be changed by a user other than root."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0:
        kind = "a symlink " if stat.S_ISLNK(st.st_mode) else ""
        return f"is {kind}owned by uid {st.st_uid}, not root", f"chown -h root {path}"
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's mode bits mean nothing; only its owner can change it
    if mode & stat.S_IWOTH and not (ancestor and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        return f"is a world-writable {kind} (mode {mode:04o})", f"chmod o-w {path}"
    return None


def _check_chain(path: str, what: str) -> bool:
    """TrustError for the first unsafe component of absolute ``path`` (itself, then each parent); False if missing."""
    current, ancestor = path, False
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not ancestor:
                return False  # a missing file is the loader's error to report, with its key
            raise
        found = _problem(current, st, ancestor=ancestor)
        if found:
            where = f"({what})" if not ancestor else f"(a directory above {what} {path})"
            raise TrustError(current, f"{where} {found[0]}", found[1])
        if current == "/":
            return True
        current, ancestor = os.path.dirname(current), True


def check_path(path: str | os.PathLike[str], what: str) -> None:
    """TrustError unless ``path``, every directory above it, and the same for its symlink-resolved
    real path, are safe (see the module doc). A missing path passes: loading it will fail."""
    given = os.path.abspath(path)
    try:
        if _check_chain(given, what):
            real = os.path.realpath(given)
            if real != given:
                _check_chain(real, what)
    except PermissionError:  # not even root may look: say so rather than trusting it blindly
        raise TrustError(given, f"({what}) cannot be checked (permission denied)", "check its permissions") from None


def check_bundle_dir(directory: str | os.PathLike[str]) -> None:
    """TrustError unless the signature directory, its ancestors and everything in it are safe."""
    check_path(directory, "the signature directory")
    root = Path(os.path.realpath(directory))
    for n, entry in enumerate(root.rglob("*")):
        if n >= MAX_BUNDLE_ENTRIES:
            break
        try:
            st = entry.lstat()
        except OSError:
            continue  # vanished while we looked: the loader reports what is missing
        found = _problem(str(entry), st, ancestor=False)
        if found:
            raise TrustError(str(entry), f"(in the signature directory) {found[0]}", found[1])
        if stat.S_ISLNK(st.st_mode):
            check_path(entry, "a file the signature directory links to")


def _root(euid: int | None) -> bool:
    return (os.geteuid() if euid is None else euid) == 0


def check_config_file(config_path: str | None, *, euid: int | None = None) -> None:
    """Before ``minerwatch run`` reads its configuration (``None``: the default path): only as root."""
    from agent.config import DEFAULT_PATH

    if _root(euid):
        check_path(config_path or DEFAULT_PATH, "the configuration file")


def check_signature_dir(directory: str | os.PathLike[str], *, euid: int | None = None) -> None:
    """Before ``minerwatch run`` loads its signature bundle: only as root."""
    if _root(euid):
        check_bundle_dir(directory)


def check_state_dir(path: str | os.PathLike[str], *, euid: int | None = None) -> None:
    """As root: the state directory (spool, records, quarantine, dedupe) must be root's alone:
    owned by root, neither group- nor world-writable, and no directory above it changeable by others."""
    if not _root(euid):
        return
    check_path(path, "the state directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # prepare_state_dir creates it, 0700
    if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & stat.S_IWGRP:
        raise TrustError(str(path), "(the state directory) is group-writable", f"chmod 0700 {path}")


# --------------------------------------------------------------------------- trusted loading
# Every command and every reload load config and signatures through these, so no path the agent
# reads as root escapes the checks above.


def load_config(config_path: str | None, *, euid: int | None = None):
    """Check (as root) and load the configuration file (``None``: the default path, or the defaults)."""
    from agent import config  # config imports nothing of trust; kept local to keep this module's import light

    check_config_file(config_path, euid=euid)
    return config.load(config_path)


def load_signatures(cfg, *, euid: int | None = None):
    """Check (as root) and load the signature bundle the configuration names (or the bundled one)."""
    from agent import signatures

    check_signature_dir(cfg.agent.signatures or signatures.bundled_directory(), euid=euid)
    return signatures.load_bundle(cfg.agent.signatures or None)
