"""Process events connector: the decoder on hand-built bytes, the reader on a scripted socket,
and live exec events from real processes (skipped only where ``available()`` says no)."""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors import cn_proc as cn
from agent.collectors import proc_connector as pc
from agent.collectors.cn_proc import Ack, ExitEvent, ForkEvent, OtherEvent, Problem, parse_messages
from agent.collectors.proc_connector import ConnectorUnavailable, ProcConnector, available
from agent.events import EventQueue, ExecEvent

REPO = Path(__file__).resolve().parents[1]
TRUE = shutil.which("true") or "/bin/true"


# ------------------------------------------------------------- bytes as the kernel lays them out


def nlmsg(payload: bytes, mtype: int = 3, pad: bool = True) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), mtype, 0, 0, 0) + payload
    return raw + b"\0" * ((-len(raw)) % 4 if pad else 0)


def proc_event(what: int, body: bytes, *, ack: int = 0, ts: int = 123456789, idx: int = 1,
               val: int = 1, full: bool = True) -> bytes:
    """cn_msg + proc_event; ``full`` pads the union to its kernel size (24 bytes)."""
    ev = struct.pack("=IIQ", what, 1, ts) + (body.ljust(24, b"\0") if full else body)
    return struct.pack("=IIIIHH", idx, val, 7, ack, len(ev), 0) + ev


def exec_msg(pid: int, tgid: int | None = None, ts: int = 123456789) -> bytes:
    return nlmsg(proc_event(2, struct.pack("=ii", pid, pid if tgid is None else tgid), ts=ts))


def ack_msg(ack: int, err: int = 0) -> bytes:
    return nlmsg(proc_event(0, struct.pack("=I", err), ack=ack))


# ----------------------------------------------------------------------------- parse_messages


def test_parse_exec():
    """An EXEC event yields an ExecEvent with pid, tgid and the kernel timestamp."""
    assert parse_messages(exec_msg(4242, 4241, ts=99)) == [ExecEvent(pid=4242, tgid=4241, timestamp_ns=99)]


def test_parse_fork():
    """A FORK event yields parent and child PIDs and TGIDs."""
    buf = nlmsg(proc_event(1, struct.pack("=iiii", 10, 11, 20, 21), ts=5))
    assert parse_messages(buf) == [ForkEvent(10, 11, 20, 21, timestamp_ns=5)]


def test_parse_exit():
    """An EXIT event yields pid, tgid, exit code and exit signal (parent fields ignored)."""
    body = struct.pack("=iiIIii", 30, 30, 9 << 8, 17, 1, 1)
    assert parse_messages(nlmsg(proc_event(0x80000000, body, ts=6))) == [ExitEvent(30, 30, 9 << 8, 17, 6)]


def test_parse_ack():
    """A NONE event is the kernel's acknowledgement, carrying errno and the ack field."""
    assert parse_messages(ack_msg(8, err=errno.EPERM)) == [Ack(err=errno.EPERM, ack=8)]


def test_unknown_and_undecoded_what():
    """Unknown and undecoded event types (COMM here) come out as OtherEvent, not errors."""
    buf = nlmsg(proc_event(0x12345, b"")) + nlmsg(proc_event(0x200, struct.pack("=ii16s", 1, 1, b"x")))
    assert parse_messages(buf) == [OtherEvent(0x12345, 123456789), OtherEvent(0x200, 123456789)]


def test_multiple_messages_and_control_types():
    """One buffer holding events, NOOP, an NLMSG_ERROR, an ack-type ERROR and an OVERRUN decodes in order."""
    buf = (exec_msg(1) + nlmsg(b"", mtype=1) + nlmsg(struct.pack("=i", -errno.ENOBUFS), mtype=2)
           + nlmsg(struct.pack("=i", 0), mtype=2) + exec_msg(2) + nlmsg(b"", mtype=4) + exec_msg(3))
    got = parse_messages(buf)
    assert got == [ExecEvent(1, 1, 123456789), Problem("netlink_error", str(errno.ENOBUFS)),
                   ExecEvent(2, 2, 123456789), Problem("overrun"), ExecEvent(3, 3, 123456789)]


