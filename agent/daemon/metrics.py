"""Prometheus metrics: one collector that reads the daemon's counters when scraped.

The counters live with their owners (daemon, event queue, alert pipeline); this module only
turns a stats snapshot into metric families, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

StatsFn = Callable[[], dict]


class DaemonCollector:
    """The one-method Collector protocol: ``collect()`` yields families built from ``stats()``."""

    def __init__(self, stats: StatsFn) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()
        yield GaugeMetricFamily("minerwatch_processes_watched", "Processes known to the agent", value=s["processes"])
        yield GaugeMetricFamily("minerwatch_containers_watched", "Running containers known to the agent",
                                value=s["containers"])
        yield GaugeMetricFamily("minerwatch_docker_connected", "1 when the Docker event stream is connected",
                                value=1 if s["docker_connected"] else 0)
        yield GaugeMetricFamily("minerwatch_exec_events_live", "1 when exec events come from the kernel connector",
                                value=1 if s["proc_connector"] else 0)
        findings = CounterMetricFamily("minerwatch_findings", "Findings by severity", labels=["severity"])
        for sev, n in sorted(s["findings"].items()):
            findings.add_metric([sev], n)
        yield findings
        events = CounterMetricFamily("minerwatch_events", "Events processed by type", labels=["type"])
        for kind, n in sorted(s["events"].items()):
            events.add_metric([kind], n)
        yield events
        dropped = CounterMetricFamily("minerwatch_events_dropped", "Events dropped by type (queue full)", labels=["type"])
        for kind, n in sorted(s["events_dropped"].items()):
            dropped.add_metric([kind], n)
        yield dropped
        yield GaugeMetricFamily("minerwatch_event_queue_length", "Events waiting in the queue", value=s["queue"])
        bulk = s.get("bulk", {})
        yield GaugeMetricFamily("minerwatch_bulk_queue_length", "File inspections and memory scans waiting in the bulk lane",
                                value=bulk.get("waiting", 0))
        done = CounterMetricFamily("minerwatch_bulk_done", "Bulk lane work done, by kind", labels=["kind"])
        for kind in ("files", "memory_scans", "errors", "results_dropped", "over_budget"):
            done.add_metric([kind], bulk.get(kind, 0))
        yield done
        yield CounterMetricFamily("minerwatch_bulk_dropped", "Bulk lane work dropped (its queue was full)",
                                  value=bulk.get("dropped", 0))
        scans = CounterMetricFamily("minerwatch_scan_seconds", "Time spent in periodic scans", labels=[])
        scans.add_metric([], s["scan_seconds"])
        yield scans
        yield CounterMetricFamily("minerwatch_scans", "Periodic scans completed", value=s["scans"])
        yield GaugeMetricFamily("minerwatch_last_scan_duration_seconds", "Duration of the last periodic scan",
                                value=s["last_scan_seconds"])
        yield CounterMetricFamily("minerwatch_detector_errors", "Detector crashes caught by the barrier",
                                  value=s["detector_errors"])
        execs = CounterMetricFamily("minerwatch_execs", "Exec events by how they were judged", labels=["how"])
        for how, n in sorted(s.get("execs", {}).items()):
            execs.add_metric([how], n)
        yield execs
        cross = CounterMetricFamily("minerwatch_crossview", "Hidden-process cross-views: runs, runs the task census "
                                    "agreed (no probe), hidden and /proc-mounted processes, preload files found",
                                    labels=["what"])
        for what in ("runs", "census_agreed", "hidden", "mounted", "preload_files"):
            cross.add_metric([what], s.get("crossview", {}).get(what, 0))
        yield cross
        yield GaugeMetricFamily("minerwatch_known_executables", "Executables judged clean whole (their execs stop "
                                "at a glance)", value=s.get("known_executables", 0))
        slow = CounterMetricFamily("minerwatch_work_over_budget", "Units of work (events, periodic passes) that "
                                   "took longer than their time budget", labels=["unit"])
        for unit, n in sorted(s.get("over_budget", {}).items()):
            slow.add_metric([unit], n)
        yield slow
        evicted = CounterMetricFamily("minerwatch_table_evictions", "Entries evicted from a full table "
                                      "(the least suspicious first)", labels=["table"])
        evicted.add_metric(["processes"], s.get("tracker_evicted", 0))
        evicted.add_metric(["behaviour"], s.get("behaviour_evicted", 0))
        yield evicted
        yield GaugeMetricFamily("minerwatch_behaviour_processes", "Processes with CPU history in the behaviour model",
                                value=s.get("behaviour_tracked", 0))
        delivered = CounterMetricFamily("minerwatch_alerts_delivered", "Alerts delivered by sink", labels=["sink"])
        failed = CounterMetricFamily("minerwatch_alerts_failed", "Alert delivery attempts that failed", labels=["sink"])
        for sink, counts in sorted(s["alerts"].get("sinks", {}).items()):
            delivered.add_metric([sink], counts.get("delivered", 0))
            failed.add_metric([sink], counts.get("failed", 0))
        yield delivered
        yield failed
        yield CounterMetricFamily("minerwatch_alerts_dropped", "Alerts dropped from a full spool",
                                  value=s["alerts"].get("dropped", 0))
        yield CounterMetricFamily("minerwatch_alerts_suppressed", "Alerts suppressed as duplicates",
                                  value=s["alerts"].get("suppressed", 0))


def serve(listen: str, stats: StatsFn):
    """Serve ``/metrics`` on ``HOST:PORT``; returns the HTTP server (call ``shutdown()`` to stop)."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(stats))
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server
