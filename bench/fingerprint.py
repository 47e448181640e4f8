"""Per-pass cost of the miner fingerprint on 500 processes and its share of the agent's CPU, old vs new (issue 13).

    python3 bench/fingerprint.py [--idle 500] [--services 40] [--limited 2] [--passes 20] [--interval 2]
                                 [--settle 20] [--measure 60] [--no-py-spy] [--baseline REV | --no-baseline]
                                 [--new REV]

The fingerprint (issue 13): a process whose CPU time moved since its last sample gets ``/proc/PID/status``
(HugetlbPages, VmRSS, Threads) and its CPU limit (its ``cgroup`` file, then the quota of that cgroup and its
ancestors, cached per cgroup), ``maps`` when it could hold a RandomX cache, threads and fds near its limit;
its CPU is judged against that limit; container cgroups get their limit too. The baseline (default ed345f9)
had none of it: only a process above half a core got anything beyond its ``stat`` line.

Processes, real and the same for both revisions: ``--idle`` idle ones (bench/idle_procs.c: they never move,
the cheap path), ``--services`` that wake every 250 ms and work ~2 ms (they move every pass: what a host's
daemons do, and what makes the fingerprint read), and ``--limited`` busy ones with 272 MiB resident, each in
its own CPU cgroup with a 0.1-core quota (at their limit: the full read, the maps read, the quota path).
Everything else on the host is there too and counted.

Two figures, both revisions at the same time (the host is shared: compare within the run):
1. The pass code. Each tree's own ``CpuSampler`` and ``BehaviourModel`` driven as its periodic pass drives
   them (``sample`` of every pid, ``observe``, ``sample_cgroups`` of the quota cgroups, ``observe_cgroup``,
   ``host_artefacts``, ``candidates`` and their ``verdict``), ``--passes`` passes ``--interval`` s apart, in
   a child process per tree; CPU time (``thread_time``) per pass, the first two left out. New minus old is
   the fingerprint's cost per pass.
2. The real daemon. An agent of each tree (interval 5 s, metrics on loopback) over ``--measure`` seconds
   after ``--settle``: its CPU (user+system, all threads) per periodic pass, and the pass duration. The
   fingerprint's share of the new agent's CPU = (1)'s new-minus-old per pass / (2)'s new CPU per pass.
   With py-spy (in the venv; ``--no-py-spy`` skips it), the new agent is also sampled (``--nonblocking``) and
   the share of its on-CPU samples inside the fingerprint's functions (FINGERPRINT_FRAMES) is printed as a
   cross-check.
Every process, cgroup and agent it makes is removed at the end, also on Ctrl-C or SIGTERM. Needs root and gcc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import baseline
from bench.flood import (
    IdleFlood,
    build_idle_procs,
    cpu_seconds,
    host_processes,
    run_dir,
    scrape,
    sigterm_as_exit,
    start_agents,
    stop_agents,
)
from tests.helpers import procs  # noqa: E402

QUOTA_CORES = 0.1
SERVICES_C = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* services N PERIOD_MS WORK_US RSS_MB [CGROUP_PROCS...]: N children; child i joins CGROUP_PROCS[i] when given,
   touches RSS_MB of memory, then every PERIOD_MS works WORK_US (WORK_US >= PERIOD_MS*1000: always busy).
   "ready" once all are up; SIGTERM takes them all down; children die with the parent. */
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    if (argc < 5) return 2;
    int n = atoi(argv[1]); long period = atol(argv[2]), work = atol(argv[3]); size_t mb = strtoull(argv[4], 0, 10);
    pid_t *kids = calloc(n, sizeof *kids);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (argc > 5 + i) { FILE *f = fopen(argv[5 + i], "w"); if (!f) _exit(3); fprintf(f, "%d\n", getpid()); fclose(f); }
            if (mb) { char *m = malloc(mb << 20); memset(m, 1, mb << 20); }
            volatile unsigned long x = 0;
            for (;;) {
                double end = now() + work / 1e6;
                while (now() < end) x = x * 6364136223846793005ul + 1;
                if (work < period * 1000) usleep((period * 1000 - work));
            }
        }
        kids[i] = p;
    }
    printf("ready\n"); fflush(stdout);
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGTERM); sigaddset(&s, SIGINT); sigprocmask(SIG_BLOCK, &s, 0);
    int sig; sigwait(&s, &sig);
    for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
    while (wait(NULL) > 0) ;
    return 0;
}
"""

