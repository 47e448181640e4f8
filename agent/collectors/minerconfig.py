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
import json
import os
import posixpath
import re
from collections.abc import Sequence

from agent.collectors.confined import DIR_FLAGS, Refused, open_dir_beneath, open_regular
from agent.miner_args import config_args
from agent.model import MinerConfig

CONFIG_NAMES = ("config.json", "xmrig.json", ".xmrig.json", "config.jsonc")
HOME_CONFIGS = (".xmrig.json", ".config/xmrig.json")  # beneath $HOME, in XMRig's order
MAX_CONFIG_BYTES = 1 << 20
_ABSENT_MAX = 20_000

# Top-level keys that only miners use (one is enough) and keys miners use among others (two needed).
STRONG_KEYS = frozenset({"randomx", "donate-level", "donate-over-proxy", "cpu-max-threads-hint", "rig-id"})
WEAK_KEYS = frozenset({"cpu", "cuda", "opencl", "algo", "coin", "huge-pages", "hash-rate", "pool", "wallet"})
# Pool entry keys besides url that say "this is a mining pool" (a db connection pool has url too).
_POOL_ENTRY_KEYS = frozenset({"user", "pass", "wallet", "worker", "rig-id", "nicehash", "keepalive", "algo", "coin",
                              "tls-fingerprint", "daemon", "self-select", "submit-to-origin",
                              # xmr-stak pools.txt entries (fireice-uk/xmr-stak doc/usage.md, pools.txt template)
                              "wallet_address", "pool_password", "rig_id", "use_nicehash", "use_tls"})
_STRATUM = re.compile(r"stratum[0-9]?\+(?:tcp|ssl|tls)://|^stratum[0-9]?://", re.IGNORECASE)
_HOST_PORT = re.compile(r"^[\w.-]+:\d{2,5}$")


# --------------------------------------------------------------------------- parsing


