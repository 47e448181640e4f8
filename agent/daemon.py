"""The daemon: wires collectors, the inspector, behaviour, response and alert delivery.

Threads and who owns what:
- collectors (proc connector, Docker events, file watcher) only enqueue events;
- the worker thread owns all detection state (tracked processes, containers, behaviour
  model, inspector) and is the only one that reads or changes it;
- the main thread handles signals, systemd notifications and the watchdog, and asks the
  worker to reload or stop through events, never by touching its state.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import structlog

from agent import config as config_mod, signatures as signatures_mod
from agent.config import Config
from agent.errors import MinerwatchError
from agent.events import ContainerEvent, EventQueue
from agent.signatures import Signatures
from agent.systemd_notify import Notifier
from agent.watch_state import WatchState

log = structlog.get_logger("minerwatch.daemon")

STATUS_EVERY_S = 10.0  # how often the STATUS= line shown by `systemctl status` is refreshed


@dataclass
class DaemonStats:
    """Counters owned by the worker; read (not written) by the metrics collector."""

    events: Counter = field(default_factory=Counter)
    findings: Counter = field(default_factory=Counter)
    scans: int = 0
    scan_seconds: float = 0.0
    last_scan_seconds: float = 0.0
    reloads: int = 0
    reload_failures: int = 0
    worker_errors: int = 0
    alert_spool_errors: int = 0


class Daemon:
    def __init__(self, config: Config, signatures: Signatures, *, config_path: str | None = None,
                 notifier: Notifier | None = None, clock=time.monotonic) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.queue = EventQueue(maxsize=20_000)
        self.stats = DaemonStats()
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.heartbeat = clock()
        self.state = WatchState(config, signatures, self.queue, self.stats, clock=clock)
        self._worker = threading.Thread(target=self._work, name="worker", daemon=True)
        self._metrics_server = None

    # ------------------------------------------------------------------ lifecycle (main thread)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._install_signals()
        self.state.start()
        if self.state.config.metrics.listen:
            from agent import metrics

            self._metrics_server = metrics.serve(self.state.config.metrics.listen, self.metrics_stats)
        self._worker.start()
        # The first scan may take a while on a big host: SIGTERM still ends it promptly.
        while not self.state.ready.wait(0.5) and not self.stop_event.is_set():
            pass
        if not self.stop_event.is_set():
            self.notifier.ready(self.state.status_line())
            log.info("started", status=self.state.status_line())
        ping_every = self.notifier.watchdog_interval() or 5.0
        last_status = self.clock()
        while not self.stop_event.wait(min(ping_every, 1.0)):
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.notifier.reloading()
                self.queue.put(ContainerEvent("reload"))
            # Tell the truth: ping systemd only while the worker is alive and making progress.
            if not self._worker.is_alive():
                # Never keep running blind: exit non-zero so systemd (Restart=on-failure) restarts us.
                log.error("worker_died", exit_code=1)
                self.notifier.notify("STATUS=worker thread died; exiting to be restarted")
                self.state.stop()
                return 1
            if self.clock() - self.heartbeat < max(30.0, 6 * self.state.config.agent.interval):
                self.notifier.watchdog()
            else:
                log.error("worker_stalled", since=round(self.clock() - self.heartbeat, 1))
            if self.clock() - last_status >= STATUS_EVERY_S:
                self.notifier.status(self.state.status_line())
                last_status = self.clock()
        self.notifier.stopping()
        log.info("stopping")
        # The worker finishes its current event; a long scan is not waited for (it is a daemon thread).
        self._worker.join(3)
        self.state.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        def on_stop(signum, _frame):
            self.stop_event.set()

        def on_hup(signum, _frame):
            self.reload_event.set()  # the main loop turns it into a reload event for the worker

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def metrics_stats(self) -> dict:
        return self.state.metrics_snapshot()

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        state = self.state
        try:
            state.initial_scan(self.stop_event)
        except Exception as exc:  # crash barrier: a bad first scan must not keep the agent from running
            self.stats.worker_errors += 1
            log.exception("initial_scan_failed", error=repr(exc))
        state.ready.set()
        next_tick = self.clock() + state.config.agent.interval
        while not self.stop_event.is_set():
            self.heartbeat = self.clock()
            event = self.queue.get(timeout=max(0.0, min(0.5, next_tick - self.clock())))
            try:
                if isinstance(event, ContainerEvent) and event.action == "reload":
                    self._reload()
                elif event is not None:
                    state.handle(event)
                if self.clock() >= next_tick:
                    state.periodic()
                    next_tick = self.clock() + state.config.agent.interval
            except Exception as exc:  # crash barrier: one bad event or scan never kills the worker
                self.stats.worker_errors += 1
                # Not event=: that is structlog's own first argument, and the TypeError killed the worker.
                log.exception("worker_error", failed_event=repr(event)[:200], error=repr(exc))

    def _reload(self) -> None:
        """Load config and signatures again; keep the last good ones (and say why) when they are bad."""
        try:
            cfg = config_mod.load(self.config_path)
            sig = signatures_mod.load_bundle(cfg.agent.signatures or None)
        except MinerwatchError as exc:
            self.stats.reload_failures += 1
            log.error("reload_failed", error=str(exc), keeping=self.state.signatures.version)
            self.notifier.notify("READY=1", f"STATUS=reload failed, running on the last good configuration: {str(exc)[:200]}")
            return
        self.state.apply(cfg, sig)
        self.stats.reloads += 1
        log.info("reloaded", signatures=sig.version, config=cfg.source)
        self.notifier.notify("READY=1", f"STATUS={self.state.status_line()}")
