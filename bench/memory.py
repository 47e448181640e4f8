"""Daemon memory: resident set after start, after the first scan, steady and peak, and where it goes,
for this checkout and a baseline revision, side by side in one run.

    python3 bench/memory.py [--procs 500] [--containers 50] [--files-mb 0] [--settle 20] [--measure 60]
                            [--baseline REV | --no-baseline] [--new REV]

Prints, for the old revision (``--baseline``, default ed345f9, from a cached worktree by
bench/baseline.py) and the new one (this checkout, or ``--new REV``), with the ratio new/old:
- the breakdown, each in a fresh interpreter of that tree: resident MiB after the interpreter starts,
  after the daemon's imports (``agent.cli.main`` and ``agent.daemon.wiring``), after the signature
  bundle is loaded, what its two RE2 pattern sets and a second copy of the whole bundle add, the RE2
  program size of all its patterns and the modules imported;
- with ``--procs`` idle processes and ``--containers`` idle containers on the host (and, with
  ``--files-mb``, that many MiB of ordinary files in the watched path, made by bench/daemon.py's
  ``make_files``): a fresh agent of each tree started at the same moment (no metrics endpoint: its
  client library is memory of its own), sampled every 0.2 s: VmRSS at READY, VmHWM at READY (the
  first scan's peak), VmRSS after ``--settle`` seconds (the first scan's bulk work done or not),
  steady (median VmRSS over ``--measure`` seconds) and its maximum, the peak (VmHWM over the run),
  and anonymous vs file-backed memory at the end (/proc/PID/smaps_rollup).
Targets (issue 14), on the new revision: steady <= 60 MiB, peak <= 100 MiB. Exit code 1 when missed.
Every process, container and file made is removed, also on Ctrl-C or SIGTERM.
Needs root, a running Docker engine (when ``--containers`` > 0) and the test helpers (built offline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import baseline
from bench.flood import NotifyDrain, sigterm_as_exit
from tests.agentproc import AgentProcess

STEADY_TARGET_MIB, PEAK_TARGET_MIB = 60.0, 100.0
LABEL = {"minerwatch.bench": "memory"}

# Run in a fresh interpreter of each tree: resident MiB after each step, as JSON.
_BREAKDOWN = r"""
import json, sys
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 1048576
out = {'interpreter': rss()}
import importlib
import agent.cli.main
for name in ('agent.daemon.wiring', 'agent.daemon'):  # the daemon's parts (older trees: one package)
    try:
        importlib.import_module(name)
        break
    except ImportError:
        pass
out['daemon imports'] = rss()
from agent import signatures as s
sig = s.load_bundle(None)
out['signature bundle loaded'] = rss()
import gc, re2, yara
def cost(make):
    gc.collect(); before = rss(); keep = make(); return rss() - before, keep
texts = [p.regex.pattern for p in (*sig.cmdline_patterns, *sig.wallet_patterns)]
def sets():
    out = []
    for patterns in (sig.cmdline_patterns, sig.wallet_patterns):
        out.append(type(patterns)(list(patterns)))
    return out
