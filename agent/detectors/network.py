"""TCP connections of a process (read in its own network namespace) to pools."""

from __future__ import annotations

from agent.detectors.base import Context
from agent.detectors.pool_urls import pool_endpoints
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
            out.append(Evidence("network", f"connected to {where}, the pool port named in its {source} ({host})", 30, _RULE,
                                destination=(conn.remote_ip, conn.remote_port, _hostname(host))))
        elif (entry := ctx.signatures.pool_ports.get(conn.remote_port)) is not None:
            # A stratum port alone is a weak hint: plenty of software listens on 3333 or 5555.
            out.append(Evidence("network", f"connected to {where}, a common stratum port; source: {entry.source}", 20, _RULE,
                                strong=False, destination=(conn.remote_ip, conn.remote_port, "")))
    return out


def _hostname(host: str) -> str:
    """A configured host that is a name (not an IP literal) is the destination domain."""
    return "" if host.replace(".", "").isdigit() or ":" in host else host
