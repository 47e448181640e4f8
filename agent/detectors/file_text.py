"""A script or a config file that starts or configures a miner (``FileSnapshot.text``).

What ``cmdline`` looks for in a running process's command line and miner config, looked for in
the text of a file: a launcher script (``./xmrig -o stratum+tcp://pool:3333 -u WALLET``), an
xmrig ``config.json`` naming its pool, a YAML/TOML/INI file with a pool URL and a wallet. The
collector fills ``text`` (bounded: the first bytes of a script or config file); the same
signature patterns judge it, and the same pool-domain list. The text is cut into lines (each
capped like one argument) and the lines into chunks the size of a joined command line, so no
matcher sees more than a command line's worth at once.
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.detectors.pool_urls import cmdline_urls, parse_endpoint
from agent.model import Evidence, FileSnapshot
from agent.signatures import (
    MAX_MATCH_PART,
    MAX_MATCH_TEXT,
    clip_items,
    clip_middle,
    compile_signature_regex,
)

ID = "file_text"
VERSION = 1
TITLE = "Cryptominer launcher script or configuration file"

_RULE = f"{ID}@{VERSION}"
_MAX_LINES = 4096
_MAX_DETAIL = 160
_MAX_ENDPOINTS = 64
# ``"url": "host:port"``, ``url = "..."``, ``pool: host:port``, ``user=WALLET``: a key and its value (RE2: linear).
_KEY_VALUE = compile_signature_regex(
    r"""(?i)["']?\b(url|pool|pool_url|pool-url|host|user|wallet|login)["']?\s*[:=]\s*["']?([^"'\s,;#]+)""")
# Keys only miner configs have (xmrig's); one is enough.
_MINER_KEYS = compile_signature_regex(
    r"""(?i)["']?\b(randomx|donate-level|donate-over-proxy|cpu-max-threads-hint|rig-id)["']?\s*[:=]""")
_SCRIPT_SUFFIXES = (".sh", ".bash", ".py", ".pl", ".rb")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def _chunks(lines: list[str]) -> list[tuple[int, str]]:
    """(number of the first line, text) of consecutive lines, each chunk at most MAX_MATCH_TEXT characters."""
    out, start, parts, size = [], 1, [], 0
    for number, line in enumerate(lines, 1):
        if parts and size + len(line) + 1 > MAX_MATCH_TEXT:
            out.append((start, "\n".join(parts)))
            start, parts, size = number, [], 0
        parts.append(line)
        size += len(line) + 1
    if parts:
        out.append((start, "\n".join(parts)))
    return out


def _search(patterns, chunks: list[tuple[int, str]]):
    """(pattern, matched text, line number) of each pattern's first match, in pattern order.

    One RE2-set pass per chunk (``PatternSet.matching``) says which patterns match in it; only those
    are searched there, so a file that matches nothing costs one pass per chunk, not one per pattern."""
    hits = [set(map(id, patterns.matching(chunk))) for _, chunk in chunks]
    for pat in patterns:
        for (first, chunk), matched in zip(chunks, hits):
            if id(pat) in matched and (m := pat.regex.search(chunk)):
                yield pat, m.group(0), first + chunk.count("\n", 0, m.start())
                break


def _endpoints(lines: list[str]) -> list[tuple[str, int, str, int]]:
    """(host, port, url as written, line) of the pool URLs the lines name: -o/--url flags, stratum URLs, url/pool keys."""
    found: dict[tuple[str, int], tuple[str, int, str, int]] = {}
    for number, line in enumerate(lines, 1):
        urls = cmdline_urls(tuple(line.split())) if ("://" in line or "-o" in line or "--url" in line) else []
        urls += [m[1] for m in _KEY_VALUE.findall(line) if m[0].lower() in ("url", "pool", "pool_url", "pool-url")]
        for url in urls:
            ep = parse_endpoint(url)
            if ep and ep not in found:
                found[ep] = (ep[0], ep[1], url, number)
        if len(found) >= _MAX_ENDPOINTS:
            break
    return list(found.values())


def detect(snap: FileSnapshot, ctx: Context) -> list[Evidence]:
    if not snap.text:
        return []
    script = snap.text.startswith("#!") or snap.path.lower().endswith(_SCRIPT_SUFFIXES)
    kind, signal = ("script", "cmdline") if script else ("config file", "config")
    lines = [clip_middle(line, MAX_MATCH_PART) for line in clip_items(snap.text.splitlines(), _MAX_LINES)]
    chunks = _chunks(lines)
    where = kind  # the alert and the report name the file
    out: list[Evidence] = []
    for pat, text, number in _search(ctx.signatures.cmdline_patterns, chunks):
        out.append(Evidence(signal, f"{where} line {number}: miner option {_clip(text.strip())!r} ({pat.name})",
                            pat.weight, _RULE))
    endpoints = _endpoints(lines)
    if endpoints:
        shown = ", ".join(_clip(url) for _, _, url, _ in endpoints[:3])
        out.append(Evidence(signal, f"{where} names pool(s) {shown}", 10, _RULE))
    for host, port, _, number in endpoints:
        if entry := ctx.signatures.pool_domain(host):
            out.append(Evidence(signal, f"{where} line {number}: known pool domain {host}; source: {entry.source}", 40,
                                _RULE, destination=("", port, host)))
            break
    for pat, text, number in _search(ctx.signatures.wallet_patterns, chunks):
        out.append(Evidence(signal, f"{where} line {number}: {pat.name} wallet address {_clip(text)!r}", pat.weight,
                            _RULE))
        break  # one wallet is the story; the strongest pattern comes first in the bundle
    for first, chunk in chunks:
        if m := _MINER_KEYS.search(chunk):
            number = first + chunk.count("\n", 0, m.start())
            out.append(Evidence("config", f"{where} line {number}: miner config key {m.group(1)!r}", 20, _RULE))
            break
    return out