@pytest.mark.parametrize("buf, reason", [
    (exec_msg(1)[:-30], "netlink length"),
    (nlmsg(struct.pack("=IIII", 1, 1, 0, 0)), "cn_msg"),
    (nlmsg(proc_event(2, b"\1\0\0\0", full=False)), "truncated"),
    (nlmsg(proc_event(2, b"", full=False)[:-4]), "proc_event of"),
    (nlmsg(proc_event(2, struct.pack("=ii", 1, 1), idx=4)), "connector id"),
    (exec_msg(5) + b"\1\2\3", "trailing"),
], ids=["nlmsg-cut", "cn-header-cut", "exec-body-cut", "event-header-cut", "foreign-id", "trailing"])
def test_truncated_or_foreign_is_a_problem(buf, reason):
    """Cut or foreign input becomes a 'malformed' Problem naming what is wrong; good messages before it survive."""
    got = parse_messages(buf)
    assert isinstance(got[-1], Problem) and got[-1].kind == "malformed" and reason in got[-1].detail
    assert all(isinstance(m, ExecEvent) for m in got[:-1])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=80))
def test_parse_never_raises(junk, prefix_event):
    """Arbitrary bytes, alone or after a valid message, never make the decoder raise."""
    assert isinstance(parse_messages(junk), list)
    assert parse_messages(exec_msg(7) + junk)[0] == ExecEvent(7, 7, 123456789)
    assert isinstance(parse_messages(nlmsg(prefix_event)), list)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6), st.integers(-8, 8))
def test_lone_exec_fast_path_answers_like_the_general_walk(edits, cut):
    """The one-unpack path for a datagram holding one exec event gives what the general walk gives, for
    that datagram with any bytes changed and cut short or lengthened (a length, type, id, size off by any)."""
    raw = bytearray(exec_msg(4242, 4241, ts=77))
    for pos, value in edits:
        raw[pos % len(raw)] = value
    raw = raw[:len(raw) + cut] if cut < 0 else raw + bytes(cut)
    assert parse_messages(bytes(raw)) == cn._walk(bytes(raw))


# ------------------------------------------------------------------ the reader, scripted socket


class ScriptedSocket:
    """Stands in for the netlink socket: acknowledges LISTEN like the kernel, then serves ``inbox``
    (bytes from the kernel, (bytes, portid) from elsewhere, or an OSError to raise)."""

    def __init__(self, *, ack_err: int = 0, answer: bool = True, send_error: int | None = None) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.ack_err, self.answer, self.send_error = ack_err, answer, send_error
        self.sent: list[tuple[int, int, bytes]] = []
        self.timeout: float | None = None
        self.closed = False
        self.drops = 0

    def setsockopt(self, level, opt, value):
        if opt == socket.SO_RCVBUF or opt == pc.SO_RCVBUFFORCE:
            self.rcvbuf = value * 2

    def getsockopt(self, level, opt, size=0):
        if opt == pc.SO_MEMINFO:
            return struct.pack("=9I", *([0] * 8), self.drops)
        return self.rcvbuf

    def bind(self, addr):
        self.bound = addr

    def send(self, data: bytes) -> int:
        if self.send_error:
            raise OSError(self.send_error, os.strerror(self.send_error))
        ack, dlen = struct.unpack_from("=IH", data, 16 + 12)
        op = struct.unpack_from("=I", data, 36)[0]
        self.sent.append((op, dlen, data))
        if op == cn.PROC_CN_MCAST_LISTEN and dlen == 4 and self.answer:
            self.inbox.put(ack_msg(ack + 1000))  # someone else's acknowledgement comes first
            self.inbox.put(ack_msg(ack + 1, self.ack_err))
        return len(data)

    def settimeout(self, t):
        self.timeout = t

    def recvfrom_into(self, buf):
        try:
            item = self.inbox.get(timeout=self.timeout) if self.timeout != 0 else self.inbox.get_nowait()
        except queue.Empty:
            raise (TimeoutError("timed out") if self.timeout else BlockingIOError(errno.EAGAIN, "again")) from None
        if isinstance(item, OSError):
            raise item
        data, portid = item if isinstance(item, tuple) else (item, 0)
        buf[:len(data)] = data
        return len(data), (portid, 1)

    def close(self):
        self.closed = True


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def no_leaked_reader():
    """Every test leaves no proc-connector thread behind."""
    yield
    assert wait_for(lambda: not [t for t in threading.enumerate() if t.name == "proc-connector"], 3.0), \
        "a proc-connector thread outlived its test"