def strip_jsonc(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside strings and commas before ``}`` or ``]``."""
    out: list[str] = []
    i, n = 0, len(text)
    in_str = False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
        elif c == '"':
            in_str = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(c)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _loads(text: str):
    # RecursionError: a hostile config nested thousands deep ("[[[[..."): not JSON we can use,
    # and it must not escape into the snapshot (it would hide the process from every scan).
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return json.loads(strip_jsonc(text))
    except (ValueError, RecursionError):
        return None


# Entry keys every connection pool has (a database's too): alone, they make no mining pool.
_GENERIC_ENTRY_KEYS = frozenset({"user", "pass"})
_WALLET_LIKE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:-]{29,}$")  # a payout address (+ worker): 30+ characters


def _is_pool_url(url: str, keys=frozenset()) -> bool:
    """A stratum URL, or a bare ``host:port`` next to pool keys (user, pass, algo...)."""
    return bool(_STRATUM.search(url) or (_HOST_PORT.match(url) and _POOL_ENTRY_KEYS & keys))


def _mining_entry(url: str, keys, user: str) -> bool:
    """More than a connection: a stratum URL, a mining key beside the URL (algo, rig-id, keepalive...) or a
    wallet-length login. ``{"url": "db:5432", "user": "app", "pass": ...}`` is what a database pool has too."""
    return bool(_STRATUM.search(url) or (_POOL_ENTRY_KEYS & keys) - _GENERIC_ENTRY_KEYS or _WALLET_LIKE.match(user))


def _str(v) -> str:
    return v if isinstance(v, str) else ""


def _from_object(obj: dict, path: str) -> MinerConfig | None:
    pools: list[str] = []
    users: list[str] = []
    shaped = bool(STRONG_KEYS & obj.keys() or (WEAK_KEYS - {"pool"}) & obj.keys())  # miner keys at the top
    entries = obj.get("pools")
    if isinstance(entries, dict):  # some miners key pools by name
        entries = list(entries.values())
    if isinstance(entries, list):
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            url = _str(entry.get("url"))
            if url and _is_pool_url(url, entry.keys()):
                pools.append(url)
                shaped = shaped or _mining_entry(url, entry.keys(), _str(entry.get("user")))
                for k in ("user", "wallet"):
                    if _str(entry.get(k)):
                        users.append(entry[k])
    url = _str(obj.get("url")) or _str(obj.get("pool"))
    if url and _is_pool_url(url, obj.keys()):
        pools.append(url)
        shaped = shaped or _mining_entry(url, obj.keys(), _str(obj.get("user")))
    for k in ("user", "wallet"):
        if _str(obj.get(k)) and (pools or k == "wallet"):
            users.append(obj[k])
    keys = sorted((STRONG_KEYS | WEAK_KEYS) & obj.keys())
    strong = STRONG_KEYS & obj.keys()
    weak = WEAK_KEYS & obj.keys()
    if not (pools or strong or len(weak) >= 2):
        return None
    return MinerConfig(path=path, pools=tuple(dict.fromkeys(pools)), users=tuple(dict.fromkeys(users)),
                       keys=tuple(keys), shaped=shaped)


# "pool_address"/"wallet_address": xmr-stak's pools.txt, a JSON fragment rather than an object.
_RX_URL = re.compile(r'"(?:url|pool_address)"\s*:\s*"([^"\n]{1,512})"')
_RX_USER = re.compile(r'"(?:user|wallet|wallet_address)"\s*:\s*"([^"\n]{1,512})"')
_RX_KEY = re.compile(r'"([a-z][a-z0-9-]{1,30})"\s*:')


def _from_regex(text: str, path: str) -> MinerConfig | None:
    """Last resort for text that is not JSON even after stripping comments."""
    keys = set(_RX_KEY.findall(text))
    urls = _RX_URL.findall(text)
    pools = [u for u in urls if _is_pool_url(u, keys)]
    strong = STRONG_KEYS & keys
    if not (pools or strong):
        return None
    users = _RX_USER.findall(text) if pools else []
    return MinerConfig(path=path, pools=tuple(dict.fromkeys(pools)), users=tuple(dict.fromkeys(users)),
                       keys=tuple(sorted((STRONG_KEYS | WEAK_KEYS) & keys)))


def parse_miner_config(text: str | bytes, path: str = "") -> MinerConfig | None:
    """A MinerConfig when ``text`` is a miner's configuration, None for any other file.

    Miner configs have ``pools`` (objects with a pool ``url``), a top-level pool ``url`` with
    ``user``/``pass``/``algo``, or miner-only keys (``randomx``, ``donate-level``...).
    Comments and trailing commas are tolerated; text that is still not JSON is searched
    with regular expressions.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.lstrip("\ufeff")
    obj = _loads(text)
    if isinstance(obj, dict):
        return _from_object(obj, path)
    if obj is None:
        return _from_regex(text, path)
    return None


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


def candidate_paths(cmdline: Sequence[str], cwd: str, exe: str, home: str = "") -> list[tuple[str, str]]:
    """Where to look, in order, as ``(base, path)``.

    ``base`` is ``"cwd"`` for a path relative to the working directory (read through
    ``/proc/PID/cwd``) or ``"root"`` for an absolute path in the process's view (read
    beneath ``/proc/PID/root``).
    """
    out = explicit_paths(cmdline, cwd, exe)
    out.extend(("cwd", name) for name in CONFIG_NAMES)
    if exe.startswith("/"):
        exe_dir = posixpath.dirname(exe)
        if exe_dir != cwd:
            out.extend(("root", posixpath.join(exe_dir, name)) for name in CONFIG_NAMES)
    out.extend(home_paths(home))
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


def _dir_key(fd: int) -> DirKey:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


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
    explicit = set(explicit_paths(cmdline, cwd, exe))
    homes = set(home_paths(home))
    denied: OSError | None = None

    def base_fd(base: str) -> int:
        if base not in bases:
            bases[base] = os.open(base_path + base, DIR_FLAGS, dir_fd=dir_fd)
        return bases[base]

    try:
        for base, path in candidate_paths(cmdline, cwd, exe, home):
            directory, name = posixpath.split(path)
            key = (base, directory)
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
            found = parse_miner_config(data, shown)
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
