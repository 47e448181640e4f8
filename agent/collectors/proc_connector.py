"""New processes as they happen: the kernel's process events connector (netlink ``PROC_EVENTS``).

A netlink socket of protocol ``NETLINK_CONNECTOR`` bound to group ``CN_IDX_PROC`` receives one
message per fork, exec and exit once it has sent ``PROC_CN_MCAST_LISTEN``. No eBPF, module or
kernel headers: the structures (``nlmsghdr``, ``cn_msg``, ``proc_event``) are packed with
``struct`` in ``cn_proc`` (the pure wire format); this module owns the socket and its thread. The kernel reports PIDs of the initial PID namespace, i.e. host PIDs.

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
kernel's exact count) and ``on_overrun`` lets the owner rescan /proc. ``cn_proc.parse_messages``
is the pure decoder; ``available()`` checks end to end that the exec of a probe child is reported.
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

import structlog

from agent.collectors.cn_proc import (
    CN_IDX_PROC,
    NETLINK_CONNECTOR,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_EXEC,
    Ack,
    ExitEvent,
    ForkEvent,
    OtherEvent,
    control_message,
    parse_messages,
)
from agent.events import ExecEvent

log = structlog.get_logger("minerwatch.proc_connector")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO, SK_MEMINFO_DROPS = 55, 8
DEFAULT_RCVBUF = 4 << 20
COUNTERS = ("events", "exec", "delivered", "own", "overruns", "dropped", "parse_errors",
            "netlink_errors", "foreign", "callback_errors")
RECV_SIZE = 1 << 16

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
                sock.send(control_message(PROC_CN_MCAST_IGNORE, 0))
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
            sock.send(control_message(PROC_CN_MCAST_LISTEN, cookie))
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
            sock.send(control_message(PROC_CN_MCAST_LISTEN, 0, PROC_EVENT_EXEC))
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
