"""New processes as they happen: the kernel's process events connector (netlink ``PROC_EVENTS``).

A netlink socket of protocol ``NETLINK_CONNECTOR`` bound to group ``CN_IDX_PROC`` receives one
message per fork, exec and exit once it has sent ``PROC_CN_MCAST_LISTEN``. No eBPF, module or
kernel headers: the structures (``nlmsghdr``, ``cn_msg``, ``proc_event``) are packed with
``struct`` in ``cn_proc`` (the pure wire format); this module owns the socket and its thread.
The kernel reports PIDs of the initial PID namespace, i.e. host PIDs.

Where it works (measured on Linux 6.18; the kernel source agrees for older ones):

* only from the initial network namespace: elsewhere ``send`` fails with ``ECONNREFUSED``
  (the connector's kernel socket exists only there): run the agent with ``--network host``;
* a LISTEN from a non-initial user or PID namespace is silently ignored (no acknowledgement):
  ``--pid host``, no user-namespace remapping;
* kernels before 6.6 want ``CAP_NET_ADMIN`` (acknowledged with ``EPERM``); 6.6+ allow anyone.

``ProcConnector`` subscribes, waits for the kernel's acknowledgement, then hands every
``ExecEvent`` to a callback from its reader thread. Only exec events reach it: a classic BPF
socket filter (``cn_proc.exec_filter``) drops forks, exits and the rest in the kernel on any
kernel, and 6.6+ kernels are also asked to send execs only. In a storm the reader wakes once per
batch (every ``COALESCE_S``) and drains what is queued, instead of once per exec: a wakeup of a
Python thread costs more CPU than judging most execs. A receive buffer overrun (``ENOBUFS``) loses
events: it is counted (``overruns``; ``dropped`` is the kernel's exact count) and ``on_overrun``
lets the owner rescan /proc. ``cn_proc.parse_messages`` is the pure decoder; ``available()``
checks end to end that the exec of a probe child is reported.

Why this module is long: it is one socket's whole life (the subscription handshake, the kernel
filters, the batched reader, overrun accounting, the end-to-end probe), and all of it shares
that socket's state.
"""

from __future__ import annotations

import ctypes
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
    exec_filter,
    parse_messages,
)
from agent.events import ExecEvent

log = structlog.get_logger("minerwatch.proc_connector")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO, SK_MEMINFO_DROPS = 55, 8
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
DEFAULT_RCVBUF = 4 << 20
COUNTERS = ("events", "exec", "delivered", "own", "overruns", "dropped", "parse_errors",
            "netlink_errors", "foreign", "callback_errors", "batches")