def test_scripted_handshake_delivery_and_stop():
    """LISTEN is acknowledged, execs reach the EventQueue, the own PID is skipped, stop() sends IGNORE and closes."""
    sock, events = ScriptedSocket(), EventQueue(100)
    conn = ProcConnector(events.put, own_pid=99, poll_interval=0.05, socket_factory=lambda: sock)
    conn.start()
    assert sock.bound == (0, cn.CN_IDX_PROC)
    assert [(op, dlen) for op, dlen, _ in sock.sent] == [(1, 4), (1, 8)]  # LISTEN, then exec-only LISTEN
    assert struct.unpack_from("=II", sock.sent[1][2], 36) == (cn.PROC_CN_MCAST_LISTEN, cn.PROC_EVENT_EXEC)
    sock.inbox.put(exec_msg(99) + exec_msg(100) + nlmsg(proc_event(1, struct.pack("=iiii", 1, 1, 2, 2))))
    assert wait_for(lambda: conn.stats()["events"] == 3)
    assert events.get(timeout=1) == ExecEvent(100, 100, 123456789) and events.qsize() == 0
    assert conn.stop() and sock.closed and sock.sent[-1][0] == cn.PROC_CN_MCAST_IGNORE
    assert conn.stats() == dict.fromkeys(pc.COUNTERS, 0) | {"events": 3, "exec": 2, "own": 1, "delivered": 1, "batches": 1}


def test_scripted_storm_is_read_in_batches_and_a_lone_exec_at_once():
    """A lone exec is delivered as its own batch; execs that keep coming soon after are gathered and delivered
    a batch at a time (one wakeup of the reader and of the consumer for many execs), none lost."""
    sock, got = ScriptedSocket(), []
    conn = ProcConnector(got.append, coalesce=0.2, poll_interval=0.05, socket_factory=lambda: sock)
    conn.start()
    sock.inbox.put(exec_msg(1))
    assert wait_for(lambda: got)
    for pid in range(2, 42):  # one every 10 ms: without coalescing, about one batch each
        sock.inbox.put(exec_msg(pid))
        time.sleep(0.01)
    assert wait_for(lambda: len(got) == 41)
    conn.stop()
    assert [e.pid for e in got] == list(range(1, 42))
    assert conn.stats()["batches"] <= 10, conn.stats()


def test_scripted_enobufs_overrun_and_bad_input_keep_reading():
    """ENOBUFS, NLMSG_OVERRUN, junk, a foreign sender and a failing callback are counted; delivery goes on."""
    sock, got, overruns = ScriptedSocket(), [], []

    def on_exec(ev):
        if ev.pid == 13:
            raise RuntimeError("consumer bug")
        got.append(ev.pid)

    conn = ProcConnector(on_exec, on_overrun=lambda: overruns.append(1), poll_interval=0.05,
                         socket_factory=lambda: sock)
    conn.start()
    sock.drops = 321
    for item in (OSError(errno.ENOBUFS, "No buffer space available"), exec_msg(1), b"\xff" * 7,
                 nlmsg(b"", mtype=4), (exec_msg(666), 4242), exec_msg(13), exec_msg(1)[:-5], exec_msg(2)):
        sock.inbox.put(item)
    assert wait_for(lambda: got == [1, 2])
    conn.stop()
    stats = conn.stats()
    assert (stats["overruns"], stats["dropped"], len(overruns)) == (2, 321, 2)
    assert (stats["parse_errors"], stats["foreign"], stats["callback_errors"]) == (2, 1, 1)
    assert conn.failure is None


@pytest.mark.parametrize("script, expect_errno, words", [
    (dict(ack_err=errno.EPERM), errno.EPERM, "CAP_NET_ADMIN"),
    (dict(answer=False), None, "initial user and PID namespaces"),
    (dict(send_error=errno.ECONNREFUSED), errno.ECONNREFUSED, "network namespace"),
], ids=["eperm-ack", "no-ack", "econnrefused"])
def test_scripted_refusals_raise_typed_error(script, expect_errno, words):
    """A refused, unanswered or unroutable LISTEN raises a typed error with errno and advice; the socket is closed."""
    sock = ScriptedSocket(**script)
    conn = ProcConnector(lambda ev: None, ack_timeout=0.3, socket_factory=lambda: sock)
    with pytest.raises(ConnectorUnavailable) as info:
        conn.start()
    assert info.value.errno == expect_errno and words in str(info.value) and sock.closed
    assert not conn.is_alive() and conn.stop()
    assert all(op != cn.PROC_CN_MCAST_IGNORE for op, _, _ in sock.sent)  # never un-count a refused LISTEN


