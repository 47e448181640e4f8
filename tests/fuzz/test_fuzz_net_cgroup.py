"""Fuzz /proc/PID/net/tcp{,6} and /proc/PID/cgroup parsing with real and mutated samples."""
from __future__ import annotations

import ipaddress
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collectors.cgroups import cgroup_claim, parse_cgroup
from agent.collectors.netns import TCP_STATES, parse_proc_net_tcp
from agent.collectors.procparse import decode
from tests.fuzz.fuzzing import FUZZ, inputs, seed_ids, seed_paths

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
HEX64 = re.compile(r"[0-9a-f]{64}")


def rows_ok(text: str, ipv6: bool, byteorder: str = "little") -> list:
    rows = parse_proc_net_tcp(text, ipv6, byteorder=byteorder)
    for lip, lport, rip, rport, state, inode in rows:
        for ip in (lip, rip):
            ipaddress.ip_address(ip)
        assert 0 <= lport <= 65535 and 0 <= rport <= 65535, (lport, rport)
        assert isinstance(inode, int) and isinstance(state, str)
    return rows


def cgroup_ok(text: str) -> tuple[str, str, str]:
    cid, runtime, path = parse_cgroup(text)
    assert cid == "" or (HEX64.fullmatch(cid) and cid in path), (cid, path)
    assert runtime in ("", "docker", "containerd", "cri-o", "podman")
    assert (runtime == "") == (cid == "")
    return cid, runtime, path


@pytest.mark.parametrize("path", seed_paths("net_tcp"), ids=seed_ids("net_tcp"))
def test_tcp_corpus(path):
    """Real and hand-made IPv4 tables parse; the well-formed rows are all there."""
    rows = rows_ok(decode(path.read_bytes()), ipv6=False)
    assert rows


@pytest.mark.parametrize("path", seed_paths("net_tcp6"), ids=seed_ids("net_tcp6"))
def test_tcp6_corpus(path):
    """IPv6 tables parse; IPv4-mapped addresses show as IPv4."""
    rows_ok(decode(path.read_bytes()), ipv6=True)


@pytest.mark.parametrize("path", seed_paths("proc_cgroup"), ids=seed_ids("proc_cgroup"))
def test_cgroup_corpus(path):
    """Cgroup samples: a 64-hex container id that is in the path, or none."""
    cid, _runtime, _path = cgroup_ok(decode(path.read_bytes()))
    if path.name.startswith(("docker", "kubepods", "podman", "crio", "ecs", "live-container")):
        assert cid, path.name
    if path.name in ("host-session", "malformed", "live-init"):
        assert not cid


@FUZZ
@given(data=inputs("net_tcp", max_random=2048), ipv6=st.booleans(), order=st.sampled_from(["little", "big"]))
def test_tcp_mutated(data, ipv6, order):
    """Any table text: only rows with valid addresses and ports in 0-65535, never an exception."""
    rows_ok(decode(data), ipv6, order)


@FUZZ
@given(data=inputs("net_tcp6", max_random=2048))
def test_tcp6_mutated(data):
    """Any IPv6 table text: valid rows only."""
    rows_ok(decode(data), True)


def hex_addr(addr: ipaddress._BaseAddress) -> str:
    """The kernel's text form: 32-bit words in host (little-endian here) order."""
    raw = addr.packed
    return "".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0]).hex().upper() for i in range(0, len(raw), 4))


@FUZZ
@given(conns=st.lists(st.tuples(st.ip_addresses(v=4), st.integers(0, 65535), st.ip_addresses(v=4),
                                st.integers(0, 65535), st.sampled_from(sorted(TCP_STATES)), st.integers(0, 2**32)),
                      max_size=8))
def test_tcp_round_trip(conns):
    """Rows written the way the kernel writes them come back exactly."""
    text = HEADER + "".join(
        f"{i:4}: {hex_addr(l)}:{lp:04X} {hex_addr(r)}:{rp:04X} {s} 00000000:00000000 00:00000000 00000000     0        0 {n} 1\n"
        for i, (l, lp, r, rp, s, n) in enumerate(conns))
    assert parse_proc_net_tcp(text, False, byteorder="little") == [
        (str(l), lp, str(r), rp, TCP_STATES[s], n) for l, lp, r, rp, s, n in conns]


@FUZZ
@given(data=inputs("proc_cgroup", max_random=1024))
def test_cgroup_mutated(data):
    """Any cgroup text: an id only when it is a 64-hex segment of the returned path."""
    cgroup_ok(decode(data))


@FUZZ
@given(cid=st.from_regex(r"[0-9a-f]{64}", fullmatch=True), layout=st.sampled_from([
    ("0::/system.slice/docker-{}.scope\n", "docker"), ("12:memory:/docker/{}\n0::/\n", "docker"),
    ("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{}.scope\n", "containerd"),
    ("0::/machine.slice/libpod-{}.scope/container\n", "podman"), ("0::/system.slice/crio-conmon-{}.scope\n", "cri-o")]),
    slices=st.lists(st.from_regex(r"[a-tv-z][a-z0-9_-]{0,12}\.slice", fullmatch=True), max_size=3))
def test_cgroup_round_trip(cid, layout, slices):
    """A container id in any recognised layout is found with its runtime; a systemd scope also under
    further slices (``--cgroup-parent``), which only root (or systemd) can make."""
    template, runtime = layout
    lead = "".join(f"/{p}" for p in slices) if ".scope" in template else ""
    text = template.replace(":/", f":{lead}/", 1).format(cid)
    assert parse_cgroup(text)[:2] == (cid, runtime)


@FUZZ
@given(cid=st.from_regex(r"[0-9a-f]{64}", fullmatch=True), delegated=st.sampled_from([
    "/user.slice/user-1000.slice/user@1000.service/app.slice", "/user.slice", "/system.slice/ci-runner.service",
    "/user.slice/user-1000.slice/session-3.scope"]), name=st.sampled_from(["docker-{}.scope", "libpod-{}.scope",
                                                                             "cri-containerd-{}.scope", "docker/{}"]))
def test_a_container_name_in_a_delegated_subtree_is_only_a_claim(cid, delegated, name):
    """Whatever container name a user creates in a subtree delegated to them, it names no container:
    the id is kept as a claim."""
    path = f"{delegated}/{name.format(cid)}"
    assert parse_cgroup(f"0::{path}\n")[:2] == ("", "")
    assert cgroup_claim(f"0::{path}\n") == cid