RECV_SIZE = 1 << 16
COALESCE_S = 0.05  # in a storm, how long a batch waits for more execs after its first (alerts wait this much more)
COALESCE_AFTER = 0.1  # a storm: a datagram within this long after the last batch (else delivered at once)
MAX_BATCH_DATAGRAMS = 4096  # then the batch goes out even if more are queued (the next one takes them)

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
                 poll_interval: float = 0.5, coalesce: float = COALESCE_S, bpf: bool = True,
                 socket_factory: Callable[[], socket.socket] = _netlink_socket) -> None:
        self._on_exec, self._on_overrun = on_exec, on_overrun
        self._rcvbuf, self._ack_timeout, self._exec_only = rcvbuf, ack_timeout, exec_only
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._poll, self._socket_factory = poll_interval, socket_factory
        self._coalesce, self._last_batch, self._backlog, self._bpf = coalesce, -1e9, False, bpf
        self._buf = bytearray(RECV_SIZE)  # one receive buffer, reused
        self._view = memoryview(self._buf)
        self._batch: list[ExecEvent] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening = False
        # Written by one thread at a time (start(), then the reader); all keys exist from the start.
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.rcvbuf = 0  # the receive buffer the kernel granted
        self.filtered = False  # the kernel drops the events we do not use (a socket filter is attached)
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
        log.info("proc_connector_listening", rcvbuf=self.rcvbuf, exec_only=self._exec_only, filtered=self.filtered)

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
        self._attach_filter(sock)
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
                acks = self._receive(sock) or ()
            except OSError as exc:
                raise ConnectorUnavailable.from_os("receive", exc) from exc
            self._flush()  # an exec that came before the answer is delivered too
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

    def _attach_filter(self, sock: socket.socket) -> None:
        """Exec events only, filtered in the kernel (``cn_proc.exec_filter``) on any kernel: before 6.6 it
        sends every fork and exit too. Not fatal: then the reader only counts what it does not use."""
        if not self._bpf:
            return
        program = ctypes.create_string_buffer(exec_filter())
        fprog = struct.pack("@HP", len(program.raw) // 8, ctypes.addressof(program))  # struct sock_fprog
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program
            self.filtered = True
        except OSError as exc:
            log.info("proc_connector_bpf_failed", error=str(exc))

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
        storm = False
        while not self._stop.is_set():
            try:
                storm = self._read_batch(sock, storm)
            except OSError as exc:
                if not self._stop.is_set():
                    self.failure = f"recv: {exc}"
                    log.error("proc_connector_failed", error=str(exc), errno=exc.errno)
                return
            except Exception:  # crash barrier per batch: a decoding bug must not end the reader
                self.counters["parse_errors"] += 1
                log.exception("proc_connector_datagram_failed")

    def _read_batch(self, sock: socket.socket, storm: bool) -> bool:
        """One batch of exec events, delivered together; returns whether the next one is in a storm.

        Quiet: blocks for a datagram and delivers it at once (with whatever else is queued). In a
        storm (a batch came less than ``COALESCE_AFTER`` after the previous one): sleeps ``coalesce``
        seconds, then drains every queued datagram without blocking. A wakeup of a Python thread costs
        tens of µs of CPU here, more than judging most execs: this thread wakes once per batch, not
        per exec, and so does the consumer. A storm ends with the first empty drain."""
        if storm:
            if not self._backlog:
                self._stop.wait(self._coalesce)
            got = self._drain(sock)
            storm = got > 0
        else:
            sock.settimeout(self._poll)
            if self._receive(sock) is None:
                return False
            sock.settimeout(0.0)
            self._drain(sock)
            storm = self._coalesce > 0 and time.monotonic() - self._last_batch < COALESCE_AFTER
        self._last_batch = time.monotonic()
        self._flush()
        self.counters["batches"] += 1
        return storm

    def _drain(self, sock: socket.socket) -> int:
        """Reads the datagrams already queued (the socket is non-blocking); how many there were."""
        n, self._backlog = 0, False
        while self._receive(sock) is not None:
            n += 1
            if n >= MAX_BATCH_DATAGRAMS:  # a flood: deliver these, the next batch reads on without sleeping
                self._backlog = True
                break
        return n

    def _receive(self, sock: socket.socket) -> list[Ack] | None:
        """One datagram: its exec events join the batch (``_flush`` delivers it), the rest is counted;
        returns the acks in it, None when there was nothing to read."""
        try:
            n, (portid, _groups) = sock.recvfrom_into(self._buf)
        except (TimeoutError, BlockingIOError):
            return None
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self._overrun(sock)
            return []
        if portid != 0:  # only the kernel may speak on this socket
            self.counters["foreign"] += 1
            return []
        acks: list[Ack] = []
        counters = self.counters
        for msg in parse_messages(self._view[:n]):
            if type(msg) is ExecEvent:
                counters["events"] += 1
                counters["exec"] += 1
                if msg.tgid == self._own_pid:
                    counters["own"] += 1
                else:
                    self._batch.append(msg)
            elif isinstance(msg, Ack):
                acks.append(msg)
            elif isinstance(msg, (ForkEvent, ExitEvent, OtherEvent)):
                counters["events"] += 1
            elif msg.kind == "overrun":
                self._overrun(sock)
            elif msg.kind == "netlink_error":
                counters["netlink_errors"] += 1
            else:
                counters["parse_errors"] += 1
                log.warning("proc_connector_malformed", reason=msg.detail, size=n)
        return acks

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        for event in batch:
            self._deliver(event)

    def _deliver(self, event: ExecEvent) -> None:
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