def test_socket_creation_failure_is_typed():
    """EPROTONOSUPPORT from socket() (no CONFIG_CONNECTOR) becomes ConnectorUnavailable."""
    def no_connector():
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    with pytest.raises(ConnectorUnavailable, match="CONFIG_CONNECTOR") as info:
        ProcConnector(lambda ev: None, socket_factory=no_connector).start()
    assert info.value.errno == errno.EPROTONOSUPPORT


# ------------------------------------------------------------------------- live, real kernel


@pytest.fixture(scope="module")
def live() -> str:
    ok, why = available()
    if not ok:
        pytest.skip(f"process events connector unusable here: {why}")
    return why


class Seen:
    """Collects exec events from the reader thread; optionally inspects /proc/PID/exe at once."""

    def __init__(self, inspect: bool = False) -> None:
        self.cond = threading.Condition()
        self.tgids: set[int] = set()
        self.exes: dict[int, str] = {}
        self.inspect = inspect

    def __call__(self, ev: ExecEvent) -> None:
        exe = ""
        if self.inspect:
            try:
                exe = os.readlink(f"/proc/{ev.tgid}/exe")
            except OSError:  # already gone: recorded as "" and judged by the test
                pass
        with self.cond:
            self.tgids.add(ev.tgid)
            self.exes[ev.tgid] = exe
            self.cond.notify_all()

    def missing(self, pids, timeout: float = 20.0) -> set[int]:
        with self.cond:
            self.cond.wait_for(lambda: set(pids) <= self.tgids, timeout)
            return set(pids) - self.tgids


@pytest.fixture
def connect(live):
    """connect(on_exec, **kw) -> a started ProcConnector, stopped (and checked) at the end of the test."""
    made: list[ProcConnector] = []

    def make(on_exec, **kw) -> ProcConnector:
        conn = ProcConnector(on_exec, **kw)
        conn.start()
        made.append(conn)
        return conn

    yield make
    for conn in made:
        assert conn.stop(timeout=2.0), "reader thread did not end within 2 s"


