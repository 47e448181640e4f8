"""TCP connections of a process, read in the process's own network namespace.

``/proc/PID/net/tcp`` and ``tcp6`` show the sockets of PID's network namespace (a
container's, not the agent's), and ``/proc/PID/fd`` tells which of those sockets the process
holds. ``NetTables`` reads each namespace's tables once per sweep.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Iterable

from agent.collectors.procread import read_bounded
from agent.model import Connection

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
    "0C": "NEW_SYN_RECV",
}
INTERESTING_STATES = frozenset({"01", "02"})  # ESTABLISHED, SYN_SENT: talking to someone

Row = tuple[str, int, str, int, str, int]  # local_ip, local_port, remote_ip, remote_port, state, inode

_READ_MAX = 64 << 20  # a namespace with a million sockets is not worth more than this


def decode_address(hexaddr: str, byteorder: str = sys.byteorder) -> str:
    """The text form of an address as ``/proc/net/tcp{,6}`` prints it (32-bit words in host order).

    IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are shown as plain IPv4.
    """
    raw = bytes.fromhex(hexaddr)
    if byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


_HEX_PORT = re.compile(r"[0-9A-Fa-f]{4}")


def _endpoint(field: str, byteorder: str) -> tuple[str, int]:
    host, _, port = field.partition(":")
    if not _HEX_PORT.fullmatch(port):  # int(x, 16) also takes "-001", "+D05" and "1_00"
        raise ValueError(f"bad port {port!r}")
    return decode_address(host, byteorder), int(port, 16)


def parse_proc_net_tcp(text: str, ipv6: bool, *, states: Iterable[str] | None = None,
                       inodes: set[int] | frozenset[int] | None = None,
                       byteorder: str = sys.byteorder) -> list[Row]:
    """Rows of ``/proc/net/tcp`` (or ``tcp6`` with ``ipv6=True``) as
    ``(local_ip, local_port, remote_ip, remote_port, state_name, inode)``.

    ``states`` (hex codes such as ``"01"``) and ``inodes`` keep only matching rows; the
    filters are applied before addresses are decoded. Malformed lines are skipped.
    """
    want_states = None if states is None else frozenset(s.upper() for s in states)
    addr_len = 32 if ipv6 else 8
    rows: list[Row] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        st = f[3].upper()
        if want_states is not None and st not in want_states:
            continue
        try:
            inode = int(f[9])
            if inodes is not None and inode not in inodes:
                continue
            if len(f[1]) != addr_len + 5 or len(f[2]) != addr_len + 5:
                continue
            lip, lport = _endpoint(f[1], byteorder)
            rip, rport = _endpoint(f[2], byteorder)
        except ValueError:
            continue
        rows.append((lip, lport, rip, rport, TCP_STATES.get(st, st), inode))
    return rows


def parse_socket_link(target: str | bytes) -> int | None:
    """The inode in an fd link target ``socket:[12345]``, None for anything else."""
    if isinstance(target, bytes):
        target = target.decode("ascii", "replace")
    if target.startswith("socket:[") and target.endswith("]"):
        try:
            return int(target[8:-1])
        except ValueError:
            return None
    return None


def socket_inodes(proc_root, pid: int, *, dir_fd: int | None = None) -> frozenset[int]:
    """Inodes of the sockets a process holds, from the links in ``/proc/PID/fd``.

    ``OSError`` on the directory (vanished, access denied) is left to the caller; a
    descriptor closed while we look is skipped.
    """
    fd_dir = os.open("fd" if dir_fd is not None else f"{os.fspath(proc_root)}/{pid}/fd",
                     os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        found = set()
        for name in os.listdir(fd_dir):
            try:
                target = os.readlink(name, dir_fd=fd_dir)
            except FileNotFoundError:  # closed between listdir and readlink
                continue
            inode = parse_socket_link(target)
            if inode is not None:
                found.add(inode)
        return frozenset(found)
    finally:
        os.close(fd_dir)


class NetTables:
    """Per-namespace TCP tables, read once per namespace until ``clear()``.

    Owned by one sweeping thread (no locking). Only ESTABLISHED and SYN_SENT sockets are
    kept. Call ``clear()`` at the start of every sweep.
    """

    def __init__(self) -> None:
        self._tables: dict[int, dict[int, Connection]] = {}
        self.reads = 0  # namespaces read since construction (for tests and metrics)

    def clear(self) -> None:
        self._tables.clear()

    def _read(self, proc_root, pid: int, dir_fd: int | None) -> dict[int, Connection]:
        base = "net" if dir_fd is not None else f"{os.fspath(proc_root)}/{pid}/net"
        table: dict[int, Connection] = {}
        for name, ipv6 in (("tcp", False), ("tcp6", True)):
            try:
                text = read_bounded(f"{base}/{name}", dir_fd=dir_fd, limit=_READ_MAX).decode("ascii", "replace")
            except FileNotFoundError:
                if ipv6:  # kernel without IPv6: no tcp6 table
                    continue
                raise
            for lip, lport, rip, rport, state, inode in parse_proc_net_tcp(text, ipv6, states=INTERESTING_STATES):
                if inode:
                    table[inode] = Connection(lip, lport, rip, rport, state, inode)
        self.reads += 1
        return table

    def connections_for(self, proc_root, pid: int, ns_inode: int, socket_inodes: Iterable[int], *,
                        dir_fd: int | None = None) -> tuple[Connection, ...]:
        """ESTABLISHED / SYN_SENT connections among ``socket_inodes``, from PID's namespace.

        ``ns_inode`` 0 (unknown namespace) reads the tables without caching them.
        ``OSError`` while reading (vanished process, access denied) is left to the caller.
        """
        inodes = socket_inodes if isinstance(socket_inodes, (set, frozenset)) else frozenset(socket_inodes)
        if not inodes:
            return ()
        table = self._tables.get(ns_inode) if ns_inode else None
        if table is None:
            table = self._read(proc_root, pid, dir_fd)
            if ns_inode:
                self._tables[ns_inode] = table
        return tuple(sorted((table[i] for i in inodes if i in table), key=lambda c: c.inode))
