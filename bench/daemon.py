"""Daemon benchmark: steady-state CPU and memory under load, and container start to alert,
for this checkout and a baseline revision, side by side in one run.

    python3 bench/daemon.py [--procs 500] [--containers 50] [--starts 20] [--measure 60]
                            [--baseline REV | --no-baseline] [--new REV]

Prints, in one run, each figure for the old revision (``--baseline``, default ed345f9: the
commit before the worker redesign, run from a cached worktree by bench/baseline.py) and the
new one (this checkout, or ``--new REV``), with the ratio new/old:
- host as it is: the agent's CPU (percent of one core) and peak resident memory;
- loaded: the same with ``--procs`` extra idle processes and ``--containers`` idle containers;
- latency: p50/p95/max from ``docker run`` of a miner container to its alert line in the alert file.
Each phase runs the old agent, then the new one, alone (one daemon at a time, a fresh one per
phase, same load), so both see the same host. Alert lines are read without schema validation
(each revision has its own schema; the suite validates alerts).
Targets (PRODUCT.md), checked on the new revision only: at most 1% of one core and 80 MiB
resident; p95 start-to-alert <= 1 s. Exit code 1 when a target is missed.
Needs root, a running Docker engine and the test helpers (it builds them offline, like the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from bench import baseline  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402
from tests.helpers import build, containers, images  # noqa: E402
from tests.helpers.containers import TEST_WALLET  # noqa: E402

CPU_TARGET_PCT, RSS_TARGET_MIB, P95_TARGET_S = 1.0, 80.0, 1.0
LABEL = {"minerwatch.bench": "daemon"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def steady_state(agent: AgentProcess, settle: float, measure: float) -> tuple[float, float]:
    """(CPU percent of one core, peak RSS MiB) of the agent over ``measure`` seconds after ``settle``."""
    time.sleep(settle)
    pid = agent.proc.pid
    c0, t0, peak = cpu_seconds(pid), time.monotonic(), 0.0
    while time.monotonic() - t0 < measure:
        peak = max(peak, rss_mib(pid))
        time.sleep(1)
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0), peak


def wait_container_alert(agent: AgentProcess, container_id: str, timeout: float) -> None:
    """Until the agent's alert file has a line about ``container_id`` (parsed, not validated)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.alerts_path.exists():
            for line in agent.alerts_path.read_text().splitlines():
                try:
                    if json.loads(line).get("container", {}).get("id") == container_id:
                        return
                except ValueError:
                    continue  # a line being written
        if agent.proc.poll() is not None:
            raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.log()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no alert for container {container_id[:12]} within {timeout} s\n{agent.log()[-3000:]}")


def start_to_alert(agent: AgentProcess, client, image: str, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        t0 = time.monotonic()
        c = containers.run_container(
            client, image, ["sh", "-c", f"fakepool 3333 & sleep 0.1; exec fakeminer -o "
                            f"stratum+tcp://127.0.0.1:3333 -u {TEST_WALLET} -t 0 --seconds 30"],
            name_prefix="mw-bench-miner", labels=LABEL)
        wait_container_alert(agent, c.id, 30.0)
        latencies.append(time.monotonic() - t0)
        containers.remove_container(client, c.id)
    return latencies


class Runs:
    """One fresh agent per (tree, phase), each alone on the host while it is measured."""

    def __init__(self, work: Path) -> None:
        self.work, self.n = work, 0

    def agent(self, tree: baseline.Tree) -> AgentProcess:
        self.n += 1
        source = None if tree.root == baseline.REPO else tree.root
        return AgentProcess(self.work / f"agent-{self.n}-{tree.commit[:7]}", interval=5.0, source=source).start()

    def steady(self, tree: baseline.Tree, settle: float, measure: float) -> tuple[float, float]:
        agent = self.agent(tree)
        try:
            return steady_state(agent, settle, measure)
        finally:
            agent.stop()

    def loaded(self, tree: baseline.Tree, settle: float, measure: float, client, image: str,
               starts: int) -> tuple[float, float, list[float]]:
        agent = self.agent(tree)
        try:
            cpu, rss = steady_state(agent, settle, measure)
            return cpu, rss, sorted(start_to_alert(agent, client, image, starts))
        finally:
            agent.stop()


def percentiles(lat: list[float]) -> tuple[float, float, float]:
    return statistics.median(lat), lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))], lat[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--settle", type=float, default=20)
    ap.add_argument("--measure", type=float, default=60)
    baseline.add_arguments(ap)
    args = ap.parse_args()
    old, new = baseline.trees_from_args(args)
    client = docker.from_env()
    image = images.build_base_image(client, build.build_helpers())
    runs = Runs(Path(tempfile.mkdtemp(prefix="mw-bench-daemon-")))
    trees = [t for t in (old, new) if t is not None]
    sleepers: list[subprocess.Popen] = []
    ok = True
    print(f"old: {old.root if old else '-'}\nnew: {new.root}", flush=True)
    table = baseline.Table(old, new)
    try:
        with containers.tracking_scope("bench-daemon"):
            steady = [runs.steady(t, args.settle, args.measure) for t in trees]  # old first, then new
            (o_cpu, o_rss), (cpu, rss) = (steady[0] if old else (None, None)), steady[-1]
            table.row("host as it is: agent CPU % of one core", o_cpu, cpu, "{:.2f}")
            table.row("host as it is: agent peak RSS MiB", o_rss, rss, "{:.1f}")
            sleepers = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(args.procs)]
            for _ in range(args.containers):
                containers.run_container(client, image, ["sleep", "3600"], name_prefix="mw-bench-idle", labels=LABEL)
            loaded = [runs.loaded(t, args.settle, args.measure, client, image, args.starts) for t in trees]
            (o_cpu, o_rss, o_lat), (cpu, rss, lat) = (loaded[0] if old else (None, None, None)), loaded[-1]
            hit_cpu, hit_rss = cpu <= CPU_TARGET_PCT, rss <= RSS_TARGET_MIB
            ok &= hit_cpu and hit_rss
            what = f"loaded (+{args.procs} procs, +{args.containers} ctrs)"
            table.row(f"{what}: CPU %", o_cpu, cpu, "{:.2f}",
                      f"target <= {CPU_TARGET_PCT}%: {'met' if hit_cpu else 'MISSED'}")
            table.row(f"{what}: RSS MiB", o_rss, rss, "{:.1f}",
                      f"target <= {RSS_TARGET_MIB}: {'met' if hit_rss else 'MISSED'}")
            p50, p95, top = percentiles(lat)
            o50, o95, otop = percentiles(o_lat) if o_lat else (None, None, None)
            ok &= p95 <= P95_TARGET_S
            table.row(f"start to alert over {len(lat)} starts: p50 s", o50, p50)
            table.row(f"start to alert over {len(lat)} starts: p95 s", o95, p95, note=f"target <= {P95_TARGET_S} s: "
                      f"{'met' if p95 <= P95_TARGET_S else 'MISSED'}")
            table.row(f"start to alert over {len(lat)} starts: max s", otop, top)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        # The tracking scope removed what it started; this catches anything left by an interrupted run.
        for c in client.containers.list(all=True, filters={"label": "minerwatch.bench=daemon"}):
            c.remove(force=True)
    print(f"targets on new {new.label}: {'met' if ok else 'MISSED'}; CPU figures are noisy on a shared host")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
