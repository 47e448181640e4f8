"""Command line, miner config file, miner environment and miner names of a process."""

from __future__ import annotations

import posixpath

from agent.detectors.base import Context
from agent.detectors.pool_urls import cmdline_urls, parse_endpoint
from agent.miner_args import config_args, miner_shaped, url_by_dash_o
from agent.model import Evidence, ProcessSnapshot
from agent.signatures import MAX_MATCH_PART, clip_items, clip_middle, match_text

ID = "cmdline"
VERSION = 1
TITLE = "Cryptominer command line or configuration"

_RULE = f"{ID}@{VERSION}"
_MAX_DETAIL = 200


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


# What each bundled command-line pattern means, for the analyst reading the alert (pattern names are
# the bundle's internal ids and never reach an alert). A pattern of a custom bundle not listed here is
# described by its name, in words.
_SEEN = {
    "stratum_url": "a stratum URL (stratum: the protocol miners speak to mining pools)",
    "stratum_plain_url": "a stratum URL (stratum: the protocol miners speak to mining pools)",
    "pool_url_flag": "a pool address after -o, XMRig's option naming the mining pool",
    "pool_url_long_flag": "a pool address after --url, XMRig's option naming the mining pool",
    "user_flag": "a wallet-length login after -u/--user, the pool login miners use (weak alone)",
    "donate_level": "--donate-level, an option only XMRig-family miners have",
    "algo_miner": "a mining algorithm chosen with -a/--algo (RandomX, CryptoNight, KawPow...)",
    "coin_flag": "--coin, the miner option naming the coin to mine",
    "randomx_flag": "a --randomx-* option, tuning RandomX (Monero's mining algorithm)",
    "cpu_max_threads_hint": "--cpu-max-threads-hint, XMRig's option to mine on only part of the CPU (to stay unnoticed)",
    "cpu_priority": "--cpu-priority, XMRig's process priority option",
    "nicehash_flag": "--nicehash, a miner option for the NiceHash marketplace",
    "keepalive_flag": "-k/--keepalive, XMRig's pool keepalive (weak alone: other tools use -k too)",
    "tls_fingerprint": "--tls-fingerprint, XMRig's pinned pool certificate",
    "no_huge_pages": "--no-huge-pages, an XMRig RandomX option",
    "tls_dp_ports": "the '-p N -tls -dp N' options of a known miner launcher",
    "msr_modprobe": "loading the msr module with writes allowed, which miners do to speed up RandomX",
    "xmrig_download": "a download of an XMRig release",
    "b64_donate_level": "'--donate-level=' hidden in base64, an obfuscated XMRig option",
    "b64_stratum": "a stratum URL hidden in base64, an obfuscated pool address",
}
_COINS = {"monero": "Monero", "bitcoin": "Bitcoin", "litecoin": "Litecoin", "ethereum": "Ethereum", "zcash": "Zcash"}


def _seen(name: str) -> str:
    return _SEEN.get(name, f"{name.replace('_', ' ')} (a miner signature of the bundle in use)")


def coin(pattern_name: str) -> str:
    """``monero_subaddress`` -> ``Monero``: the coin of a wallet pattern, for the alert text."""
    head = pattern_name.split("_", 1)[0].lower()
    return _COINS.get(head, head.capitalize() or "cryptocurrency")


