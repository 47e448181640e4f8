"""TCP connections of a process (read in its own network namespace) to pools."""

from __future__ import annotations

from agent.detectors.base import Context
from agent.detectors.pool_urls import cmdline_urls, pool_endpoints
from agent.miner_args import looks_like_a_miner, miner_shaped, url_by_dash_o
from agent.model import Evidence, ProcessSnapshot

ID = "network"
VERSION = 1
TITLE = "Mining pool connection"

_RULE = f"{ID}@{VERSION}"
_LIVE = ("ESTABLISHED", "SYN_SENT")


def detect(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    out: list[Evidence] = []
    configured = {port: (host, where) for host, port, where in pool_endpoints(proc)}
    seen: set[tuple[str, int]] = set()
    generic = None  # is the command line's pool only a bare "--url host:port" with nothing miner about it?
    for conn in proc.connections:
        if conn.state not in _LIVE:
            continue
        peer = (conn.remote_ip, conn.remote_port)
        if peer in seen:
            continue
        seen.add(peer)
        where = f"{conn.remote_ip}:{conn.remote_port}"
        if conn.remote_port in configured:
            host, source = configured[conn.remote_port]
            if source == "command line" and generic is None:
                generic = _generic_url(proc, ctx)
            # a tunnel's "--url 127.0.0.1:8080", a database pool config's port: weak, unless the process is a miner
            weak = (source == "command line" and generic) or (
                source != "command line" and proc.miner_config is not None and not proc.miner_config.shaped
                and not looks_like_a_miner(proc, ctx.signatures))
            out.append(Evidence("network", f"connected to {where}, the port of the pool {host} named in its {source}",
                                5 if weak else 30, _RULE, strong=not weak,
                                destination=(conn.remote_ip, conn.remote_port, _hostname(host))))
        elif (entry := ctx.signatures.pool_ports.get(conn.remote_port)) is not None:
            # A stratum port alone is a weak hint: plenty of software listens on 3333 or 5555.
            out.append(Evidence("network", f"connected to {where}: port {conn.remote_port} is a common mining-pool (stratum) "
                                f"port, also used by other services (weak alone); source: {entry.source}", 20, _RULE,
                                strong=False, destination=(conn.remote_ip, conn.remote_port, "")))
    return out


def _generic_url(proc: ProcessSnapshot, ctx: Context) -> bool:
    """No stratum scheme, no ``-o``, no miner options and no miner facts beside the command line's URL."""
    if any("stratum" in u.lower() for u in cmdline_urls(proc.cmdline)):
        return False
    return not (url_by_dash_o(proc.cmdline) or miner_shaped(proc.cmdline) or looks_like_a_miner(proc, ctx.signatures))


def _hostname(host: str) -> str:
    """A configured host that is a name (not an IP literal) is the destination domain."""
    return "" if host.replace(".", "").isdigit() or ":" in host else host
