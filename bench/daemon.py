"""Daemon benchmark: steady-state CPU and memory under load, and container start to alert,
for this checkout and a baseline revision, side by side in one run.

    python3 bench/daemon.py [--procs 500] [--containers 50] [--starts 20] [--measure 60]
                            [--files-mb 2048] [--burners 3]
                            [--baseline REV | --no-baseline] [--new REV]

Prints, in one run, each figure for the old revision (``--baseline``, default ed345f9: the
commit before the worker redesign, run from a cached worktree by bench/baseline.py) and the
new one (this checkout, or ``--new REV``), with the ratio new/old:
- host as it is: the agent's CPU (percent of one core) and peak resident memory;
- loaded: the same with ``--procs`` extra idle processes and ``--containers`` idle containers;
- latency: p50/p95/max from ``docker run`` of a miner container to its alert line in the alert file;
- latency during the first scan of ``--files-mb`` of ordinary files: made under one watched path before
  the agents start (many small and some large files: executables, shared objects and scripts, which
  are hashed and YARA-scanned, and plain data, which is not), the miner starts begin as soon as the
  agents are READY; printed with how many starts came while the new agent's bulk lane still had
  files waiting, and how many files it had inspected by the last one (removed after the phase);
- latency while busy processes are memory-scanned: ``--burners`` busy, flat CPU burners
  (tests/helpers burner, one thread each) kept alive and replaced one by one (a fresh one every
  ``--burner-life``/``--burners`` seconds, so new memory-scan candidates keep coming: the agent scans
  one process at most once in ten minutes); the starts begin once the new agent has made a memory scan,
  printed with the memory scans it made during them.
The last two phases keep the load of the loaded phase (processes, containers) and run their agents
with a metrics endpoint on loopback (``--files-mb 0`` / ``--burners 0`` skip them).
Each phase starts a fresh agent of each revision and runs them together: both are measured over
the same seconds, and each miner start is timed to each agent's alert, so passing load from
other work on the host hits both alike (each also sees the other as one more idle process).
``--one-at-a-time`` runs them in turn instead (old, then new, per phase). Alert lines are read without schema validation
(each revision has its own schema; the suite validates alerts).
Targets (PRODUCT.md, issue 14), checked on the new revision only: at most 1% of one core and 60 MiB
resident (the highest reading in the steady window; bench/memory.py measures the first-scan peak); p95 start-to-alert <= 1 s, also during the files' first scan and the memory scans.
Exit code 1 when a target is missed. Every process, container and file made is removed, also on
Ctrl-C or SIGTERM.
Needs root, a running Docker engine and the test helpers (it builds them offline, like the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from bench import baseline  # noqa: E402
from bench.flood import NotifyDrain, scrape, sigterm_as_exit, start_agents, stop_agents  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402
from tests.helpers import build, containers, images  # noqa: E402
from tests.helpers.containers import TEST_WALLET  # noqa: E402

CPU_TARGET_PCT, RSS_TARGET_MIB, P95_TARGET_S = 1.0, 60.0, 1.0
LABEL = {"minerwatch.bench": "daemon"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def steady_state(agents: list[AgentProcess], settle: float, measure: float) -> list[tuple[float, float]]:
    """Per agent, (CPU percent of one core, peak RSS MiB) over the same ``measure`` seconds after ``settle``."""
    time.sleep(settle)
    pids = [a.proc.pid for a in agents]
    c0, t0, peak = [cpu_seconds(p) for p in pids], time.monotonic(), [0.0] * len(pids)
    while time.monotonic() - t0 < measure:
        peak = [max(m, rss_mib(p)) for m, p in zip(peak, pids)]
        time.sleep(1)
    elapsed = time.monotonic() - t0
    return [(100 * (cpu_seconds(p) - c) / elapsed, m) for p, c, m in zip(pids, c0, peak)]


def has_container_alert(agent: AgentProcess, container_id: str) -> bool:
    """Whether the agent's alert file has a line about ``container_id`` (parsed, not validated)."""
    if agent.alerts_path.exists():
        for line in agent.alerts_path.read_text().splitlines():
            try:
                if json.loads(line).get("container", {}).get("id") == container_id:
                    return True
            except ValueError:
                continue  # a line being written
    if agent.proc.poll() is not None:
        raise AssertionError(f"agent exited with {agent.proc.returncode}:\n{agent.log()[-3000:]}")
    return False