out['  + RE2: the two pattern sets once more'] = cost(sets)[0]
out['  + the whole bundle loaded once more (kept)'] = cost(lambda: s.load_bundle(None))[0]
out['  RE2 program instructions (all patterns)'] = sum(getattr(p.regex, 'programsize', 0) for p in (*sig.cmdline_patterns, *sig.wallet_patterns))
out['  modules imported'] = len(sys.modules)
print(json.dumps(out))
"""


def breakdown(tree: baseline.Tree) -> dict[str, float]:
    res = tree.run_python("-c", _BREAKDOWN, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"{tree.label}: breakdown failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mib_fields(path: str, keys: tuple[str, ...]) -> dict[str, float]:
    """``keys`` of a ``Key: N kB`` file (``status``, ``smaps_rollup``) in MiB."""
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0]) / 1024
    return out


def status(pid: int) -> dict[str, float]:
    return _mib_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM", "RssAnon", "RssFile"))


def rollup(pid: int) -> dict[str, float]:
    return _mib_fields(f"/proc/{pid}/smaps_rollup", ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean"))


class Sampler:
    """VmRSS of each agent every ``every`` seconds, in the background, with the time of each sample."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        self.pids, self.every = pids, every
        self.samples: list[list[tuple[float, float]]] = [[] for _ in pids]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            now = time.monotonic()
            for i, pid in enumerate(self.pids):
                try:
                    self.samples[i].append((now, status(pid)["VmRSS"]))
                except OSError:
                    pass

    def between(self, i: int, t0: float, t1: float) -> list[float]:
        return [r for t, r in self.samples[i] if t0 <= t <= t1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def run_agents(trees, work: Path, watch: list[str] | None, settle: float, measure: float) -> list[dict]:
    """A fresh agent of each tree, started together; per tree the figures named in the docstring."""
    agents = [AgentProcess(work / f"agent-{i}-{t.commit[:7]}", interval=5.0, watch=watch,
                           source=None if t.root == baseline.REPO else t.root) for i, t in enumerate(trees)]
    ready_at: list[dict] = [{} for _ in agents]
    errors: list[str] = []

    def start(i: int) -> None:
        try:
            agents[i].start(ready_timeout=600)
            ready_at[i] = {**status(agents[i].proc.pid), "t": time.monotonic()}
        except BaseException as exc:  # noqa: BLE001  (reported after every start has ended)
            errors.append(str(exc)[-3000:])

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(len(agents))]
    sampler = drain = None
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError("an agent did not start:\n" + "\n".join(errors))
        sampler = Sampler([a.proc.pid for a in agents])
        drain = NotifyDrain(agents)
        time.sleep(settle)
        after_settle = [status(a.proc.pid)["VmRSS"] for a in agents]
        t0 = time.monotonic()
        time.sleep(measure)
        t1 = time.monotonic()
        out = []
        for i, a in enumerate(agents):
            window = sampler.between(i, t0, t1) or [status(a.proc.pid)["VmRSS"]]
            end, roll = status(a.proc.pid), rollup(a.proc.pid)
            out.append({"ready_rss": ready_at[i]["VmRSS"], "ready_hwm": ready_at[i]["VmHWM"],
                        "settled": after_settle[i], "steady": statistics.median(window), "steady_max": max(window),
                        "peak": end["VmHWM"], "anon": roll.get("Anonymous", 0.0), "file": end.get("RssFile", 0.0)})
        return out
    finally:
        if sampler is not None:
            sampler.stop()
        if drain is not None:
            drain.stop()
        for a in agents:
            with contextlib.suppress(Exception):  # stopping the others matters more
                a.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--files-mb", type=int, default=0, help="MiB of files in the watched path (the first scan's peak)")
    ap.add_argument("--settle", type=float, default=20)
    ap.add_argument("--measure", type=float, default=60)
    baseline.add_arguments(ap)
    args = ap.parse_args()
    sigterm_as_exit()
    old, new = baseline.trees_from_args(args)
    trees = [t for t in (old, new) if t is not None]
    print(f"old: {old.root if old else '-'}\nnew: {new.root}", flush=True)
    table = baseline.Table(old, new, name_width=56)

    parts = [breakdown(t) for t in trees]
    o_parts, n_parts = (parts[0] if old else {}), parts[-1]
    for key, value in n_parts.items():
        fmt = "{:.0f}" if key.strip().startswith(("RE2 program", "modules")) else "{:.1f}"
        table.row(f"breakdown: {key}" + ("" if fmt == "{:.0f}" else " MiB"), o_parts.get(key), value, fmt)

    work = Path(tempfile.mkdtemp(prefix="mw-bench-memory-"))
    sleepers: list[subprocess.Popen] = []
    client = None
    ok = True
    scope = contextlib.ExitStack()
    try:
        sleepers = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(args.procs)]
        if args.containers:
            import docker

            from tests.helpers import build, containers, images

            client = docker.from_env()
            image = images.build_base_image(client, build.build_helpers())
            scope.enter_context(containers.tracking_scope("bench-memory"))
            for _ in range(args.containers):
                containers.run_container(client, image, ["sleep", "3600"], name_prefix="mw-bench-mem", labels=LABEL)
        watch = None
        if args.files_mb:
            from bench.daemon import make_files

            made = make_files(work / "files", args.files_mb)
            watch = [str(work / "files")]
            print(f"-- files: {made['files']:,} files, {made['bytes'] / 2**20:,.0f} MiB in the watched path", flush=True)
        print(f"-- load: +{args.procs} idle processes, +{args.containers} idle containers; settle {args.settle:.0f} s, "
              f"measure {args.measure:.0f} s", flush=True)
        res = run_agents(trees, work, watch, args.settle, args.measure)
        o, n = (res[0] if old else {}), res[-1]
        rows = [("RSS at READY MiB", "ready_rss"), ("first-scan peak (VmHWM at READY) MiB", "ready_hwm"),
                (f"RSS {args.settle:.0f} s after READY MiB", "settled"), ("steady RSS (median) MiB", "steady"),
                ("steady RSS (max in window) MiB", "steady_max"), ("peak (VmHWM over the run) MiB", "peak"),
                ("  anonymous at the end MiB", "anon"), ("  file-backed at the end MiB", "file")]
        for name, key in rows:
            note = ""
            if key == "steady":
                met = n[key] <= STEADY_TARGET_MIB
                ok &= met
                note = f"target <= {STEADY_TARGET_MIB:.0f}: {'met' if met else 'MISSED'}"
            elif key == "peak":
                met = n[key] <= PEAK_TARGET_MIB
                ok &= met
                note = f"target <= {PEAK_TARGET_MIB:.0f}: {'met' if met else 'MISSED'}"
            table.row(name, o.get(key), n[key], "{:.1f}", note)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        scope.close()
        if client is not None:
            for c in client.containers.list(all=True, filters={"label": "minerwatch.bench=memory"}):
                c.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"targets on new {new.label}: {'met' if ok else 'MISSED'}; figures vary with what else runs on the host")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
