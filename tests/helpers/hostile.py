"""Helpers for the hostile-host tests and bench/storm.py: measuring the agent, and container storms.

    sampler = ResourceSampler(agent.proc.pid).start()   # VmRSS every 0.5 s, VmHWM, CPU seconds
    ...; sampler.stop(); sampler.peak_rss_mib, sampler.hwm_mib, sampler.cpu_s
    m = scrape(port)                                       # {"minerwatch_events_dropped": {...}, ...}
    result = storm(client, image, total=60, miners=6)      # StormResult: ids, miner ids, seconds
    remove_all(client, result.all_ids)                     # parallel removal (the scope removes leftovers)

AgentProcess runs the daemon with ``[response] mode = "observe"`` by default: on a host shared
with other test sessions an enforcing agent would pause *their* miner containers too.
"""
from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import containers, procs
from tests.helpers.containers import TEST_WALLET

MINER_SCRIPT = ("fakepool 3333 & sleep 0.2; exec fakeminer -o stratum+tcp://127.0.0.1:3333 -u {wallet} "
                "-t 0 --seconds {seconds}")


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM), 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class ResourceSampler:
    """Samples an agent's resident memory every ``every`` seconds in a thread; CPU seconds between start and stop."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.samples: list[int] = []  # VmRSS KiB
        self.hwm_kib = 0
        self.start_rss_kib = self.start_hwm_kib = 0  # when start() was called
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> ResourceSampler:
        self._cpu0, self._t0 = procs.cpu_seconds(self.pid), time.monotonic()
        self.start_rss_kib, self.start_hwm_kib = status_kib(self.pid, "VmRSS"), status_kib(self.pid, "VmHWM")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(status_kib(self.pid, "VmRSS"))
                self.hwm_kib = status_kib(self.pid, "VmHWM")
            except OSError:  # the agent exited: the test reports that itself
                return

    def stop(self) -> ResourceSampler:
        self._stop.set()
        self._thread.join(5)
        try:
            self.cpu_s = procs.cpu_seconds(self.pid) - self._cpu0
            self.hwm_kib = status_kib(self.pid, "VmHWM")
        except OSError:
            pass
        self.wall_s = time.monotonic() - self._t0
        return self

    @property
    def peak_rss_mib(self) -> float:
        return max(self.samples, default=0) / 1024

    @property
    def hwm_mib(self) -> float:
        return self.hwm_kib / 1024

    def memory_line(self) -> str:
        """VmRSS at start -> peak sampled, and VmHWM at start -> at stop (the start's is the agent's own start-up)."""
        return (f"VmRSS {self.start_rss_kib / 1024:.1f} -> peak {self.peak_rss_mib:.1f} MiB, VmHWM "
                f"{self.start_hwm_kib / 1024:.1f} -> {self.hwm_mib:.1f} MiB")

    @property
    def cpu_pct(self) -> float:
        """CPU between start and stop, in percent of one core."""
        return 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """The agent's metrics: family name -> {label values tuple: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(family.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StormResult:
    all_ids: list[str] = field(default_factory=list)
    miner_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0  # from the first create to the last start
    errors: list[str] = field(default_factory=list)


def storm(client, image: str, total: int, miners: int, *, workers: int = 8, seconds: int = 180,
          prefix: str = "mwtest-storm", scope: containers.Scope | None = None) -> StormResult:
    """Start ``total`` containers (``miners`` of them fakeminer + fakepool, spread evenly) as fast as
    ``workers`` parallel clients can; each is tracked in ``scope`` (default: the current test's)."""
    scope = scope or containers._current()
    run_id = uuid.uuid4().hex[:6]
    step = max(1, total // max(1, miners))
    miner_slots = {i * step for i in range(miners)}
    result = StormResult()

    def start(i: int) -> tuple[str, bool]:
        is_miner = i in miner_slots
        cmd = ["sh", "-c", MINER_SCRIPT.format(wallet=TEST_WALLET, seconds=seconds)] if is_miner else ["sleep", str(seconds)]
        c = containers.run_container(client, image, cmd, name=f"{prefix}-{run_id}-{i:03d}{'-m' if is_miner else ''}",
                                     scope=scope, labels={"minerwatch.test.storm": run_id})
        return c.id, is_miner

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(start, i) for i in range(total)]
        for f in futures:
            try:
                cid, is_miner = f.result()
            except Exception as exc:  # noqa: BLE001 - the engine refused one: reported by the caller's asserts
                result.errors.append(repr(exc))
                continue
            result.all_ids.append(cid)
            if is_miner:
                result.miner_ids.append(cid)
    result.seconds = time.monotonic() - t0
    return result


def remove_all(client, ids: list[str], workers: int = 8) -> float:
    """Force-remove containers in parallel (the tracking scope then finds them gone); seconds taken."""
    import requests

    t0 = time.monotonic()
    unanswered: list[str] = []

    def remove(cid: str) -> None:
        if len(unanswered) >= containers.MAX_UNANSWERED:
            return  # a wedged engine: the tracking scope reports what is left, without a timeout each
        try:
            containers.remove_container(client, cid)
        except requests.exceptions.RequestException:
            unanswered.append(cid)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(remove, ids))
    return time.monotonic() - t0
