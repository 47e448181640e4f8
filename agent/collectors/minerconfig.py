"""Find and parse a process's miner configuration (xmrig-style ``config.json``).

Where a miner looks for its config, we look, in its order: the file named by ``-c FILE`` /
``--config FILE`` / ``--config=FILE`` / ``--config-file FILE`` (``miner_args.CONFIG_OPTIONS``;
relative to the working directory; never for a shell or an interpreter, whose ``-c`` is code), then
``config.json``, ``xmrig.json``, ``.xmrig.json`` and ``config.jsonc`` in the working
directory and next to the executable (the program, for one run by the dynamic loader), then
``$HOME/.xmrig.json`` and ``$HOME/.config/xmrig.json``. XMRig 6 reads, when no ``-c`` is given,
``config.json`` beside its binary, then ``$HOME/.xmrig.json``, then ``$HOME/.config/xmrig.json``
(xmrig/xmrig ``src/base/kernel/Base.cpp`` ``BasePrivate::load``: ``Process::location(DataLocation,
"config.json")``, then ``HomeLocation`` ``"." APP_ID ".json"`` and ``".config/" APP_ID ".json"``);
its home is libuv's ``uv_os_homedir``, which is ``$HOME`` first. ``HOME`` comes from the process's
own environment and is resolved beneath its own root like every other path.

Files are read in the process's own view of the file system without ever leaving it:
the working directory through ``/proc/PID/cwd``, absolute paths beneath ``/proc/PID/root``,
every component opened with ``O_NOFOLLOW`` so a symlink planted in a container can never
point the agent at a host file. Anything that is not a regular file of at most
``max_bytes`` is refused.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import posixpath
from collections.abc import Sequence

from agent.collectors.confined import DIR_FLAGS, Refused, open_dir_beneath, open_regular
from agent.collectors.minerconfig_parse import (  # noqa: F401
    STRONG_KEYS,
    WEAK_KEYS,
    parse_miner_config,
    strip_jsonc,
)
from agent.miner_args import config_args
from agent.model import MinerConfig

CONFIG_NAMES = ("config.json", "xmrig.json", ".xmrig.json", "config.jsonc")
HOME_CONFIGS = (".xmrig.json", ".config/xmrig.json")  # beneath $HOME, in XMRig's order
MAX_CONFIG_BYTES = 1 << 20
_ABSENT_MAX = 20_000
_PARSED_MAX = 256
# A memo of the pure parse (the same bytes shown under the same name always parse the same): a suspicious
# process is read whole every pass, and parsing its JSONC config in Python was most of that read. Keyed
# by a digest, so no config text is kept; cleared when full. Dict operations are atomic under the GIL.
_parsed: dict[tuple[bytes, str], MinerConfig | None] = {}


def _parse(data: bytes, shown: str) -> MinerConfig | None:
    key = (hashlib.blake2b(data, digest_size=16).digest(), shown)
    if key not in _parsed:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[key] = parse_miner_config(data, shown)
    return _parsed[key]

# --------------------------------------------------------------------------- where to look

def explicit_paths(cmdline: Sequence[str], cwd: str, exe: str = "") -> list[tuple[str, str]]:
    """The config files a command line names, as ``(base, path)`` (see ``candidate_paths``); none for a
    shell or an interpreter (``miner_args.config_args``: their ``-c`` is code, not a file). Here the
    short ``-c`` counts for every other program: reading it is harmless, and whether the config is the
    process's own is the detector's call, where names, hashes and YARA hits are known."""
    out: list[tuple[str, str]] = []
    for value in config_args(cmdline, exe=exe):
        if value.startswith("/"):
            out.append(("root", posixpath.normpath(value)))
        elif ".." in value.split("/"):
            if cwd.startswith("/"):
                out.append(("root", posixpath.normpath(posixpath.join(cwd, value))))
        else:
            out.append(("cwd", posixpath.normpath(value)))
    return out


def home_paths(home: str) -> list[tuple[str, str]]:
    """``$HOME/.xmrig.json`` and ``$HOME/.config/xmrig.json`` as ``("root", path)``; none without a HOME."""
    if not home.startswith("/"):
        return []
    return [("root", posixpath.normpath(posixpath.join(home, name))) for name in HOME_CONFIGS]


def candidate_paths(cmdline: Sequence[str], cwd: str, exe: str, home: str = "", *,
                    explicit: list[tuple[str, str]] | None = None,
                    homes: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Where to look, in order, as ``(base, path)``.

    ``base`` is ``"cwd"`` for a path relative to the working directory (read through
    ``/proc/PID/cwd``) or ``"root"`` for an absolute path in the process's view (read
    beneath ``/proc/PID/root``). ``explicit`` and ``homes``: ``explicit_paths`` and ``home_paths``
    of the same arguments, when the caller has them already.
    """
    out = list(explicit if explicit is not None else explicit_paths(cmdline, cwd, exe))
    out.extend(("cwd", name) for name in CONFIG_NAMES)
    if exe.startswith("/"):
        exe_dir = posixpath.dirname(exe)
        if exe_dir != cwd:
            out.extend(("root", posixpath.join(exe_dir, name)) for name in CONFIG_NAMES)
    out.extend(homes if homes is not None else home_paths(home))
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- reading


