"""TCP tables per network namespace: parsing literal /proc/net/tcp{,6} and real sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from agent.collectors.netns import NetTables, decode_address, parse_proc_net_tcp, parse_socket_link, socket_inodes

HEADER4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP4 = HEADER4 + (
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11111 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 02:000A7B1B 00000000  1000        0 22222 1 0000000000000000 20 4 30 10 -1\n"
    "   2: 0F02000A:D6D8 5DB8D822:115C 02 00000001:00000000 01:00000190 00000002     0        0 33333 1 0000000000000000 400 0 0 1 7\n"
    "   3: 0F02000A:D6DA 5DB8D822:01BB 06 00000000:00000000 03:00000CAF 00000000     0        0 0 3 0000000000000000\n"
    "   4: garbage line\n"
)
HEADER6 = ("  sl  local_address                         remote_address                        st tx_queue rx_queue tr "
           "tm->when retrnsmt   uid  timeout inode\n")
TCP6 = HEADER6 + (
    "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 44444 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0000000000000000FFFF00000100007F:E4A2 0000000000000000FFFF0000220AB85D:0D05 01 "
    "00000000:00000000 02:00000A3F 00000000  1000        0 55555 1 0000000000000000 20 4 28 10 -1\n"
    "   2: B80D0120000000000000000001000000:E4A4 B80D0120000000000000000002000000:01BB 01 "
    "00000000:00000000 02:00000A3F 00000000     0        0 66666 1 0000000000000000 20 4 28 10 -1\n"
)


def test_parse_ipv4_literal():
    """IPv4 rows decode little-endian addresses, hex ports, state names and inodes; junk is skipped."""
    assert parse_proc_net_tcp(TCP4, False, byteorder="little") == [
        ("127.0.0.1", 8080, "0.0.0.0", 0, "LISTEN", 11111),
        ("127.0.0.1", 50000, "127.0.0.1", 8080, "ESTABLISHED", 22222),
        ("10.0.2.15", 55000, "34.216.184.93", 4444, "SYN_SENT", 33333),
        ("10.0.2.15", 55002, "34.216.184.93", 443, "TIME_WAIT", 0),
    ]


def test_parse_ipv6_literal_and_mapped():
    """IPv6 rows decode per 32-bit word; IPv4-mapped addresses come out as IPv4."""
    assert parse_proc_net_tcp(TCP6, True, byteorder="little") == [
        ("::1", 8080, "::", 0, "LISTEN", 44444),
        ("127.0.0.1", 58530, "93.184.10.34", 3333, "ESTABLISHED", 55555),
        ("2001:db8::1", 58532, "2001:db8::2", 443, "ESTABLISHED", 66666),
    ]


def test_parse_filters_before_decoding():
    """The states and inodes filters keep only the rows asked for."""
    rows = parse_proc_net_tcp(TCP4, False, states={"01", "02"}, inodes={33333}, byteorder="little")
    assert rows == [("10.0.2.15", 55000, "34.216.184.93", 4444, "SYN_SENT", 33333)]


def test_parse_wrong_family_is_skipped():
    """IPv6 text parsed as IPv4 (or the reverse) gives no rows instead of nonsense."""
    assert parse_proc_net_tcp(TCP6, False) == []
    assert parse_proc_net_tcp(TCP4, True) == []
    assert parse_proc_net_tcp("", False) == []


def test_decode_address_big_endian():
    """On a big-endian host the words are printed in network order."""
    assert decode_address("7F000001", "big") == "127.0.0.1"


@pytest.mark.parametrize(("target", "inode"), [("socket:[12345]", 12345), (b"socket:[7]", 7), ("pipe:[5]", None),
                                               ("/dev/null", None), ("socket:[x]", None)])
def test_parse_socket_link(target, inode):
    """Only socket:[N] links name a socket inode."""
    assert parse_socket_link(target) == inode


def _ns_inode(pid: int | str) -> int:
    link = os.readlink(f"/proc/{pid}/net/../ns/net")
    return int(link[link.index("[") + 1:-1])


def test_own_socket_found_in_own_namespace():
    """A real 127.0.0.1 connection of this process is found with the server's port, once per namespace read."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        pid = os.getpid()
        tables = NetTables()
        inodes = socket_inodes("/proc", pid)
        assert os.fstat(client.fileno()).st_ino in inodes
        conns = tables.connections_for("/proc", pid, _ns_inode(pid), inodes)
        ports = {(c.local_port, c.remote_port, c.state) for c in conns}
        port = server.getsockname()[1]
        assert (client.getsockname()[1], port, "ESTABLISHED") in ports
        assert (port, client.getsockname()[1], "ESTABLISHED") in ports
        assert all(c.remote_ip == "127.0.0.1" for c in conns)
        # listening socket is not a connection of interest
        assert os.fstat(server.fileno()).st_ino not in {c.inode for c in conns}
        tables.connections_for("/proc", pid, _ns_inode(pid), inodes)
        assert tables.reads == 1
        tables.clear()
        tables.connections_for("/proc", pid, _ns_inode(pid), inodes)
        assert tables.reads == 2
    finally:
        for s in (client, peer, server):
            s.close()


@pytest.fixture
def netns_child():
    """A python child in its own network namespace holding a loopback connection to itself."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    code = (
        "import socket,subprocess,sys,time\n"
        "subprocess.run(['ip','link','set','lo','up'],check=True)\n"
        "srv=socket.create_server(('127.0.0.1',0))\n"
        "c=socket.create_connection(srv.getsockname())\n"
        "p,_=srv.accept()\n"
        "print(srv.getsockname()[1],flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(["unshare", "--net", "--", sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.strip():
            pytest.skip(f"cannot create a network namespace: {proc.stderr.read() if proc.poll() is not None else ''}")
        yield proc, int(line)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_connection_in_other_namespace(netns_child):
    """A connection inside another network namespace (as in a container) is seen through /proc/PID/net."""
    proc, port = netns_child
    ns = _ns_inode(proc.pid)
    assert ns != _ns_inode("self")
    conns = NetTables().connections_for("/proc", proc.pid, ns, socket_inodes("/proc", proc.pid))
    assert any(c.remote_port == port and c.state == "ESTABLISHED" for c in conns)
    # the agent's own namespace has no such socket
    with open("/proc/self/net/tcp") as f:
        own = parse_proc_net_tcp(f.read(), False)
    assert not any(r[5] in {c.inode for c in conns} for r in own)