# Run in each tree (its own agent package first on sys.path): the periodic pass's behaviour part, timed.
DRIVER = r"""
import json, os, sys, time
from agent.collectors.cpu_sampler import CpuSampler
try:
    from agent.daemon.behaviour import BehaviourModel
except ImportError:
    from agent.behaviour import BehaviourModel
passes, interval, cgroups = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
sampler, model, me = CpuSampler(), BehaviourModel(), os.getpid()
stages = {"sample": [], "observe": [], "cgroups": [], "judge": []}
counts = {"processes": [], "detailed": [], "limited": []}
for n in range(passes):
    time.sleep(interval)
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != me]
    t0 = time.thread_time_ns()
    samples = sampler.sample(pids)
    t1 = time.thread_time_ns()
    for s in samples:
        model.observe(s)
    t2 = time.thread_time_ns()
    for s in sampler.sample_cgroups(cgroups):
        model.observe_cgroup(s)
    model.observe_host(sampler.host_artefacts())
    t3 = time.thread_time_ns()
    for pid in model.candidates(limit=2):
        model.verdict(pid)
    for cid in cgroups:
        model.cgroup_verdict(cid)
    t4 = time.thread_time_ns()
    if n >= 2:
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[k].append(v / 1e6)
        counts["processes"].append(len(samples))
        counts["detailed"].append(sum(1 for s in samples if s.hugetlb_kb is not None))
        counts["limited"].append(sum(1 for s in samples if getattr(s, "cpu_limit", None) is not None))
print(json.dumps({"stages": stages, "counts": counts}))
"""

# Functions whose samples are the fingerprint's in a py-spy profile of the new agent (file:function).
# _detailed is the read of a process whose CPU moved (the old agent gave it only to one above half a core).
FINGERPRINT_FRAMES = frozenset({
    "cpu_sampler.py:_detailed", "cpu_sampler.py:_status", "cpu_sampler.py:_limit", "cpu_sampler.py:cgroup_limit", "cpu_sampler.py:_big_mappings",
    "cpu_sampler.py:parse_status", "cpu_sampler.py:parse_quota", "cpu_sampler.py:parse_cpu_cgroup",
    "behaviour.py:_judge_cpu", "behaviour.py:randomx_sized",
})
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]+?):\d+\)$")


class QuotaCgroups:
    """``n`` CPU cgroups ``minerwatch-bench-<random>/limited-<i>`` with a ``cores`` quota each (v1 ``cpu`` or v2);
    removed on exit after what is inside (only our processes) is killed."""

    def __init__(self, n: int, cores: float) -> None:
        text = Path("/proc/self/mountinfo").read_text()
        v1 = [ln.split()[4] for ln in text.splitlines()
              if " - cgroup " in ln and ln.split()[3] == "/" and "cpu" in ln.rsplit(" ", 1)[-1].split(",")]
        v2 = [ln.split()[4] for ln in text.splitlines() if " - cgroup2 " in ln and ln.split()[3] == "/"]
        if v1:
            self.version, self.mount = 1, Path(v1[0])
        elif v2:
            self.version, self.mount = 2, Path(v2[0])
        else:
            raise RuntimeError("no cgroup cpu controller mounted")
        self.top = self.mount / f"minerwatch-bench-{os.urandom(4).hex()}"
        self.n, self.cores = n, cores
        self.dirs: list[Path] = []

    def __enter__(self) -> Self:
        self.top.mkdir()
        try:
            if self.version == 2:
                (self.top / "cgroup.subtree_control").write_text("+cpu")
            for i in range(self.n):
                d = self.top / f"limited-{i}"
                d.mkdir()
                self.dirs.append(d)
                if self.version == 1:
                    (d / "cpu.cfs_period_us").write_text("100000")
                    (d / "cpu.cfs_quota_us").write_text(str(int(self.cores * 100000)))
                else:
                    (d / "cpu.max").write_text(f"{int(self.cores * 100000)} 100000")
        except BaseException:
            self.__exit__()
            raise
        return self

    def paths(self) -> dict[str, str]:
        """{name: path as /proc/PID/cgroup shows it}, what the daemon hands ``sample_cgroups`` for containers."""
        return {d.name: "/" + str(d.relative_to(self.mount)) for d in self.dirs}

    def __exit__(self, *exc) -> None:
        procs.remove_cgroups([*self.dirs, self.top])


