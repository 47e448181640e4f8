"""Pure helpers: which pool endpoints does a process name on its command line or in its config?"""

from __future__ import annotations

import re

from agent.model import ProcessSnapshot
from agent.signatures import MAX_MATCH_PART, clip_items, clip_middle

# A pool URL is short (scheme, user:pass with a wallet, host, port): longer text is not looked at whole.
MAX_URL = 1024

_URL_FLAGS = ("-o", "--url")
_SCHEME = re.compile(r"^(?:stratum\d?\+(?:tcp|ssl|tls)|stratum|ssl|tcp)://", re.IGNORECASE)
_HOSTPORT = re.compile(r"^\[?(?P<host>[A-Za-z0-9._:-]+?)\]?:(?P<port>\d{1,5})(?:/.*)?$")
_STRATUM_ANYWHERE = re.compile(r"stratum\d?\+(?:tcp|ssl|tls)://[^\s\"',]+", re.IGNORECASE)


def parse_endpoint(url: str) -> tuple[str, int] | None:
    """``stratum+tcp://host:port`` or ``host:port`` -> (host, port); None if it is not one."""
    text = _SCHEME.sub("", clip_middle(url.strip(), MAX_URL))
    if "@" in text:  # user:pass@host:port
        text = text.rsplit("@", 1)[1]
    m = _HOSTPORT.match(text)
    if not m:
        return None
    port = int(m.group("port"))
    if not 0 < port < 65536:
        return None
    return m.group("host").lower(), port


def cmdline_urls(argv: tuple[str, ...]) -> list[str]:
    """Pool URLs given by ``-o URL``, ``--url=URL``, ``-oURL`` or any ``stratum+...://`` word.

    Each URL is cut to MAX_URL characters and the list to MAX_MATCH_ITEMS (start and end kept).
    """
    urls: list[str] = []
    for i, arg in enumerate(argv):
        for flag in _URL_FLAGS:
            if arg == flag and i + 1 < len(argv):
                urls.append(clip_middle(argv[i + 1], MAX_URL))
            elif arg.startswith(flag + "="):
                urls.append(clip_middle(arg[len(flag) + 1 :], MAX_URL))
        if "://" in arg:
            urls.extend(clip_middle(u, MAX_URL) for u in _STRATUM_ANYWHERE.findall(clip_middle(arg, MAX_MATCH_PART)))
    # At most MAX_MATCH_ITEMS, the first and the last: each is looked up in the pool-domain list.
    return clip_items(list(dict.fromkeys(urls)))


def pool_endpoints(proc: ProcessSnapshot) -> list[tuple[str, int, str]]:
    """Every (host, port, where) the process is configured to mine against."""
    found: list[tuple[str, int, str]] = []
    for url in cmdline_urls(proc.cmdline):
        ep = parse_endpoint(url)
        if ep:
            found.append((ep[0], ep[1], "command line"))
    if proc.miner_config:
        for url in clip_items(proc.miner_config.pools):
            ep = parse_endpoint(url)
            if ep:
                found.append((ep[0], ep[1], f"config {proc.miner_config.path}"))
    return found