def start_to_alert(agents: list[AgentProcess], client, image: str, n: int, timeout: float = 30.0,
                   before=None) -> list[list[float]]:
    """Per agent, sorted seconds from each ``docker run`` of a miner to that agent's alert about it.
    ``before()``, when given, is called before each start (not timed)."""
    latencies: list[list[float]] = [[] for _ in agents]
    for _ in range(n):
        if before is not None:
            before()
        t0 = time.monotonic()
        c = containers.run_container(
            client, image, ["sh", "-c", f"fakepool 3333 & sleep 0.1; exec fakeminer -o "
                            f"stratum+tcp://127.0.0.1:3333 -u {TEST_WALLET} -t 0 --seconds 30"],
            name_prefix="mw-bench-miner", labels=LABEL)
        waiting = dict(enumerate(agents))
        while waiting:
            for i, agent in list(waiting.items()):
                if has_container_alert(agent, c.id):
                    latencies[i].append(time.monotonic() - t0)
                    del waiting[i]
            if waiting and time.monotonic() - t0 > timeout:
                raise AssertionError(f"no alert for container {c.id[:12]} within {timeout} s\n"
                                     + "\n".join(a.log()[-3000:] for a in waiting.values()))
            time.sleep(0.02)  # the resolution of a latency
        containers.remove_container(client, c.id)
    return [sorted(lat) for lat in latencies]


class Runs:
    """Fresh agents per phase: all trees' agents together on the same host load (default), or one
    tree's agent at a time (``--one-at-a-time``: old, then new)."""

    def __init__(self, work: Path, trees: list[baseline.Tree], together: bool) -> None:
        self.work, self.n = work, 0
        self.groups = [trees] if together else [[t] for t in trees]

    def _start(self, tree: baseline.Tree) -> AgentProcess:
        self.n += 1
        source = None if tree.root == baseline.REPO else tree.root
        return AgentProcess(self.work / f"agent-{self.n}-{tree.commit[:7]}", interval=5.0, source=source).start()

    def phase(self, settle: float, measure: float, latency=None) -> list[tuple]:
        """Per tree (in order), (CPU %, peak RSS MiB, sorted start-to-alert seconds or None).
        ``latency``: (client, image, starts) to follow the steady state with miner starts."""
        out: list[tuple] = []
        for group in self.groups:
            agents: list[AgentProcess] = []
            drain = None
            try:
                for tree in group:
                    agents.append(self._start(tree))
                drain = NotifyDrain(agents)
                steady = steady_state(agents, settle, measure)
                lat = start_to_alert(agents, *latency) if latency else [None] * len(agents)
                out += [(cpu, rss, la) for (cpu, rss), la in zip(steady, lat)]
            finally:
                if drain is not None:
                    drain.stop()
                for agent in agents:
                    agent.stop()
        return out

    def latency_phase(self, client, image: str, starts: int, ready=None, **kw) -> list[dict]:
        """Per tree (in order): sorted start-to-alert seconds of ``starts`` miner containers started as soon
        as the agents are READY (after ``ready(agents)`` when given), with their metrics scraped before each
        start (``probes``) and after the last (``after``). ``kw`` goes to AgentProcess (``watch=``)."""
        out: list[dict] = []
        for group in self.groups:
            self.n += 1
            agents = start_agents(group, self.work, f"{self.n}", 300.0, **kw)
            try:
                if ready is not None:
                    ready(agents)
                probes: list[list[dict]] = []
                lat = start_to_alert([a.proc for a in agents], client, image, starts,
                                     before=lambda: probes.append([scrape(a.port, 2.0) for a in agents]))
                after = [scrape(a.port) for a in agents]
                out += [{"lat": la, "probes": [p[i] for p in probes], "after": after[i]} for i, la in enumerate(lat)]
            finally:
                stop_agents(agents)
        return out


