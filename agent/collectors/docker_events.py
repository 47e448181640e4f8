"""Docker's event stream as ContainerEvents on the daemon's queue, across Docker restarts.

``DockerWatcher`` is one thread ("docker-events") that only enqueues: the daemon's worker
inspects the container (through ``docker_api.DockerHandle``) and its processes.
On every (re)connection it first puts ``ContainerEvent("resync")``, so the worker
re-inspects every running container: one started while the stream was down is not missed.
It also reconnects with ``since=<time of the last event>`` so Docker replays what it still
buffers. A lost or absent socket is retried in the background with exponential backoff and
jitter; until then the agent runs in process-only mode.
"""

from __future__ import annotations

import random
import threading
from typing import Callable

import structlog
from docker.errors import DockerException, StreamParseError

from agent.collectors import docker_api
from agent.events import ContainerEvent, EventQueue

log = structlog.get_logger("minerwatch.docker_events")

# Container actions the daemon acts on (and only those). Docker spells exec as "exec_start: <cmd>";
# a restart arrives as die + start, a stop or kill as die.
FORWARDED_ACTIONS = ("start", "unpause", "exec_start", "die", "destroy")
RESYNC = "resync"


def normalise_action(action: str) -> str:
    """``"exec_start: sh -c ls"`` -> ``"exec_start"``; other actions unchanged."""
    return action.split(":", 1)[0].strip()


def event_from_message(msg: dict) -> ContainerEvent | None:
    """The ContainerEvent for one decoded Docker event, or None when it is not forwarded."""
    if msg.get("Type", "container") != "container":
        return None
    action = normalise_action(msg.get("Action") or msg.get("status") or "")
    container_id = (msg.get("Actor") or {}).get("ID") or msg.get("id") or ""
    if action not in FORWARDED_ACTIONS or not container_id:
        return None
    return ContainerEvent(action, container_id)


