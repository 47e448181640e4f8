"""Container storm benchmark: N containers (M miners) started as fast as possible under a running agent.

    python3 bench/storm.py [--containers 200] [--miners 10] [--workers 8] [--rounds 1]

Prints, per round: how long the storm took to start, how long until every miner container had
an alert, the agent's peak resident memory (sampled VmRSS, and VmHWM) and CPU, its event
counts and drops (metrics endpoint), and how long removal took. Exit code 1 when a miner was
missed, an event was dropped or memory grew past --rss-mib. Several rounds show whether
memory keeps growing from storm to storm (it must not: every container is forgotten when it
goes). Needs root, a running Docker engine and the test helpers (built offline, like the tests).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.agentproc import AgentProcess  # noqa: E402
from tests.helpers import build, containers, images  # noqa: E402
from tests.helpers.hostile import ResourceSampler, free_port, remove_all, scrape, storm  # noqa: E402


def one_round(agent: AgentProcess, port: int, client, image: str, args) -> bool:
    sampler = ResourceSampler(agent.proc.pid).start()
    with containers.tracking_scope("bench-storm") as scope:
        result = storm(client, image, args.containers, args.miners, workers=args.workers, scope=scope,
                       prefix="mw-bench-storm")
        t_end = time.monotonic()
        missing = set(result.miner_ids)
        deadline = t_end + args.timeout
        while missing and time.monotonic() < deadline:
            alerted = {a.get("container", {}).get("id") for a in agent.alerts()}
            missing -= alerted
            time.sleep(0.5)
        alerted_s = time.monotonic() - t_end
        metrics = scrape(port)
        removed_s = remove_all(client, result.all_ids, workers=args.workers)
    time.sleep(2 * args.interval)  # the agent forgets the removed containers
    sampler.stop()
    dropped = sum(metrics.get("minerwatch_events_dropped", {}).values())
    events = {k[0][1]: int(v) for k, v in metrics.get("minerwatch_events", {}).items() if k}
    ok = not missing and not dropped and not result.errors and sampler.hwm_mib <= args.rss_mib
    print(f"storm: {args.containers} containers ({args.miners} miners) started in {result.seconds:.1f} s "
          f"({args.containers / result.seconds:.1f}/s), {len(result.errors)} start errors")
    print(f"  miners alerted: {args.miners - len(missing)}/{args.miners}, the last {alerted_s:.1f} s after the storm ended")
    print(f"  agent memory: {sampler.memory_line()} (bound {args.rss_mib} MiB)")
    print(f"  agent CPU: {sampler.cpu_s:.1f} s over {sampler.wall_s:.0f} s ({sampler.cpu_pct:.1f}% of one core)")
    print(f"  events since the agent started: {events}; dropped {dropped:.0f}; removal {removed_s:.1f} s: {'ok' if ok else 'FAILED'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--miners", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8, help="parallel Docker clients starting containers")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--interval", type=float, default=5.0, help="the agent's [agent] interval")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the miners' alerts")
    ap.add_argument("--rss-mib", type=float, default=250.0, help="fail when the agent's VmHWM exceeds this")
    args = ap.parse_args()
    client = containers.connect_docker()
    image = images.build_base_image(client, build.build_helpers())
    port = free_port()
    agent = AgentProcess(Path(tempfile.mkdtemp(prefix="mw-bench-storm-")) / "agent", interval=args.interval,
                         metrics=f"127.0.0.1:{port}").start()
    ok = True
    try:
        for n in range(args.rounds):
            print(f"round {n + 1}/{args.rounds}")
            ok &= one_round(agent, port, client, image, args)
    finally:
        agent.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
