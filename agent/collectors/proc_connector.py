"""New processes as they happen: the kernel's process events connector (netlink ``PROC_EVENTS``).

A netlink socket of protocol ``NETLINK_CONNECTOR`` bound to group ``CN_IDX_PROC`` receives one
message per fork, exec and exit once it has sent ``PROC_CN_MCAST_LISTEN``. No eBPF, module or
kernel headers: the structures (``nlmsghdr``, ``cn_msg``, ``proc_event``) are packed with
``struct`` here. The kernel reports PIDs of the initial PID namespace, i.e. host PIDs.

Where it works (measured on Linux 6.18; the kernel source agrees for older ones):

* only from the initial network namespace: elsewhere ``send`` fails with ``ECONNREFUSED``
  (the connector's kernel socket exists only there): run the agent with ``--network host``;
* a LISTEN from a non-initial user or PID namespace is silently ignored (no acknowledgement):
  ``--pid host``, no user-namespace remapping;
* kernels before 6.6 want ``CAP_NET_ADMIN`` (acknowledged with ``EPERM``); 6.6+ allow anyone.

``ProcConnector`` subscribes, waits for the kernel's acknowledgement, then hands every
``ExecEvent`` to a callback from its reader thread. On 6.6+ kernels it also asks the kernel to
send exec events only (older kernels ignore that request and send everything). A receive
buffer overrun (``ENOBUFS``) loses events: it is counted (``overruns``; ``dropped`` is the
kernel's exact count) and ``on_overrun`` lets the owner rescan /proc. ``parse_messages`` is the
pure decoder; ``available()`` checks end to end that the exec of a probe child is reported.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.events import ExecEvent

log = structlog.get_logger("minerwatch.proc_connector")

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE = 1, 2
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
PROC_EVENT_NONE, PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_EXIT = 0, 1, 2, 0x80000000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO, SK_MEMINFO_DROPS = 55, 8
DEFAULT_RCVBUF = 4 << 20
COUNTERS = ("events", "exec", "delivered", "own", "overruns", "dropped", "parse_errors",
            "netlink_errors", "foreign", "callback_errors")
RECV_SIZE = 1 << 16

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_ACK = struct.Struct("=I")  # err
_EXEC = struct.Struct("=ii")  # process_pid, process_tgid
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_EXIT = struct.Struct("=iiII")  # process_pid, process_tgid, exit_code, exit_signal (parent_* follow)

_LAYOUTS = {PROC_EVENT_NONE: _ACK, PROC_EVENT_EXEC: _EXEC, PROC_EVENT_FORK: _FORK, PROC_EVENT_EXIT: _EXIT}

_HINTS = {
    errno.EPERM: "not permitted: kernels before 6.6 need CAP_NET_ADMIN",
    errno.EACCES: "not permitted: kernels before 6.6 need CAP_NET_ADMIN",
    errno.EPROTONOSUPPORT: "the kernel has no netlink connector (CONFIG_CONNECTOR)",
    errno.EAFNOSUPPORT: "the kernel has no netlink sockets",
    errno.ECONNREFUSED: "not in the host's (initial) network namespace, the only one the "
                        "connector answers in: run the agent with --network host",
}


class ConnectorUnavailable(Exception):
    """The process events connector cannot be used here; ``reason`` says why, ``errno`` how."""

    def __init__(self, reason: str, err: int | None = None) -> None:
        self.reason, self.errno = reason, err
        code = f" [{errno.errorcode.get(err, err)}]" if err else ""
        super().__init__(f"process events connector unavailable: {reason}{code}")

    @classmethod
    def from_os(cls, step: str, exc: OSError) -> ConnectorUnavailable:
        return cls(f"{step}: {_HINTS.get(exc.errno, exc.strerror or str(exc))}", exc.errno)


@dataclass(frozen=True, slots=True)
class ForkEvent:
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class ExitEvent:
    pid: int
    tgid: int
    exit_code: int
    exit_signal: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    """The kernel's answer to a LISTEN/IGNORE: ``ack`` is the request's ack field plus one."""

    err: int
    ack: int


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A process event we do not decode (uid, gid, sid, ptrace, comm, coredump, unknown)."""

    what: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """Not an event: ``kind`` is "malformed" (bad bytes), "overrun" (NLMSG_OVERRUN: data was lost)
    or "netlink_error" (NLMSG_ERROR; ``detail`` holds the errno)."""

    kind: str
    detail: str = ""


