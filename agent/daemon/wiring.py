"""All of the daemon's wiring: every part is built here and handed to the parts that use it.

No part builds its own collaborators. To add one: build it here, pass it in, and say in
docs/ARCHITECTURE.md which thread owns it.
"""

from __future__ import annotations

import os
import time

from agent import config as config_mod, trust
from agent.collectors.cpu_sampler import CpuSampler
from agent.collectors.crossview import CrossView
from agent.collectors.docker_api import DockerHandle
from agent.collectors.docker_events import DockerWatcher
from agent.collectors.file_inspector import FileInspector
from agent.collectors.fswatch import FileWatcher
from agent.collectors.proc_connector import ProcConnector
from agent.collectors.snapshots import SnapshotCollector
from agent.config import Config
from agent.daemon.behaviour import BehaviourModel
from agent.daemon.bulk import BulkLane
from agent.daemon.containers import ContainerRegistry
from agent.daemon.emitter import Emitter
from agent.daemon.known_execs import KnownExecutables
from agent.daemon.lifecycle import Lifecycle
from agent.daemon.sd_notify import Notifier
from agent.daemon.service import Collectors, Daemon
from agent.daemon.tracker import ProcessTracker
from agent.daemon.parts import Parts, WorkerStats
from agent.daemon.worker import Worker
from agent.events import EventQueue
from agent.judge import Judge
from agent.response import Responder, identity
from agent.signatures import Signatures
from agent.sinks.pipeline import AlertPipeline

QUEUE_SIZE = 20_000
BULK_QUEUE_SIZE = 10_000


def loader(config_path: str | None):
    """What a reload reads: the config file and the signature bundle it names, with the same trust
    checks as at start (MinerwatchError, TrustError included, when bad: the last good ones stay)."""
    def load() -> tuple[Config, Signatures]:
        cfg = trust.load_config(config_path)
        config_mod.check_host_paths(cfg)
        return cfg, trust.load_signatures(cfg)

    return load


def serve_metrics(listen: str, stats):
    """The metrics endpoint, when ``[metrics] listen`` asks for one."""
    # Imported here, not at the top: prometheus_client costs ~10 MiB resident, paid only when used.
    from agent.daemon import metrics

    return metrics.serve(listen, stats)


def build(config: Config, signatures: Signatures, *, config_path: str | None = None,
          notifier: Notifier | None = None, clock=time.monotonic) -> Daemon:
    cfg = config
    queue = EventQueue(maxsize=QUEUE_SIZE)
    own_pid = os.getpid()
    snapshots = SnapshotCollector(cfg, signatures)
    own = snapshots.procfs.snapshot(own_pid)
    own_container = own.container_id if own is not None else ""
    judge = Judge.from_config(cfg, signatures, agent_container=own_container)
    docker = DockerHandle(cfg.docker.url)
    bulk_inbox = EventQueue(maxsize=BULK_QUEUE_SIZE)  # file events and memory scans wait here, not before execs
    file_watcher = FileWatcher(bulk_inbox)
    bulk = BulkLane(bulk_inbox, queue, FileInspector(snapshots.hash_cache, snapshots.yara_scanner(), snapshots.max_bytes),
                    snapshots.yara_scanner())
    alerts = AlertPipeline(cfg)
    stats = WorkerStats()
    responder = Responder(cfg, docker, state_dir=cfg.agent.state_dir, clock=clock)
    parts = Parts(
        snapshots=snapshots,
        bulk=bulk,
        file_watcher=file_watcher,
        containers=ContainerRegistry(docker, judge, file_watcher),
        tracker=ProcessTracker(),
        known=KnownExecutables(),
        behaviour=BehaviourModel(window_s=max(60.0, 12 * cfg.agent.interval), clock=clock),
        sampler=CpuSampler(proc_root=cfg.agent.proc_root, clock=clock),
        judge=judge,
        emitter=Emitter(cfg, responder, alerts, stats),
        crossview=CrossView(proc_root=str(cfg.agent.proc_root), clock=clock),
    )
    worker = Worker(cfg, signatures, parts, queue, clock=clock, own_pid=own_pid, own_container=own_container,
                    own_ancestors=identity.ancestors(cfg.agent.proc_root, own_pid), load=loader(config_path), stats=stats)
    collectors = Collectors(
        bulk=bulk,
        file_watcher=file_watcher,
        proc_connector=ProcConnector(queue.put),
        docker_watcher=DockerWatcher(cfg.docker.url, queue),
    )
    daemon = Daemon(cfg, worker, collectors, alerts, queue=queue, notifier=notifier or Notifier(), clock=clock,
                    lifecycle=Lifecycle(cfg.agent.state_dir, cfg.agent.proc_root), serve_metrics=serve_metrics)
    worker.on_reload = daemon.on_reloaded
    return daemon
