"""Daemon benchmark: steady-state CPU and memory under load, and container start to alert.

    python3 bench/daemon.py [--procs 500] [--containers 50] [--starts 20] [--measure 60]

Prints, in one run:
- baseline: the agent's CPU (percent of one core) and resident memory on this host as it is;
- loaded: the same with ``--procs`` extra idle processes and ``--containers`` idle containers;
- latency: p50/p95 from ``docker run`` of a miner container to its alert line in the alert file.
Targets (PRODUCT.md): at most 1% of one core and 80 MiB resident; p95 start-to-alert <= 1 s.
Needs root, a running Docker engine and the test helpers (it builds them offline, like the tests).
Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from tests.agentproc import AgentProcess  # noqa: E402
from tests.helpers import build, images  # noqa: E402
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


def start_to_alert(agent: AgentProcess, client, image: str, n: int) -> list[float]:
    latencies = []
    for i in range(n):
        t0 = time.monotonic()
        c = client.containers.run(image, ["sh", "-c", f"fakepool 3333 & sleep 0.1; exec fakeminer -o "
                                          f"stratum+tcp://127.0.0.1:3333 -u {TEST_WALLET} -t 0 --seconds 30"],
                                  detach=True, network_mode="none", labels=LABEL, name=f"mw-bench-miner-{i}")
        agent.wait_alert(lambda a: a.get("container", {}).get("id") == c.id, 30.0, "bench alert")
        latencies.append(time.monotonic() - t0)
        c.remove(force=True)
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--settle", type=float, default=20)
    ap.add_argument("--measure", type=float, default=60)
    args = ap.parse_args()
    client = docker.from_env()
    image = images.build_base_image(client, build.build_helpers())
    work = Path(tempfile.mkdtemp(prefix="mw-bench-daemon-"))
    agent = AgentProcess(work / "agent", interval=5.0).start()
    sleepers: list[subprocess.Popen] = []
    ok = True
    try:
        cpu, rss = steady_state(agent, args.settle, args.measure)
        print(f"baseline: agent CPU {cpu:.2f}% of one core, RSS {rss:.1f} MiB")
        sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.procs)]
        for i in range(args.containers):
            client.containers.run(image, ["sleep", "3600"], detach=True, network_mode="none", labels=LABEL,
                                  name=f"mw-bench-idle-{i}")
        cpu, rss = steady_state(agent, args.settle, args.measure)
        hit = cpu <= CPU_TARGET_PCT and rss <= RSS_TARGET_MIB
        ok &= hit
        print(f"loaded (+{args.procs} processes, +{args.containers} containers): agent CPU {cpu:.2f}% of one core "
              f"(target <= {CPU_TARGET_PCT}%), RSS {rss:.1f} MiB (target <= {RSS_TARGET_MIB}): {'met' if hit else 'MISSED'}")
        lat = sorted(start_to_alert(agent, client, image, args.starts))
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        ok &= p95 <= P95_TARGET_S
        print(f"container start to alert over {len(lat)} starts: p50 {p50:.3f} s, p95 {p95:.3f} s, max {lat[-1]:.3f} s "
              f"(target p95 <= {P95_TARGET_S} s: {'met' if p95 <= P95_TARGET_S else 'MISSED'})")
    finally:
        agent.stop()
        for p in sleepers:
            p.kill()
            p.wait()
        for c in client.containers.list(all=True, filters={"label": "minerwatch.bench=daemon"}):
            c.remove(force=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