Message = ExecEvent | ForkEvent | ExitEvent | Ack | OtherEvent | Problem


def parse_messages(buf: bytes) -> list[Message]:
    """Every netlink message in one datagram, decoded; bad input becomes a ``Problem``, never raises."""
    out: list[Message] = []
    off, end = 0, len(buf)
    while end - off >= _NLMSGHDR.size:
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size or off + length > end:
            out.append(Problem("malformed", f"netlink length {length} at offset {off}, {end - off} bytes left"))
            return out
        body, stop = off + _NLMSGHDR.size, off + length
        if mtype == NLMSG_ERROR:
            if stop - body < 4:
                out.append(Problem("malformed", "truncated NLMSG_ERROR"))
            elif err := -struct.unpack_from("=i", buf, body)[0]:
                out.append(Problem("netlink_error", str(err)))
        elif mtype == NLMSG_OVERRUN:
            out.append(Problem("overrun"))
        elif mtype != NLMSG_NOOP:  # connector payloads arrive as NLMSG_DONE
            out.append(_parse_connector(buf, body, stop))
        off += (length + 3) & ~3
    if 0 < end - off:
        out.append(Problem("malformed", f"{end - off} trailing bytes"))
    return out


def _parse_connector(buf: bytes, start: int, stop: int) -> Message:
    if stop - start < _CN_MSG.size:
        return Problem("malformed", "truncated cn_msg header")
    idx, val, _seq, ack, dlen, _flags = _CN_MSG.unpack_from(buf, start)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return Problem("malformed", f"connector id {idx}.{val} is not process events")
    data = start + _CN_MSG.size
    if data + dlen > stop or dlen < _EVENT_HEAD.size:
        return Problem("malformed", f"proc_event of {dlen} bytes in {stop - data}")
    what, _cpu, ts = _EVENT_HEAD.unpack_from(buf, data)
    body, room = data + _EVENT_HEAD.size, dlen - _EVENT_HEAD.size
    layout = _LAYOUTS.get(what)
    if layout is None:
        return OtherEvent(what, ts)
    if room < layout.size:
        return Problem("malformed", f"event {what:#x} truncated: {room} of {layout.size} bytes")
    f = layout.unpack_from(buf, body)
    if what == PROC_EVENT_EXEC:
        return ExecEvent(pid=f[0], tgid=f[1], timestamp_ns=ts)
    if what == PROC_EVENT_FORK:
        return ForkEvent(*f, timestamp_ns=ts)
    if what == PROC_EVENT_EXIT:
        return ExitEvent(*f, timestamp_ns=ts)
    return Ack(err=f[0], ack=ack)


def _control(op: int, ack: int, event_filter: int | None = None) -> bytes:
    payload = struct.pack("=I", op) if event_filter is None else struct.pack("=II", op, event_filter)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)