def _command_line(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    # What the regexes see: each argument and the line capped, start and end kept (a padded argv
    # neither costs unbounded time nor pushes the miner's own arguments out of view).
    line = match_text(proc.cmdline)
    out: list[Evidence] = []
    wallet = None
    for pat in ctx.signatures.wallet_patterns.matching(line):
        if m := pat.regex.search(line):
            wallet = (pat, m.group(0))
            break
    for pat in ctx.signatures.cmdline_patterns.matching(line):  # one RE2-set pass, then only those that hit
        m = pat.regex.search(line)
        if m:
            shown = m.group(0).strip()
            if wallet is not None:  # the wallet is printed once, in its own evidence
                shown = shown.replace(wallet[1], "<wallet>")
            out.append(Evidence("cmdline", f"command line has {_seen(pat.name)}: {_clip(shown)!r}", pat.weight, _RULE))
    context = None
    for url in cmdline_urls(proc.cmdline):
        ep = parse_endpoint(url)
        if ep and "://" not in url:  # stratum URLs are matched by the bundle's patterns above
            # A bare host:port is a pool's given by -o, or with miner options or miner facts; a tunnel's
            # or a proxy's "--url 127.0.0.1:8080" alone is weak.
            context = _pool_context(proc, ctx) if context is None else context
            out.append(Evidence("cmdline", f"pool address without a scheme on the command line: {_clip(url)!r}",
                                25 if context else 5, _RULE, strong=context))
        if ep and (entry := ctx.signatures.pool_domain(ep[0])):
            out.append(
                Evidence("cmdline", f"known pool domain {ep[0]} on the command line (a mining pool); source: {entry.source}", 40, _RULE,
                         destination=("", ep[1], ep[0]))
            )
    if wallet is not None:
        pat, address = wallet
        out.append(Evidence("cmdline", f"{coin(pat.name)} wallet address on the command line: {_clip(address)!r} "
                            "(a miner logs in to its pool with the wallet it is paid to)", pat.weight, _RULE))
    return out


def _looks_like_a_miner(proc: ProcessSnapshot, ctx: Context) -> bool:
    """By name, by a known hash or by a miner YARA rule: the facts that make ``-c FILE`` a miner's config."""
    if _names(proc, ctx) or any(h.category == "miner" for h in proc.yara):
        return True
    return proc.hashes is not None and any(
        getattr(proc.hashes, algo) in ctx.signatures.hashes for algo in ("sha256", "sha1", "md5"))


def _pool_context(proc: ProcessSnapshot, ctx: Context) -> bool:
    return url_by_dash_o(proc.cmdline) or miner_shaped(proc.cmdline) or _looks_like_a_miner(proc, ctx)


def _connected_to_its_pool(proc: ProcessSnapshot) -> bool:
    """A live connection to a pool its config names (the port, and the address when the pool is an IP)."""
    wanted = [ep for ep in map(parse_endpoint, clip_items(proc.miner_config.pools)) if ep]
    return any(c.state in ("ESTABLISHED", "SYN_SENT") and c.remote_port == port
               and (host == c.remote_ip or not host.replace(".", "").isdigit()) for host, port in wanted
               for c in proc.connections)


def _config_is_its_own(proc: ProcessSnapshot, path: str, ctx: Context) -> bool:
    """Named by --config (any program but a shell or an interpreter), by -c (only one that looks like a miner:
    ``sh -c NAME``, ``gcc -c NAME`` name no config), or next to the executable: the process loads it. A config
    that merely sits in the working directory may belong to someone else (a shell, an admin looking at it)."""
    runs = proc.program or proc.exe  # behind a dynamic loader, the program it runs
    args = config_args(proc.cmdline, exe=runs, short_c=_looks_like_a_miner(proc, ctx))
    named = {posixpath.normpath(posixpath.join(proc.cwd or "/", arg)) for arg in args}
    if path in named:
        return True
    cfg = proc.miner_config
    if cfg is not None and cfg.origin == "home" and path == cfg.path:
        # $HOME/.xmrig.json: every process of that user has the same HOME. It is this one's when it is a
        # miner by other facts, or keeps a connection to a pool that config names.
        return _looks_like_a_miner(proc, ctx) or _connected_to_its_pool(proc)
    return bool(runs) and posixpath.dirname(path) == posixpath.dirname(runs)


def _config(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    cfg = proc.miner_config
    if cfg is None:
        return []
    # A config whose pools are bare host:port with user/pass and nothing miner about it (a database connection
    # pool's) is weak unless the process is a miner by other facts.
    own = _config_is_its_own(proc, cfg.path, ctx) and (cfg.shaped or _looks_like_a_miner(proc, ctx))
    where = "" if own else " in its working directory"
    out: list[Evidence] = []
    if cfg.pools:
        out.append(Evidence("config", f"miner config {cfg.path}{where} names pool(s) {_clip(', '.join(cfg.pools))}",
                            35 if own else 10, _RULE, strong=own))
        for url in clip_items(cfg.pools):
            ep = parse_endpoint(url)
            if ep and (entry := ctx.signatures.pool_domain(ep[0])):
                out.append(Evidence("config", f"known pool domain {ep[0]} in {cfg.path}{where}; source: {entry.source}",
                                    40 if own else 5, _RULE, strong=own, destination=("", ep[1], ep[0])))
                break
    elif cfg.keys:
        out.append(Evidence("config", f"miner config {cfg.path}{where} has miner keys {', '.join(cfg.keys)}",
                            20 if own else 5, _RULE, strong=own))
    for user in clip_items(cfg.users):
        user = clip_middle(user, MAX_MATCH_PART)
        for pat in ctx.signatures.wallet_patterns.matching(user):
            if pat.regex.search(user):
                out.append(Evidence("config", f"{coin(pat.name)} wallet address in {cfg.path}{where} (the pool login: who is paid)",
                                    pat.weight if own else 5, _RULE, strong=own))
                return out
    return out


def _environment(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    names = [k for k, _ in proc.environ if ctx.signatures.env_var(k.upper()) is not None]
    if not names:
        return []
    weight = min(10 * len(names), 30)
    # WALLET* alone is what payment apps set too: weak (POOL_*, DONATE_LEVEL, XMRIG_* are miners' own).
    strong = any(not k.upper().startswith("WALLET") for k in names)
    return [Evidence("environment", f"miner environment variable(s) {', '.join(sorted(names))}",
                     weight if strong else 5, _RULE, strong=strong)]


def _names(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    argv0 = proc.cmdline[0].rsplit("/", 1)[-1] if proc.cmdline else ""
    for candidate in dict.fromkeys(n.lower() for n in (proc.exe_name, proc.program_name, argv0, proc.name) if n):
        entry = ctx.signatures.miner_names.get(candidate)
        if entry is None and candidate == proc.name.lower() and len(candidate) == 15:
            # comm is cut to 15 characters: "xmrig-notls-6.2" still names a miner
            entry = next((e for n, e in ctx.signatures.miner_names.items() if n[:15] == candidate), None)
        if entry is not None:
            return [Evidence("name", f"process named like a miner: {candidate!r}; source: {entry.source}", 30, _RULE)]
    return []


def detect(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    return _command_line(proc, ctx) + _config(proc, ctx) + _environment(proc, ctx) + _names(proc, ctx)
