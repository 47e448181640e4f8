"""Parsing a miner configuration (xmrig-style JSON, JSONC, or anything with its keys): pure, no I/O.

``parse_miner_config(text, path)`` gives a ``MinerConfig`` (pools, users, miner keys, whether its
pools are shaped like mining pools) or None. Finding the file is ``collectors.minerconfig``.
"""

from __future__ import annotations

import json
import re

from agent.model import MinerConfig

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