class ProcConnector:
    """Reads process events in a thread ``proc-connector`` and calls ``on_exec`` for each exec.

    ``on_exec`` runs on the reader thread and must be quick (``EventQueue.put``; its drops are
    the queue's to count). Execs of ``own_pid`` (the agent) are skipped. ``stats()`` returns the
    counters; ``failure`` is set if the thread ended on an unexpected socket error.
    """

    def __init__(self, on_exec: Callable[[ExecEvent], object], *,
                 on_overrun: Callable[[], object] | None = None, rcvbuf: int = DEFAULT_RCVBUF,
                 ack_timeout: float = 2.0, exec_only: bool = True, own_pid: int | None = None,
                 poll_interval: float = 0.5,
                 socket_factory: Callable[[], socket.socket] = _netlink_socket) -> None:
        self._on_exec, self._on_overrun = on_exec, on_overrun
        self._rcvbuf, self._ack_timeout, self._exec_only = rcvbuf, ack_timeout, exec_only
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._poll, self._socket_factory = poll_interval, socket_factory
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening = False
        # Written by one thread at a time (start(), then the reader); all keys exist from the start.
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.rcvbuf = 0  # the receive buffer the kernel granted
        self.failure: str | None = None

    def __enter__(self) -> ProcConnector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Subscribes and starts the reader; raises ``ConnectorUnavailable`` if that cannot work here."""
        if self._thread is not None:
            raise RuntimeError("ProcConnector already started")
        try:
            self._sock = self._socket_factory()
        except OSError as exc:
            raise ConnectorUnavailable.from_os("socket", exc) from exc
        try:
            self._subscribe(self._sock)
        except BaseException:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self._thread.start()
        log.info("proc_connector_listening", rcvbuf=self.rcvbuf, exec_only=self._exec_only)

    def stop(self, timeout: float = 2.0) -> bool:
        """Unsubscribes, ends the reader and closes the socket; False if the thread outlived ``timeout``."""
        self._stop.set()
        sock, thread = self._sock, self._thread
        if sock is None:
            return True
        if self._listening:
            self._listening = False
            try:
                sock.send(_control(PROC_CN_MCAST_IGNORE, 0))
            except OSError as exc:  # the subscription ends with the socket anyway (6.6+)
                log.info("proc_connector_ignore_failed", error=str(exc))
        if thread is not None:
            thread.join(timeout)
        sock.close()
        return thread is None or not thread.is_alive()

    def _subscribe(self, sock: socket.socket) -> None:
        self._grow_rcvbuf(sock)
        cookie = random.getrandbits(30) + 1
        try:
            sock.bind((0, CN_IDX_PROC))
            sock.send(_control(PROC_CN_MCAST_LISTEN, cookie))
        except OSError as exc:
            raise ConnectorUnavailable.from_os("subscribe", exc) from exc
        deadline = time.monotonic() + self._ack_timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                acks = self._receive(sock)
            except OSError as exc:
                raise ConnectorUnavailable.from_os("receive", exc) from exc
            for ack in acks:
                if ack.ack == cookie + 1:
                    if ack.err:
                        raise ConnectorUnavailable(f"the kernel refused LISTEN: "
                                                   f"{_HINTS.get(ack.err, os.strerror(ack.err))}", ack.err)
                    self._listening = True
                    self._ask_exec_only(sock)
                    return
        lost = f" ({self.counters['overruns']} overruns: the answer may have been lost)" \
            if self.counters["overruns"] else ""
        raise ConnectorUnavailable(f"no answer to LISTEN within {self._ack_timeout:g}s: the agent is "
                                   "not in the host's initial user and PID namespaces (run with --pid "
                                   "host, without user-namespace remapping) or the kernel lacks "
                                   f"CONFIG_PROC_EVENTS{lost}")

    def _grow_rcvbuf(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf)
        except OSError:  # EPERM without CAP_NET_ADMIN: the plain option, capped at rmem_max
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            except OSError as exc:  # not fatal: the default buffer only overruns sooner
                log.warning("proc_connector_rcvbuf_failed", error=str(exc))
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _ask_exec_only(self, sock: socket.socket) -> None:
        if not self._exec_only:
            return
        try:  # 6.6+ then sends this socket exec events only; older kernels ignore the request
            sock.send(_control(PROC_CN_MCAST_LISTEN, 0, PROC_EVENT_EXEC))
        except OSError as exc:  # not fatal: we just keep receiving every event
            log.info("proc_connector_filter_failed", error=str(exc))

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(self._poll)
        while not self._stop.is_set():
            try:
                self._receive(sock)
            except OSError as exc:
                if not self._stop.is_set():
                    self.failure = f"recv: {exc}"
                    log.error("proc_connector_failed", error=str(exc), errno=exc.errno)
                return
            except Exception:  # crash barrier per datagram: a decoding bug must not end the reader
                self.counters["parse_errors"] += 1
                log.exception("proc_connector_datagram_failed")

    def _receive(self, sock: socket.socket) -> list[Ack]:
        """One datagram: delivers its exec events, counts the rest, returns the acks in it."""
        try:
            buf, (portid, _groups) = sock.recvfrom(RECV_SIZE)
        except TimeoutError:
            return []
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self._overrun(sock)
            return []
        if portid != 0:  # only the kernel may speak on this socket
            self.counters["foreign"] += 1
            return []
        acks: list[Ack] = []
        for msg in parse_messages(buf):
            if isinstance(msg, ExecEvent):
                self.counters["events"] += 1
                self.counters["exec"] += 1
                self._deliver(msg)
            elif isinstance(msg, Ack):
                acks.append(msg)
            elif isinstance(msg, (ForkEvent, ExitEvent, OtherEvent)):
                self.counters["events"] += 1
            elif msg.kind == "overrun":
                self._overrun(sock)
            elif msg.kind == "netlink_error":
                self.counters["netlink_errors"] += 1
            else:
                self.counters["parse_errors"] += 1
                log.warning("proc_connector_malformed", reason=msg.detail, size=len(buf))
        return acks

    def _deliver(self, event: ExecEvent) -> None:
        if event.tgid == self._own_pid:
            self.counters["own"] += 1
            return
        try:
            self._on_exec(event)
        except Exception:  # crash barrier: a bug in the consumer must not end exec delivery
            self.counters["callback_errors"] += 1
            log.exception("proc_connector_callback_failed", pid=event.pid)
        else:
            self.counters["delivered"] += 1

    def _overrun(self, sock: socket.socket) -> None:
        n = self.counters["overruns"] = self.counters["overruns"] + 1
        try:
            info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
            self.counters["dropped"] = struct.unpack(f"={SK_MEMINFO_DROPS + 1}I", info)[SK_MEMINFO_DROPS]
        except (OSError, struct.error):  # SO_MEMINFO is Linux 4.6+; the overrun count still stands
            pass
        if n & (n - 1) == 0:  # 1, 2, 4, 8...: a storm must not flood the log
            log.warning("proc_connector_overrun", overruns=n, dropped=self.counters["dropped"])
        if self._on_overrun is not None:
            try:
                self._on_overrun()
            except Exception:  # crash barrier, as for on_exec
                self.counters["callback_errors"] += 1
                log.exception("proc_connector_overrun_callback_failed")


def available(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the connector reports the exec of a probe child here, and if not, why.

    Starts a connector and one short child process (``true``); takes milliseconds when it works.
    """
    seen: set[int] = set()
    arrived = threading.Event()
    true = shutil.which("true")
    probe = [true] if true else [sys.executable, "-c", ""]

    def on_exec(event: ExecEvent) -> None:
        seen.add(event.tgid)
        arrived.set()

    conn = ProcConnector(on_exec, ack_timeout=timeout, rcvbuf=1 << 20, poll_interval=0.1)
    try:
        conn.start()
    except ConnectorUnavailable as exc:
        return False, exc.reason
    try:
        t0 = time.monotonic()
        child = subprocess.Popen(probe, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        child.wait()
        while child.pid not in seen and time.monotonic() - t0 < timeout:
            arrived.wait(0.05)
            arrived.clear()
        elapsed_ms = (time.monotonic() - t0) * 1000
    finally:
        conn.stop()
    if child.pid in seen:
        return True, f"exec of probe child {child.pid} reported within {elapsed_ms:.0f} ms"
    return False, (f"subscribed, but the exec of probe child {child.pid} was not reported within "
                   f"{timeout:g}s: the kernel's PIDs are not ours (not in the initial PID namespace?)")