class Services:
    """The services helper running ``args`` (see SERVICES_C), down at exit."""

    def __init__(self, binary: Path, *args: str) -> None:
        self.argv = [str(binary), *args]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.__exit__()
            raise RuntimeError(f"{self.argv}: {line or 'exited'} (rc {self.proc.poll()})")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if self.proc is not None:
            self.proc.stdout.close()


def drive(trees: list[baseline.Tree], passes: int, interval: float, cgroups: dict[str, str]) -> list[dict]:
    """The pass code of every tree at once, one child process each; their JSON results in order."""
    children = [subprocess.Popen([sys.executable, "-c", DRIVER, str(passes), str(interval), json.dumps(cgroups)],
                                 cwd=t.root, env=t.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for t in trees]
    out = []
    for t, c in zip(trees, children):
        stdout, stderr = c.communicate(timeout=passes * interval * 4 + 120)
        if c.returncode != 0:
            raise RuntimeError(f"pass driver of {t.label} failed ({c.returncode}):\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy sampling ``pid`` without stopping it, folded stacks into ``out``; None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                             "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fingerprint_share(folded: Path) -> tuple[float, int] | None:
    """(share of samples with a fingerprint frame, total samples) from py-spy's folded output (frames read
    ``Class.func (path/file.py:line)``; idle threads are not sampled)."""
    if not folded.exists():
        return None
    total = hits = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = {f"{m['file'].rsplit('/', 1)[-1]}:{m['func'].rsplit('.', 1)[-1]}" for f in stack.split(";")
                  if (m := _FRAME.match(f.strip()))}
        if frames & FINGERPRINT_FRAMES:
            hits += int(count)
    return (hits / total, total) if total else None


def ms(values: list[float]) -> float:
    return statistics.mean(values) if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=500, help="idle processes")
    ap.add_argument("--services", type=int, default=40, help="processes that work ~2 ms every 250 ms")
    ap.add_argument("--limited", type=int, default=2, help=f"busy 272 MiB processes at a {QUOTA_CORES}-core quota each")
    ap.add_argument("--passes", type=int, default=20, help="passes of the pass-code driver")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between the driver's passes")
    ap.add_argument("--settle", type=float, default=20, help="seconds after READY before the daemon window")
    ap.add_argument("--measure", type=float, default=60, help="seconds of the daemon window")
    ap.add_argument("--no-py-spy", action="store_true", help="do not profile the new agent")
    baseline.add_arguments(ap)
    args = ap.parse_args()
    sigterm_as_exit()
    old, new = baseline.trees_from_args(args)
    trees = [t for t in (old, new) if t is not None]
    work = Path(tempfile.mkdtemp(prefix="mw-bench-fingerprint-"))
    print(f"old: {old.root if old else '-'}\nnew: {new.root}", flush=True)
    try:
        with contextlib.ExitStack() as stack:
            runs = stack.enter_context(run_dir())
            helper = runs / "services"
            (runs / "services.c").write_text(SERVICES_C)
            subprocess.run([os.environ.get("CC", "gcc"), "-static", "-O2", "-o", str(helper), str(runs / "services.c")],
                           check=True, capture_output=True)
            stack.enter_context(IdleFlood(build_idle_procs(runs), args.idle))
            if args.services:
                stack.enter_context(Services(helper, str(args.services), "250", "2000", "0"))
            quotas = stack.enter_context(QuotaCgroups(args.limited, QUOTA_CORES))
            if args.limited:
                stack.enter_context(Services(helper, str(args.limited), "100", "100000", "272",
                                             *(str(d / "cgroup.procs") for d in quotas.dirs)))
            time.sleep(1.0)
            print(f"processes: {args.idle} idle, {args.services} services (2 ms every 250 ms), {args.limited} busy "
                  f"272 MiB at a {QUOTA_CORES}-core quota; {host_processes()} on the host in all", flush=True)

            print(f"\n1. the pass code: {args.passes} passes {args.interval:g} s apart, both trees at once "
                  "(CPU ms per pass, mean; first two passes left out)", flush=True)
            results = drive(trees, args.passes, args.interval, quotas.paths())
            by = dict(zip([t.commit for t in trees], results))
            o, n = (by.get(old.commit) if old else None), by[new.commit]
            table = baseline.Table(old, new)
            for stage, what in (("sample", "sample every pid (stat; details if moved)"),
                                ("observe", "observe (the behaviour model)"),
                                ("cgroups", "cgroup samples and host artefacts"),
                                ("judge", "candidates, verdicts (quota-relative)")):
                table.row(what, ms(o["stages"][stage]) if o else None, ms(n["stages"][stage]))
            total = {k: sum(ms(r["stages"][s]) for s in r["stages"]) for k, r in by.items()}
            table.row("behaviour part of a pass, in all", total.get(old.commit) if old else None, total[new.commit])
            for c, what in (("processes", "processes sampled"), ("detailed", "with status read (moved or busy)"),
                            ("limited", "with a CPU limit found")):
                table.row(what, ms(o["counts"][c]) if o else None, ms(n["counts"][c]), "{:.0f}")
            cost = total[new.commit] - (total[old.commit] if old else 0.0)
            n_procs, moved = ms(n["counts"]["processes"]), ms(n["counts"]["detailed"])
            print(f"fingerprint cost per pass (new - old): {cost:.2f} ms CPU on {n_procs:.0f} processes "
                  f"({1000 * cost / max(1.0, n_procs):.1f} us per process; {1000 * cost / max(1.0, moved):.0f} us per "
                  f"process whose CPU moved, {moved:.0f} a pass)", flush=True)

            print(f"\n2. the real daemon: interval 5 s, settle {args.settle:g} s, window {args.measure:g} s, both at once",
                  flush=True)
            agents = start_agents(trees, work, "fp", 300.0)
            spy = None
            try:
                new_agent = next(a for a in agents if a.tree.commit == new.commit)
                time.sleep(args.settle)  # past the first passes, which read every young process whole
                if not args.no_py_spy:
                    spy = profile(new_agent.pid, args.measure, work / "new.folded")
                at0 = {a.tree.commit: (cpu_seconds(a.pid), scrape(a.port)) for a in agents}
                time.sleep(args.measure)
                at1 = {a.tree.commit: (cpu_seconds(a.pid), scrape(a.port)) for a in agents}
                for a in agents:
                    if a.proc.proc.poll() is not None:
                        raise RuntimeError(f"agent {a.tree.label} exited:\n{a.proc.log()[-3000:]}")
            finally:
                stop_agents(agents)
                if spy is not None:
                    try:
                        spy.wait(30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        spy.wait()
            per_pass, pass_ms, scans = {}, {}, {}
            for c, (c0, m0) in at0.items():
                c1, m1 = at1[c]
                scans[c] = (m1.get("minerwatch_scans") or 0) - (m0.get("minerwatch_scans") or 0)
                spent = (m1.get("minerwatch_scan_seconds") or 0) - (m0.get("minerwatch_scan_seconds") or 0)
                per_pass[c] = 1000 * ((c1 or 0) - (c0 or 0)) / scans[c] if scans[c] else None
                pass_ms[c] = 1000 * spent / scans[c] if scans[c] and spent else None
            table = baseline.Table(old, new)
            table.row("periodic passes in the window", scans.get(old.commit) if old else None, scans[new.commit], "{:.0f}")
            table.row("agent CPU per pass, ms (all its threads)", per_pass.get(old.commit) if old else None,
                      per_pass[new.commit] or 0.0)
            table.row("periodic pass duration, ms (wall)", pass_ms.get(old.commit) if old else None,
                      pass_ms[new.commit] or 0.0)
            if not per_pass[new.commit]:
                print("the new agent ended no pass in the window: no share", flush=True)
                return 1
            share = cost / per_pass[new.commit] if per_pass[new.commit] else 0.0
            print(f"fingerprint's share of the new agent's CPU: {100 * share:.1f}% "
                  f"({cost:.2f} ms of {per_pass[new.commit]:.1f} ms per pass)", flush=True)
            if spy is not None:
                found = fingerprint_share(work / "new.folded")
                print("py-spy cross-check (new agent, on-CPU samples in the fingerprint's functions): "
                      + (f"{100 * found[0]:.1f}% of {found[1]} samples" if found else "no profile written"), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("figures are noisy on a shared host; compare old and new within one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