def test_live_fifty_true_processes_and_a_fifty_ms_miner(connect, spawn, helper_bins, fake_pool):
    """50 /bin/true, a 50 ms fakeminer and a 50 ms sleep all arrive as exec events with their PIDs."""
    seen = Seen()
    conn = connect(seen)
    pids = []
    for _ in range(50):
        p = spawn([TRUE])
        p.wait(timeout=10)
        pids.append(p.pid)
    miner = spawn([helper_bins.fakeminer, "-o", f"127.0.0.1:{fake_pool.port}", "-t", "0", "--seconds", "0.05"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    brief = spawn(["sleep", "0.05"])
    assert miner.wait(timeout=10) == 0 and brief.wait(timeout=10) == 0
    assert seen.missing(pids + [miner.pid, brief.pid]) == set()
    stats = conn.stats()
    assert stats["delivered"] >= 52 and stats["parse_errors"] == 0 and conn.failure is None


@pytest.mark.parametrize("bpf", [True, False], ids=["socket-filter", "no-filter"])
def test_live_socket_filter_drops_forks_and_exits_in_the_kernel(connect, spawn, bpf):
    """Without the 6.6+ exec-only LISTEN (as older kernels behave), the socket filter alone keeps forks and
    exits from reaching us at all; every exec still arrives. Without the filter they do arrive (the control)."""
    seen = Seen()
    conn = connect(seen, exec_only=False, bpf=bpf)
    assert conn.filtered == bpf
    pids = []
    for _ in range(20):
        p = spawn([TRUE])
        p.wait(timeout=10)
        pids.append(p.pid)
    assert seen.missing(pids) == set()
    stats = conn.stats()
    if bpf:
        assert stats["events"] == stats["exec"] and stats["parse_errors"] == 0, stats
    else:
        assert stats["events"] >= stats["exec"] + 40, stats  # a fork and an exit per process, at least


def test_exec_filter_jumps_land_on_its_two_returns():
    """Every jump of the filter program lands inside it, on a return or an instruction after it."""
    prog = cn.exec_filter()
    ops = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    assert ops[-2:] == [(0x06, 0, 0, 0), (0x06, 0, 0, 0xFFFFFFFF)]
    for i, (code, jt, jf, _k) in enumerate(ops):
        if code == 0x15:
            assert i + 1 + jt < len(ops) and i + 1 + jf < len(ops)


def test_live_short_lived_miner_is_inspectable_at_event_time(connect, spawn, helper_bins, fake_pool):
    """A fakeminer that lives 50 ms can still be read through /proc/PID/exe from the exec callback."""
    seen = Seen(inspect=True)
    connect(seen)
    miners = [spawn([helper_bins.fakeminer, "-o", f"127.0.0.1:{fake_pool.port}", "-t", "0", "--seconds", "0.05"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(5)]
    for m in miners:
        m.wait(timeout=10)
    assert seen.missing([m.pid for m in miners]) == set()
    read = [seen.exes[m.pid] for m in miners]
    assert sum(exe.endswith("/fakeminer") for exe in read) >= 4, read  # one may lose a race on a loaded box


def test_live_stop_is_prompt_and_leaves_no_thread(live):
    """stop() ends the reader within 2 s and no proc-connector thread remains."""
    conn = ProcConnector(lambda ev: None)
    conn.start()
    assert [t for t in threading.enumerate() if t.name == "proc-connector" and t.daemon]
    t0 = time.monotonic()
    assert conn.stop(timeout=2.0) and time.monotonic() - t0 < 2.0
    assert not conn.is_alive()


def test_live_own_pid_is_filtered(connect, spawn):
    """The exec of the PID given as own_pid is counted as 'own' and never delivered."""
    child = spawn([sys.executable, "-c", f"import os,sys; sys.stdin.read(1); os.execv({TRUE!r}, ['true'])"],
                  stdin=subprocess.PIPE)
    seen = Seen()
    conn = connect(seen, own_pid=child.pid)
    child.stdin.write(b"x")
    child.stdin.close()
    assert child.wait(timeout=10) == 0
    assert wait_for(lambda: conn.stats()["own"] >= 1), conn.stats()
    assert child.pid not in seen.tgids


def test_live_overrun_is_counted_and_reading_goes_on(connect, spawn):
    """A tiny buffer and a stalled consumer overrun (ENOBUFS); drops are counted and later execs still arrive."""
    release, overruns = threading.Event(), []
    seen = Seen()

    def stalling(ev):
        seen(ev)
        release.wait(10)

    conn = connect(stalling, rcvbuf=1, on_overrun=lambda: overruns.append(1))
    for _ in range(50):
        spawn([TRUE]).wait(timeout=10)
    release.set()
    assert wait_for(lambda: conn.stats()["overruns"] >= 1), conn.stats()
    after = spawn([TRUE])
    after.wait(timeout=10)
    assert seen.missing([after.pid]) == set()
    assert conn.stats()["dropped"] >= 1 and overruns and conn.failure is None


def test_live_container_process_arrives_with_host_pid(connect, docker_run, base_image):
    """The entrypoint of a --network none container is reported under its host PID."""
    seen = Seen()
    connect(seen)
    c = docker_run(base_image, ["sleep", "3"])
    host_pid = c.attrs["State"]["Pid"]
    assert host_pid > 0 and seen.missing([host_pid]) == set()


def _available_in(*unshare_args: str) -> dict:
    code = ("import json; from agent.collectors.proc_connector import available; "
            "ok, why = available(timeout=1.0); print(json.dumps({'ok': ok, 'why': why}))")
    cmd = ["unshare", *unshare_args, sys.executable, "-c", code]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip(f"cannot create the namespace here: {out.stderr.strip()[-200:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_not_available_in_a_new_network_namespace(live):
    """In a fresh network namespace available() says no and names the network namespace (ECONNREFUSED)."""
    result = _available_in("-n")
    assert not result["ok"] and "network namespace" in result["why"], result


def test_not_available_in_a_new_pid_namespace(live):
    """In a fresh PID namespace the LISTEN goes unanswered and available() says so."""
    result = _available_in("-p", "-f")
    assert not result["ok"] and "PID namespace" in result["why"], result