def percentiles(lat: list[float]) -> tuple[float, float, float]:
    return statistics.median(lat), lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))], lat[-1]


# ----------------------------------------------------------------------------- ordinary files to walk

_SCRIPT_LINES = [b"set -eu\n", b'echo "building target $1"\n', b"cc -O2 -c src/$1.c -o build/$1.o\n",
                 b"for f in build/*.o; do strip --strip-debug \"$f\"; done\n", b"# generated by the build\n"]


def make_files(root: Path, total_mb: int) -> dict:
    """About ``total_mb`` MiB of ordinary files under ``root``: 60% in large files (32-96 MiB: executables,
    shared objects without the execute bit, data), 40% in small ones (4-256 KiB in directories of 500:
    executables, scripts with and without the execute bit, data). Executables, objects and scripts are
    what the agent hashes and YARA-scans; data files it only looks at. Content is random (per file an id
    first, so every file hashes differently), scripts are text."""
    pool = os.urandom(8 << 20)
    counts = {"files": 0, "scanned": 0, "bytes": 0}
    seq = 0

    def write(path: Path, size: int, kind: str) -> None:
        nonlocal seq
        seq += 1
        head = {"elf": b"\x7fELF\x02\x01\x01\x00", "script": b"#!/bin/sh\n"}.get(kind, b"") + b"%d\n" % seq
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if path.suffix in ("", ".sh") else 0o644)
        try:
            os.write(fd, head)
            left, off = size - len(head), (seq * 7919 * 4096) % len(pool)
            while left > 0:
                if kind == "script":
                    chunk = b"".join(_SCRIPT_LINES[(seq + i) % len(_SCRIPT_LINES)] for i in range(64))[:left]
                else:
                    chunk = pool[off:off + min(left, len(pool) - off)]
                    off = (off + len(chunk)) % len(pool)
                os.write(fd, chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        counts["files"] += 1
        counts["scanned"] += kind in ("elf", "script")
        counts["bytes"] += size

    large_left, small_left = int(0.6 * total_mb) << 20, (total_mb << 20) - (int(0.6 * total_mb) << 20)
    big = root / "artifacts"
    big.mkdir(parents=True)
    kinds = [("elf", ""), ("elf", ".so"), ("data", ".tar")]  # executable, object (no x bit), data
    i = 0
    while large_left > 0:
        size = min(large_left, (32, 64, 96)[i % 3] << 20)
        kind, suffix = kinds[i % 3]
        write(big / f"part-{i:03d}{suffix}", size, kind)
        large_left -= size
        i += 1
    small = [("elf", ""), ("script", ".sh"), ("script", ".txt"), ("data", ".json")]  # .sh: x bit; .txt: none
    i = 0
    while small_left > 0:
        d = root / "src" / f"d{i // 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        size = min(small_left, 4096 << (i % 7))  # 4 KiB .. 256 KiB
        kind, suffix = small[i % 4]
        write(d / f"f{i:05d}{suffix}", size, kind)
        small_left -= size
        i += 1
    return counts


class Burners:
    """``n`` busy, flat CPU burners (one thread each), a fresh one every ``life / n`` seconds in place of the
    oldest, so there are always new memory-scan candidates. All gone after the ``with``."""

    def __init__(self, binary: Path, n: int, life: float) -> None:
        self.binary, self.n, self.step = binary, n, life / n
        self.procs: list[subprocess.Popen] = []
        self.started = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._roll, name="burners", daemon=True)

    def _spawn(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self.procs.append(subprocess.Popen([str(self.binary), "-t", "1"], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.started += 1
            while len(self.procs) > self.n:
                old = self.procs.pop(0)
                old.kill()
                old.wait()

    def _roll(self) -> None:
        while not self._stop.wait(self.step):
            self._spawn()

    def __enter__(self) -> "Burners":
        try:
            for _ in range(self.n):
                self._spawn()
            self._thread.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            for p in self.procs:
                p.kill()
                p.wait()
            self.procs.clear()


MEMORY_SCANS = 'minerwatch_bulk_done{kind="memory_scans"}'


def memory_scanning(agents, timeout: float = 120.0, without_metric: float = 40.0) -> None:
    """Wait until every agent that counts memory scans has made one (one that does not, an old revision:
    ``without_metric`` seconds, time enough for its behaviour model to pick a burner)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ms = [scrape(a.port, 2.0) for a in agents]
        if all((m[MEMORY_SCANS] >= 1) if MEMORY_SCANS in m else time.monotonic() - t0 >= without_metric for m in ms):
            return
        time.sleep(1)
    print(f"  (no memory scan by the new agent within {timeout:.0f} s: the starts run anyway)", flush=True)


def latency_rows(table, what: str, o_lat, lat) -> bool:
    p50, p95, top = percentiles(lat)
    o50, o95, otop = percentiles(o_lat) if o_lat else (None, None, None)
    table.row(f"{what}: p50 s", o50, p50)
    table.row(f"{what}: p95 s", o95, p95, note=f"target <= {P95_TARGET_S} s: {'met' if p95 <= P95_TARGET_S else 'MISSED'}")
    table.row(f"{what}: max s", otop, top)
    return p95 <= P95_TARGET_S


def _metric_row(table, name: str, o, n, fmt="{:.0f}", note="") -> None:
    table.row(name, o, -1 if n is None else n, fmt, note + (" (-1: not exported)" if n is None else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--settle", type=float, default=20)
    ap.add_argument("--measure", type=float, default=60)
    ap.add_argument("--files-mb", type=int, default=2048, help="MiB of files the first scan walks (0: skip the phase)")
    ap.add_argument("--burners", type=int, default=3, help="busy processes being memory-scanned (0: skip the phase)")
    ap.add_argument("--burner-life", type=float, default=30, help="seconds each burner lives before a fresh one")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="run one revision's agent at a time (old, then new, per phase) instead of both together")
    baseline.add_arguments(ap)
    args = ap.parse_args()
    sigterm_as_exit()
    old, new = baseline.trees_from_args(args)
    client = docker.from_env()
    bins = build.build_helpers()
    image = images.build_base_image(client, bins)
    trees = [t for t in (old, new) if t is not None]  # old first, then new
    work = Path(tempfile.mkdtemp(prefix="mw-bench-daemon-"))
    runs = Runs(work, trees, together=not args.one_at_a_time)
    sleepers: list[subprocess.Popen] = []
    ok = True
    print(f"old: {old.root if old else '-'}\nnew: {new.root}\n"
          f"agents: {'one at a time' if args.one_at_a_time or not old else 'old and new together'}, "
          f"a fresh one per phase", flush=True)
    table = baseline.Table(old, new, name_width=62)
    try:
        with containers.tracking_scope("bench-daemon"):
            steady = runs.phase(args.settle, args.measure)
            (o_cpu, o_rss, _), (cpu, rss, _) = (steady[0] if old else (None, None, None)), steady[-1]
            table.row("host as it is: agent CPU % of one core", o_cpu, cpu, "{:.2f}")
            table.row("host as it is: agent peak RSS MiB", o_rss, rss, "{:.1f}")
            sleepers = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(args.procs)]
            for _ in range(args.containers):
                containers.run_container(client, image, ["sleep", "3600"], name_prefix="mw-bench-idle", labels=LABEL)
            loaded = runs.phase(args.settle, args.measure, (client, image, args.starts))
            (o_cpu, o_rss, o_lat), (cpu, rss, lat) = (loaded[0] if old else (None, None, None)), loaded[-1]
            hit_cpu, hit_rss = cpu <= CPU_TARGET_PCT, rss <= RSS_TARGET_MIB
            ok &= hit_cpu and hit_rss
            what = f"loaded (+{args.procs} procs, +{args.containers} ctrs)"
            table.row(f"{what}: CPU %", o_cpu, cpu, "{:.2f}",
                      f"target <= {CPU_TARGET_PCT}%: {'met' if hit_cpu else 'MISSED'}")
            table.row(f"{what}: RSS MiB", o_rss, rss, "{:.1f}",
                      f"target <= {RSS_TARGET_MIB}: {'met' if hit_rss else 'MISSED'}")
            ok &= latency_rows(table, f"start to alert over {len(lat)} starts", o_lat, lat)
            if args.files_mb > 0:
                ok &= files_phase(runs, table, old, client, image, args, work / "files")
            if args.burners > 0:
                ok &= memory_phase(runs, table, old, client, image, args, bins)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        # The tracking scope removed what it started; this catches anything left by an interrupted run.
        for c in client.containers.list(all=True, filters={"label": "minerwatch.bench=daemon"}):
            c.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"targets on new {new.label}: {'met' if ok else 'MISSED'}; CPU figures are noisy on a shared host")
    return 0 if ok else 1


def files_phase(runs: Runs, table, old, client, image: str, args, root: Path) -> bool:
    """Miner starts while the agents' first scan walks ``--files-mb`` of files in their watched path."""
    try:
        t0 = time.monotonic()
        made = make_files(root, args.files_mb)
        print(f"-- files: {made['files']:,} files, {made['bytes'] / 2**20:,.0f} MiB under {root} "
              f"({made['scanned']:,} executables, objects and scripts to hash and YARA-scan; made in "
              f"{time.monotonic() - t0:.0f} s); the starts begin at READY", flush=True)
        res = runs.latency_phase(client, image, args.starts, watch=[str(root)])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    o, n = (res[0] if old else None), res[-1]
    ok = latency_rows(table, f"first scan of {args.files_mb} MiB: start to alert ({len(n['lat'])})",
                      o and o["lat"], n["lat"])

    def during(r):
        waiting = [p.get("minerwatch_bulk_queue_length") for p in r["probes"]]
        return None if None in waiting or not waiting else sum(1 for w in waiting if w > 0)

    def inspected(r):
        return r["after"].get('minerwatch_bulk_done{kind="files"}')

    _metric_row(table, "  starts while files were still waiting (bulk lane)", o and during(o), during(n),
                note=f"of {len(n['lat'])}")
    _metric_row(table, "  files inspected by the last start", o and inspected(o), inspected(n),
                note=f"of {made['files']:,}")
    return ok


def memory_phase(runs: Runs, table, old, client, image: str, args, bins) -> bool:
    """Miner starts while busy processes (burners) are being memory-scanned."""
    print(f"-- memory scans: {args.burners} burner(s), a fresh one every {args.burner_life / args.burners:.0f} s; "
          "the starts begin once the new agent has made a memory scan", flush=True)
    with Burners(bins.burner, args.burners, args.burner_life) as burners:
        res = runs.latency_phase(client, image, args.starts, ready=memory_scanning)
        started = burners.started
    o, n = (res[0] if old else None), res[-1]
    ok = latency_rows(table, f"memory scans of busy processes: start to alert ({len(n['lat'])})",
                      o and o["lat"], n["lat"])

    def scans(r):
        first = r["probes"][0].get(MEMORY_SCANS) if r["probes"] else None
        last = r["after"].get(MEMORY_SCANS)
        return None if first is None or last is None else last - first

    _metric_row(table, "  memory scans during the starts", o and scans(o), scans(n), note=f"({started} burners in all)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