def read_regular(dir_fd: int, name: str, max_bytes: int) -> bytes:
    """Contents of regular file ``name`` in ``dir_fd``; ``Refused`` for symlinks, special or too-big files."""
    fd = open_regular(name, dir_fd=dir_fd)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise Refused("too_large", name)
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:
            raise Refused("too_large", name)
        return data
    finally:
        os.close(fd)


DirKey = tuple[int, int, int, int]


def _key_of(st: os.stat_result) -> DirKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _dir_key(fd: int) -> DirKey:
    return _key_of(os.fstat(fd))


def _stat_key(top: int, directory: str) -> DirKey | None:
    """``directory``'s (under ``top``) key by a plain ``stat``, to tell whether it is known to lack a
    name before the safe no-follow walk opens it. A symlink on the way could make this look at another
    directory, but then the safe walk would refuse that path anyway: skipping it changes nothing."""
    try:
        return _key_of(os.stat(directory.lstrip("/") or ".", dir_fd=top))
    except OSError:
        return None


def find_miner_config(proc_root, pid: int, cmdline: Sequence[str], cwd: str, exe: str, *,
                      dir_fd: int | None = None, max_bytes: int = MAX_CONFIG_BYTES,
                      absent: dict[DirKey, bool] | None = None, settled_ns: int = 0,
                      home: str = "") -> MinerConfig | None:
    """The first miner config among ``candidate_paths``, read in the process's own file system view.

    Returns None when none of them is one. ``OSError`` opening the process's cwd or root
    (vanished process, access denied) is left to the caller, and so is ``PermissionError``
    on a candidate when no config was found (the answer is then unknown, not "none").

    ``absent`` is an optional cache owned by the caller: directories (by device, inode,
    mtime and ctime, which change whenever a name is added, removed or renamed) known to
    hold none of ``CONFIG_NAMES``; they are not probed again. Only directories last changed
    before ``settled_ns`` (wall-clock ns) are remembered: timestamps are coarse, and a name
    added in the same tick as our probe would otherwise go unnoticed.
    """
    base_path = "" if dir_fd is not None else f"{os.fspath(proc_root)}/{pid}/"
    bases: dict[str, int] = {}
    dirs: dict[tuple[str, str], int | None] = {}
    dir_keys: dict[tuple[str, str], DirKey] = {}
    misses: dict[tuple[str, str], int] = {}
    stat_keys: dict[tuple[str, str], DirKey | None] = {}  # one stat per directory, for all its names
    explicit_list, home_list = explicit_paths(cmdline, cwd, exe), home_paths(home)
    explicit, homes = set(explicit_list), set(home_list)
    denied: OSError | None = None

    def base_fd(base: str) -> int:
        if base not in bases:
            bases[base] = os.open(base_path + base, DIR_FLAGS, dir_fd=dir_fd)
        return bases[base]

    try:
        for base, path in candidate_paths(cmdline, cwd, exe, home, explicit=explicit_list, homes=home_list):
            directory, name = posixpath.split(path)
            key = (base, directory)
            if key not in dirs and absent and (base, path) not in explicit:
                if key not in stat_keys:
                    stat_keys[key] = _stat_key(base_fd(base), directory)
                if (dk := stat_keys[key]) is not None and ((dk, name) in absent if (base, path) in homes
                                                           else dk in absent):
                    continue
            if key not in dirs:
                top = base_fd(base)  # failing here means the process is gone or hidden: the caller decides
                try:
                    dirs[key] = open_dir_beneath(top, directory)
                except PermissionError as e:
                    denied, dirs[key] = e, None
                except Refused:
                    dirs[key] = None
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                        raise
                    dirs[key] = None
                if dirs[key] is not None and absent is not None:
                    dk = _dir_key(dirs[key])
                    if dk[3] < settled_ns:  # ctime >= mtime: the latest change
                        dir_keys[key] = dk
            dfd = dirs[key]
            if dfd is None:
                continue
            default = name in CONFIG_NAMES and (base, path) not in explicit and (base, path) not in homes
            if default and key in dir_keys and dir_keys[key] in absent:
                continue
            in_home = (base, path) in homes and key in dir_keys
            if in_home and (dir_keys[key], name) in absent:  # this HOME dir had no such file, unchanged since
                continue
            try:
                data = read_regular(dfd, name, max_bytes)
            except PermissionError as e:
                denied = e
                continue
            except FileNotFoundError:
                if in_home:
                    if len(absent) >= _ABSENT_MAX:
                        absent.clear()
                    absent[(dir_keys[key], name)] = True
                if default and key in dir_keys:
                    misses[key] = misses.get(key, 0) + 1
                    if misses[key] == len(CONFIG_NAMES):
                        if len(absent) >= _ABSENT_MAX:
                            absent.clear()
                        absent[dir_keys[key]] = True
                continue
            except (Refused, NotADirectoryError):
                continue
            shown = path if base == "root" else posixpath.join(cwd or ".", path)
            found = _parse(data, shown)
            if found is not None:
                origin = ("explicit" if (base, path) in explicit else "home" if (base, path) in homes
                          else "cwd" if base == "cwd" else "exe-dir")
                return dataclasses.replace(found, origin=origin)
    finally:
        for fd in dirs.values():
            if fd is not None:
                os.close(fd)
        for fd in bases.values():
            os.close(fd)
    if denied is not None:
        raise denied
    return None
