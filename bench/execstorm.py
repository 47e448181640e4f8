"""Exec storm: the agent's CPU per exec at a CI runner's exec rate, beside the exec's own cost, old vs new.

    python3 bench/execstorm.py [--rate 300] [--seconds 30] [--baseline REV | --no-baseline] [--new REV]
                               [--one-at-a-time] [--hold S]

Prints, in one run:
- the exec's own cost: CPU (parent and child) of posix_spawn + wait of ``/bin/true``, measured on
  the storm itself (the floor any per-exec figure stands beside);
- for each revision's agent: CPU per exec (µs) and percent of one core over the storm, the exec
  events it saw, and how long a miner started in the middle of the storm took to be alerted.
Both agents run at the same time by default (the same storm, the same host load), a fresh pair
for the measurement. Target (issue 14): at most 100 µs per exec (3% of a core at 300 execs/s), the
miner alerted within 1 s. Exit code 1 when a target is missed on the new revision.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import baseline  # noqa: E402
from bench.daemon import cpu_seconds  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402
from tests.helpers import build  # noqa: E402
from tests.helpers.containers import TEST_WALLET  # noqa: E402
from tests.helpers.pool import FakePool  # noqa: E402

US_PER_EXEC_TARGET, ALERT_TARGET_S = 100.0, 1.0
TRUE = shutil.which("true") or "/bin/true"
SLEEP = shutil.which("sleep") or "/bin/sleep"


def storm(rate: float, seconds: float, at_half=None, hold: float = 0.0) -> tuple[int, float]:
    """posix_spawn of /bin/true at ``rate`` per second, each waited for; with ``hold``, of ``sleep HOLD``
    instead, reaped as they end (processes that live past the connector's batch window, so each exec is
    glanced, not found gone). Returns (execs, CPU seconds they cost, ours and theirs)."""
    own0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [SLEEP, f"{hold:g}"] if hold > 0 else [TRUE]
    t0, n, fired, live = time.monotonic(), 0, False, set()
    while (now := time.monotonic()) - t0 < seconds:
        if at_half is not None and not fired and now - t0 >= seconds / 2:
            at_half()
            fired = True
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pid = os.posix_spawn(argv[0], argv, {})
        n += 1
        if not hold:
            os.waitpid(pid, 0)
            continue
        live.add(pid)
        for p in list(live):
            if os.waitpid(p, os.WNOHANG)[0]:
                live.discard(p)
    for p in live:
        os.waitpid(p, 0)
    own1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cost = (own1.ru_utime - own0.ru_utime + own1.ru_stime - own0.ru_stime
            + kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime)
    return n, cost


def alerted_at(agent: AgentProcess, pid: int) -> float | None:
    """Wall-clock time (the alert's ``@timestamp``, ms) of the agent's first alert for ``pid``, or None."""
    from datetime import datetime

    for line in agent.alerts_path.read_text().splitlines() if agent.alerts_path.exists() else ():
        try:
            a = json.loads(line)
        except ValueError:
            continue
        if a.get("process", {}).get("pid") == pid:
            return datetime.fromisoformat(a["@timestamp"].replace("Z", "+00:00")).timestamp()
    return None


def measure(trees, rate: float, seconds: float, work: Path, bins, together: bool, hold: float = 0.0) -> list[dict]:
    """One storm per agent (or one for all, together); per tree: execs, agent CPU, alert latency."""
    out = []
    groups = [trees] if together else [[t] for t in trees]
    for group in groups:
        agents = [AgentProcess(work / f"{t.commit[:12]}-{len(out)}", interval=5.0, source=t.root).start() for t in group]
        try:
            time.sleep(8)  # the first scan and its first periodic pass are not the storm
            # The agents' CPU over a quiet window as long as the storm: what they spend without it
            # (periodic passes, other execs on this host), subtracted from the storm's figure.
            i0 = [cpu_seconds(a.proc.pid) for a in agents]
            time.sleep(seconds)
            c0 = [cpu_seconds(a.proc.pid) for a in agents]
            miner_bin = work / f"storm-miner-{len(out)}"
            shutil.copy2(bins.fakeminer, miner_bin)
            started: dict = {}
            with FakePool() as pool:
                def start_miner():
                    started["t"] = time.time()
                    started["p"] = subprocess.Popen([miner_bin, "-o", pool.url, "-u", TEST_WALLET, "-t", "0",
                                                     "--seconds", "60"], stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)

                n, exec_cost = storm(rate, seconds, at_half=start_miner, hold=hold)
                c1 = [cpu_seconds(a.proc.pid) for a in agents]
                latency = []
                for a in agents:
                    deadline = time.monotonic() + 10
                    seen = None
                    while seen is None and time.monotonic() < deadline:
                        seen = alerted_at(a, started["p"].pid)
                        time.sleep(0.02)
                    latency.append(None if seen is None else seen - started["t"])
                started["p"].kill()
                started["p"].wait()
            for t, a, idle0, before, after, lat in zip(group, agents, i0, c0, c1, latency):
                idle = before - idle0
                out.append({"tree": t, "execs": n, "exec_cost_us": 1e6 * exec_cost / n, "agent_cpu_s": after - before,
                            "us_per_exec": 1e6 * (after - before) / n, "pct_core": 100 * (after - before) / seconds,
                            "idle_pct": 100 * idle / seconds, "net_us": 1e6 * max(0.0, after - before - idle) / n,
                            "alert_s": lat})
        finally:
            for a in agents:
                a.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--hold", type=float, default=0.0, metavar="S",
                    help="exec `sleep S` instead of /bin/true: each process outlives the batch window and is glanced")
    ap.add_argument("--one-at-a-time", action="store_true", help="a storm per revision instead of one for both")
    baseline.add_arguments(ap)
    args = ap.parse_args()
    old, new = baseline.trees_from_args(args)
    trees = [t for t in (old, new) if t is not None]
    bins = build.build_helpers()
    work = Path(tempfile.mkdtemp(prefix="mw-bench-execstorm-"))
    program = f"{SLEEP} {args.hold:g}" if args.hold else TRUE
    print(f"old: {old.root if old else '-'}\nnew: {new.root}\nstorm: {args.rate:.0f} execs/s of {program} for "
          f"{args.seconds:.0f} s, a miner started halfway; agents {'one at a time' if args.one_at_a_time else 'together'}",
          flush=True)
    results = measure(trees, args.rate, args.seconds, work, bins, together=not args.one_at_a_time, hold=args.hold)
    by = {id(r["tree"]): r for r in results}
    o, n = (by.get(id(old)) if old else None), by[id(new)]
    table = baseline.Table(old, new)
    table.row("execs in the storm", o and o["execs"], n["execs"], "{:.0f}")
    table.row("the exec's own cost, µs CPU (spawn + wait)", o and o["exec_cost_us"], n["exec_cost_us"], "{:.0f}")
    hit_us = n["net_us"] <= US_PER_EXEC_TARGET
    table.row("agent CPU per exec, µs (all of it)", o and o["us_per_exec"], n["us_per_exec"], "{:.0f}")
    table.row("agent CPU per exec, µs (less its quiet rate)", o and o["net_us"], n["net_us"], "{:.0f}",
              f"target <= {US_PER_EXEC_TARGET:.0f}: {'met' if hit_us else 'MISSED'}")
    table.row("agent CPU in the storm, % of one core", o and o["pct_core"], n["pct_core"], "{:.2f}")
    table.row("agent CPU in the quiet window, % of one core", o and o["idle_pct"], n["idle_pct"], "{:.2f}")
    lat_ok = n["alert_s"] is not None and n["alert_s"] <= ALERT_TARGET_S
    table.row("miner started mid-storm: alerted after s", o and (o["alert_s"] if o["alert_s"] is not None else -1),
              n["alert_s"] if n["alert_s"] is not None else -1, "{:.3f}",
              f"target <= {ALERT_TARGET_S} s: {'met' if lat_ok else 'MISSED'} (-1: not alerted in 10 s)")
    ok = hit_us and lat_ok
    shutil.rmtree(work, ignore_errors=True)
    print(f"targets on new {new.label}: {'met' if ok else 'MISSED'}; CPU figures are noisy on a shared host")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
