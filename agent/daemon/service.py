"""The daemon's main thread: start the collectors and the worker, then signals, sd_notify and the watchdog.

Threads and who owns what:
- collectors (proc connector, Docker events, file watcher) only enqueue events;
- the worker thread owns all detection state, through the parts ``wiring`` gave it;
- the alert pipeline's delivery threads own the sinks;
- this (main) thread handles signals, systemd notifications and the watchdog, and asks the
  worker to reload or stop through the queue and the stop event, never by touching its state.

Signals are blocked in every thread and taken by this one with ``sigtimedwait``, which says who
sent them (``si_pid``, ``si_uid``): a stop is alerted with its sender (``daemon/lifecycle.py``).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

import structlog

from agent import alert
from agent.collectors.proc_connector import ConnectorUnavailable
from agent.config import Config
from agent.daemon import memory
from agent.daemon.sd_notify import Notifier
from agent.daemon.worker import Worker
from agent.events import EventQueue, Reload
from agent.sinks.pipeline import SpoolError

log = structlog.get_logger("minerwatch.daemon")

STATUS_EVERY_S = 10.0  # how often the STATUS= line shown by `systemctl status` is refreshed
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
TRIM_EVERY_S = 300.0  # free heap memory handed back to the kernel this often (daemon/memory.py)


@dataclass
class Collectors:
    """The threads beside the worker, started and stopped here: the bulk lane, and the collectors
    that feed the queues (the worker only hands the bulk lane work through its queue)."""

    bulk: object  # daemon.bulk.BulkLane: file inspections and memory scans
    file_watcher: object  # collectors.fswatch.FileWatcher
    proc_connector: object  # collectors.proc_connector.ProcConnector (exec events)
    docker_watcher: object  # collectors.docker_events.DockerWatcher


class Daemon:
    def __init__(self, config: Config, worker: Worker, collectors: Collectors, alerts, *, queue: EventQueue,
                 notifier: Notifier, lifecycle, clock=time.monotonic, serve_metrics=None) -> None:
        """``lifecycle``: makes the start and stop alerts (``daemon.lifecycle.Lifecycle``);
        ``serve_metrics(listen, stats_fn)`` starts the metrics endpoint (``daemon.metrics.serve``)."""
        self.config = config
        self.worker = worker
        self.collectors = collectors
        self.alerts = alerts
        self.queue = queue
        self.notifier = notifier
        self.clock = clock
        self.serve_metrics = serve_metrics
        self.lifecycle = lifecycle
        self.stop_event = threading.Event()
        self.exec_events = False  # the kernel connector is running (else: polling every interval)
        self._thread = threading.Thread(target=worker.run, args=(self.stop_event,), name="worker", daemon=True)
        self._metrics_server = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        # Before any thread starts: every thread inherits the mask, so only this one takes them;
        # and few malloc arenas (daemon/memory.py).
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        memory.limit_arenas()
        self._start_collectors()
        try:
            self._alert(self.lifecycle.started())
        except Exception as exc:  # crash barrier: a bad lifecycle record must not keep the agent from running
            log.exception("start_alert_failed", error=repr(exc))
        if self.config.metrics.listen and self.serve_metrics is not None:
            self._metrics_server = self.serve_metrics(self.config.metrics.listen, self.metrics_snapshot)
        self._thread.start()
        # The first scan may take a while on a big host: SIGTERM still ends it promptly.
        while not self.worker.ready.is_set() and not self.stop_event.is_set():
            self._take_signal(0.5)
        if not self.stop_event.is_set():
            memory.trim()  # the first scan's buffers are free now
            self.notifier.ready(self.status_line())
            log.info("started", status=self.status_line())
        ping_every = self.notifier.watchdog_interval() or 5.0
        last_status = last_trim = self.clock()
        while not self.stop_event.is_set():
            self._take_signal(min(ping_every, 1.0))
            if self.stop_event.is_set():
                break
            # Tell the truth: ping systemd only while the worker is alive and making progress.
            if not self._thread.is_alive() or not self.collectors.bulk.is_alive():
                # Never keep running blind: exit non-zero so systemd (Restart=on-failure) restarts us.
                log.error("worker_died", exit_code=1)
                self.notifier.notify("STATUS=worker thread died; exiting to be restarted")
                self._stop_collectors()
                return 1
            if self.clock() - self.worker.heartbeat < max(30.0, 6 * self.config.agent.interval):
                self.notifier.watchdog()
            else:
                log.error("worker_stalled", since=round(self.clock() - self.worker.heartbeat, 1))
            if self.clock() - last_status >= STATUS_EVERY_S:
                self.notifier.status(self.status_line())
                last_status = self.clock()
            if self.clock() - last_trim >= TRIM_EVERY_S:
                memory.trim()
                last_trim = self.clock()
        self.notifier.stopping()
        log.info("stopping")
        # The worker finishes its current event; a long scan is not waited for (it is a daemon thread).
        self._thread.join(3)
        self._stop_collectors()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("stopped")
        return 0

    def _take_signal(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a signal and act on it: HUP reloads, TERM/INT stop (alerted with the sender)."""
        info = signal.sigtimedwait(SIGNALS, timeout)
        if info is None:
            return
        if info.si_signo not in SIGNALS:  # 0 seen when a tracer (py-spy without --nonblocking) attached: not a request
            log.debug("signal_wait_spurious", signo=info.si_signo)
            return
        if info.si_signo == signal.SIGHUP:
            self.notifier.reloading()
            self.queue.put(Reload())
            return
        name = signal.Signals(info.si_signo).name
        log.warning("stop_requested", signal=name, sender_pid=info.si_pid, sender_uid=info.si_uid)
        self.stop_event.set()
        try:
            self._alert(self.lifecycle.stopping(name, info.si_pid, info.si_uid))
        except Exception as exc:  # crash barrier: the stop goes on even if its alert cannot be made
            log.exception("stop_alert_failed", error=repr(exc))

    def _alert(self, finding) -> None:
        """An alert about the agent itself: straight into the spool, whatever the alert threshold."""
        try:
            self.alerts.submit(alert.build(finding))
        except SpoolError as exc:
            log.error("alert_not_spooled", finding=finding.finding_id, error=str(exc))

    def on_reloaded(self, failure: str) -> None:
        """Called by the worker thread after a reload ("" when it worked)."""
        self.notifier.notify("READY=1", f"STATUS={failure or self.status_line()}")

    def _start_collectors(self) -> None:
        c = self.collectors
        self.alerts.start()
        c.bulk.start()
        c.file_watcher.watch_host_paths(self.config.watch.paths)
        c.file_watcher.start()
        # Lost exec events (overrun) are caught by the periodic poll of /proc, every interval.
        try:
            c.proc_connector.start()
            self.exec_events = True
        except ConnectorUnavailable as exc:
            log.warning("proc_connector_unavailable", reason=str(exc),
                        fallback=f"polling every {self.config.agent.interval} s")
        c.docker_watcher.start()

    def _stop_collectors(self) -> None:
        c = self.collectors
        c.docker_watcher.stop()
        if self.exec_events:
            c.proc_connector.stop()
        c.file_watcher.stop()
        c.bulk.stop()
        self.alerts.stop(timeout=5)

    # ------------------------------------------------------------------ health (read-only, any thread)

    def status_line(self) -> str:
        w = self.worker
        docker = "docker events" if self.collectors.docker_watcher.connected else "no docker (process-only)"
        execs = "exec events" if self.exec_events else "polling (no proc connector)"
        overflow = w.p.tracker.evicted + w.p.behaviour.evicted
        full = f"; tables full: {w.p.tracker.evicted} + {w.p.behaviour.evicted} evicted" if overflow else ""
        return (f"watching {len(w.p.tracker)} processes, {len(w.p.containers)} containers; {docker}; {execs}; "
                f"signatures {w.signatures.version}{full}")

    def metrics_snapshot(self) -> dict:
        w, s = self.worker, self.worker.stats
        return {
            "processes": len(w.p.tracker),
            "containers": len(w.p.containers),
            "docker_connected": bool(self.collectors.docker_watcher.connected),
            "proc_connector": self.exec_events,
            "findings": dict(s.findings),
            "events": dict(s.events),
            "events_dropped": dict(self.queue.dropped),
            "queue": self.queue.qsize(),
            "scans": s.scans,
            "scan_seconds": s.scan_seconds,
            "last_scan_seconds": s.last_scan_seconds,
            "detector_errors": w.p.judge.detector_errors,
            "over_budget": dict(s.over_budget),
            "execs": dict(s.execs),
            "crossview": dict(s.crossview),
            "known_executables": len(w.p.known),
            "tracker_evicted": w.p.tracker.evicted,
            "behaviour_evicted": w.p.behaviour.evicted,
            "behaviour_tracked": len(w.p.behaviour),
            "bulk": self.collectors.bulk.stats(),
            "alerts": self.alerts.stats(),
        }