class DockerWatcher:
    """Follows Docker container events in a background thread; see the module docstring.

    State (read by the daemon for health/metrics; written only by the watcher thread):
    ``connected``, ``last_error``, ``events`` (forwarded), ``reconnects``, ``resyncs``,
    ``crashes`` (unexpected errors caught by the crash barrier). Every wait is a wait on the
    stop event, so stop() ends a backoff at once.
    """

    def __init__(
        self,
        url: str,
        events: EventQueue,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        connect: Callable[..., object] = docker_api.connect,
        rng: random.Random | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.url = url
        self._queue = events
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._connect = connect
        self._rng = rng or random.Random()
        self._stop = stop_event or threading.Event()   # every wait is a wait on this event
        self._lock = threading.Lock()                   # guards _stream/_client for stop()
        self._stream = None
        self._client = None
        self._connected_evt = threading.Event()
        self._since_nano = 0                            # timeNano of the last event seen
        self._keys_at_since: set[tuple[str, str]] = set()
        self._ever_connected = False
        self._failures = 0                              # consecutive failed connection attempts
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self.connected = False
        self.last_error = ""
        self.events = 0
        self.reconnects = 0
        self.resyncs = 0
        self.crashes = 0

    # ------------------------------------------------------------------ public API

    def start(self) -> DockerWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> bool:
        """Closes the stream and joins the thread; False if it did not end within ``timeout``
        (only possible while a connection attempt hangs: it is a daemon thread)."""
        self._stop.set()
        self._close_stream()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Blocks until the stream is open (True) or ``timeout`` passes (False)."""
        return self._connected_evt.wait(timeout)

    def stats(self) -> dict[str, object]:
        return {"connected": self.connected, "last_error": self.last_error,
                "events": self.events, "reconnects": self.reconnects, "resyncs": self.resyncs,
                "crashes": self.crashes}

    # --------------------------------------------------------------------- thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._cycle()
            except Exception:  # noqa: BLE001 - crash barrier: a bug in one cycle must not end the
                # thread (the daemon would silently lose container events); log, drop, retry.
                if self._stop.is_set():
                    break   # stop() pulled the stream from under the SDK: not a bug
                self.crashes += 1
                log.exception("docker_watcher_error", url=self.url, crashes=self.crashes)
                self._mark_down()
                delay = self._backoff(self.crashes)   # a bug that repeats must not spin
            self._stop.wait(delay)
        self._mark_down()

    def _cycle(self) -> float:
        """One connection: open, resync, forward until the stream ends. Returns the delay
        before the next attempt."""
        try:
            stream = self._open()
        except (docker_api.DockerDown, DockerException, OSError) as exc:  # socket absent, refused or hung
            return 0.0 if self._stop.is_set() else self._connect_failed(exc)
        if stream is None:
            return 0.0   # stopped while connecting
        try:
            for msg in stream:
                if self._stop.is_set():
                    return 0.0
                self._forward(msg)
            reason = "event stream ended"
        except (DockerException, StreamParseError, OSError, ValueError) as exc:  # reset, bad JSON
            reason = f"{type(exc).__name__}: {exc}"
        if self._stop.is_set():
            return 0.0
        self._mark_down()
        self.last_error = reason
        log.warning("docker_disconnected", url=self.url, error=reason)
        return self._backoff(0)

    def _open(self):
        """Connects and subscribes; puts the resync once the subscription is open, so a
        container started after it arrives as an event and one started before is found by
        the resync. None when stop() came first."""
        client = self._connect(self.url, timeout=self._connect_timeout)
        with self._lock:
            self._client = client   # from here on _mark_down()/stop() close it
            if self._stop.is_set():
                return None
        since = None
        if self._since_nano:   # replay what Docker still buffers since the last event we saw
            since = f"{self._since_nano // 10**9}.{self._since_nano % 10**9:09d}"
        filters = {"type": ["container"], "event": list(FORWARDED_ACTIONS)}
        stream = client.api.events(decode=True, filters=filters, since=since)
        with self._lock:
            self._stream = stream
            if self._stop.is_set():   # stop() ran before the stream was registered
                return None
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._failures = 0
        self.last_error = ""
        self._set_connected(True)
        log.info("docker_connected", url=self.url, reconnects=self.reconnects, since=since)
        self.resyncs += 1
        self._queue.put(ContainerEvent(RESYNC))
        return stream

    def _forward(self, msg: dict) -> None:
        nano = int(msg.get("timeNano") or int(msg.get("time") or 0) * 10**9)
        key = ((msg.get("Actor") or {}).get("ID") or msg.get("id") or "", msg.get("Action") or "")
        if nano < self._since_nano or (nano == self._since_nano and key in self._keys_at_since):
            return  # replayed by since= after a reconnect: already forwarded
        if nano > self._since_nano:
            self._since_nano, self._keys_at_since = nano, set()
        self._keys_at_since.add(key)
        event = event_from_message(msg)
        if event is not None:
            self.events += 1
            self._queue.put(event)

    def _connect_failed(self, exc: BaseException) -> float:
        self._mark_down()
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._failures += 1
        delay = self._backoff(self._failures)
        if not self._ever_connected and self._failures == 1:
            log.warning("docker_unavailable", url=self.url, error=self.last_error,
                        mode="process-only", retry_in=round(delay, 2))
        else:
            log.debug("docker_connect_failed", url=self.url, error=self.last_error,
                      attempt=self._failures, retry_in=round(delay, 2))
        return delay

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with equal jitter (half fixed, half random), capped."""
        delay = min(self._backoff_max, self._backoff_initial * 2 ** max(0, failures - 1))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        if value:
            self._connected_evt.set()
        else:
            self._connected_evt.clear()

    def _mark_down(self) -> None:
        self._set_connected(False)
        self._close_stream()

    def _close_stream(self) -> None:
        with self._lock:
            stream, client = self._stream, self._client
            self._stream = self._client = None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing an already dead stream fails in several
                pass           # SDK-internal ways (closed fp, bad fd); it is closed either way
        if client is not None:
            client.close()
