"""``minerwatch scan`` against ``yara -r`` (same compiled rules) and ``sha256sum`` on the same files, in one run.

    python3 bench/scan.py [--size-mib 300] [--repeat 5] [--keep DIR] [--baseline REV | --no-baseline]

Generates a tree of mixed files under /tmp (random binaries from 4 KiB to 16 MiB, text and JSON
files, a few hundred small files, and a real miner-like binary from tests/helpers/build.py), warms
the page cache, then per round runs, one after the other: ``minerwatch scan DIR --json`` (SHA-256,
SHA-1 and MD5 of every file from one read, YARA over it, scripts and configs through the patterns),
``yara -r RULES... DIR`` with the bundle's active rule files (the same rules the agent compiles), and
``sha256sum`` over every file. Prints, for each, the best wall time (MB/s) and the least CPU time
(user + sys of the process and its threads), and the ratio of minerwatch to ``yara -r`` + ``sha256sum``
run back to back, on wall time (the acceptance: at least 0.8) and on CPU time (steadier when the host
is shared). Then one in-process pass prints where minerwatch's CPU goes (startup, read, the three
digests, YARA, text; the walk and the judge on the main thread).

The baseline revision's ``minerwatch scan`` (``--baseline REV``, default 9b02505: ed345f9, the other
benchmarks' default, has no ``scan``) runs in the same rounds from its cached worktree
(``bench/baseline.py``), so this checkout's figures print beside it.

minerwatch runs with its bytecode compiled (a pycache under the bench's work directory), as an
installed agent does; ``PYTHONDONTWRITEBYTECODE`` would otherwise make every run compile the sources
it imports. Installs the Debian package ``yara`` if the ``yara`` command is missing (apt-get, as root).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import baseline

SCAN_BASELINE = "9b02505"  # the first revision with this scan pipeline measured (the session before)

_RUNNER = ("import sys; from agent.cli import main as m; from agent.cli.scan_cmd import scan; "
           "m.cli.commands.setdefault('scan', scan); m.main(sys.argv[1:])")


def ensure_yara() -> str:
    """The ``yara`` command; the Debian package is installed when it is missing."""
    found = shutil.which("yara")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "yara"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("yara")
    if not found:
        raise SystemExit("yara is not installed and apt-get could not install it")
    return found


def make_tree(top: Path, size_mib: int, seed: int = 15) -> int:
    """Mixed files adding up to about ``size_mib`` MiB; returns the bytes written."""
    from tests.helpers.build import build_helpers

    rnd = random.Random(seed)
    total, target, n = 0, size_mib << 20, 0
    (top / "bin").mkdir(parents=True)
    miner = build_helpers().fakeminer.read_bytes()
    (top / "bin" / "kworker").write_bytes(miner)
    total += len(miner)
    words = [b"alpha", b"beta", b"gamma", b"server", b"config", b"value", b"port", b"path"]
    for i in range(300):  # small text, JSON and scripts
        d = top / "etc" / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        body = b" ".join(rnd.choice(words) for _ in range(rnd.randint(50, 2000))) + b"\n"
        name = ("f%d.json" if i % 3 == 0 else "f%d.sh" if i % 3 == 1 else "f%d.txt") % i
        data = (b'{"k": "' + body.strip() + b'"}\n') if name.endswith(".json") else (
            b"#!/bin/sh\necho " + body if name.endswith(".sh") else body)
        (d / name).write_bytes(data)
        total += len(data)
    sizes = [4 << 10, 64 << 10, 512 << 10, 2 << 20, 8 << 20, 16 << 20]
    while total < target:
        size = min(rnd.choice(sizes), target - total) or 1
        d = top / "data" / f"d{n % 16}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"blob{n}.bin").write_bytes(rnd.randbytes(size))
        total += size
        n += 1
    return total


def rule_files() -> list[str]:
    """The bundle's active YARA files (what the agent compiles; the yara command compiles the same sources:
    yara-python's saved rules are tied to its own libyara version)."""
    from agent.signatures import YARA_DIR, bundled_directory, load_bundle

    sig = load_bundle()
    d = bundled_directory() / YARA_DIR
    return [str(p) for p in sorted(d.glob("*.yar")) if p.name not in sig.yara_disabled
            and f"{YARA_DIR}/{p.name}" not in sig.yara_disabled]


def timed(argv: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds: user + sys of the child and its threads, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False, **kw)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def stages(top: Path, empty: Path, env: dict, mb: float) -> None:
    """Where minerwatch's CPU goes: the CLI's fixed cost (an empty directory: interpreter, imports, config,
    signature bundle and YARA compile) and, from one in-process pass, each worker stage."""
    from agent.collectors.scan_paths import PathScanner
    from agent.judge import Judge
    from agent.signatures import load_bundle

    fixed = min(timed([sys.executable, "-c", _RUNNER, "scan", str(empty), "--json"], env=env, cwd=REPO)[1]
                for _ in range(3))
    sig = load_bundle()
    judge, scanner = Judge(sig), PathScanner(sig.yara)
    before, started = os.times(), time.perf_counter()
    for snap in scanner.scan([str(top)]):
        judge.file(snap)
    wall, after = time.perf_counter() - started, os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    work = {k: v / 1e9 for k, v in scanner.stats.cpu_ns.items()}
    print(f"where minerwatch's CPU goes (one in-process pass: {wall:.2f} s wall, {cpu:.2f} s CPU):")
    print(f"  {'startup (scan of an empty dir)':<38} {fixed:6.2f} s")
    for stage, what in (("read", "read (page cache -> buffer)"), ("hash", "sha256 + sha1 + md5"),
                        ("yara", "YARA"), ("text", "text of scripts/configs")):
        t = work.get(stage, 0.0)
        print(f"  {what:<38} {t:6.2f} s  {mb / t if t else 0:7.0f} MB/s")
    print(f"  {'walk, open, judge (main thread)':<38} {max(0.0, cpu - sum(work.values())):6.2f} s")
    print(f"  two cores at best: {fixed:.2f} + {cpu:.2f} / 2 = {fixed + cpu / 2:.2f} s wall")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="generate into DIR and leave it there")
    baseline.add_arguments(ap)
    ap.set_defaults(baseline=SCAN_BASELINE)
    args = ap.parse_args()
    old_tree, new_tree = baseline.trees_from_args(args)
    yara_cmd = ensure_yara()
    work = args.keep or Path(tempfile.mkdtemp(prefix="minerwatch-bench-scan-"))
    try:
        top = work / "tree"
        if top.exists():
            shutil.rmtree(top)
        size = make_tree(top, args.size_mib)
        rules = rule_files()
        files = sorted(str(p) for p in top.rglob("*") if p.is_file())
        for path in files:  # warm the page cache: every tool reads from memory
            with open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        base_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        env = new_tree.env(base_env)
        runs = {"minerwatch": (new_tree, env)}
        if old_tree is not None:
            runs["baseline"] = (old_tree, old_tree.env(base_env))
        empty = work / "empty"
        empty.mkdir(exist_ok=True)
        for tree, tree_env in runs.values():  # compiles bytecode
            timed([sys.executable, "-c", _RUNNER, "scan", str(empty), "--json"], env=tree_env, cwd=tree.root)
        wall = {key: float("inf") for key in (*runs, "yara", "sha256sum")}
        cpu = dict(wall)
        for _ in range(args.repeat):
            for key, (tree, tree_env) in runs.items():
                t, c, proc = timed([sys.executable, "-c", _RUNNER, "scan", str(top), "--json"], env=tree_env,
                                   cwd=tree.root)
                if proc.returncode != 1:
                    raise SystemExit(f"{tree.label}: minerwatch scan exit {proc.returncode}: "
                                     f"{proc.stderr.decode()[-2000:]}")
                found = json.loads(proc.stdout)
                if not any(a["file"]["path"].endswith("/bin/kworker") for a in found):
                    raise SystemExit(f"{tree.label}: minerwatch scan missed the miner binary")
                wall[key], cpu[key] = min(wall[key], t), min(cpu[key], c)
            t, c, proc = timed([yara_cmd, "-r", "-d", "mw_memory_scan=false", *rules, str(top)])
            if proc.returncode != 0 or b"kworker" not in proc.stdout:
                raise SystemExit(f"yara -r failed or missed the miner: {proc.stderr.decode()[-2000:]}")
            wall["yara"], cpu["yara"] = min(wall["yara"], t), min(cpu["yara"], c)
            t, c, proc = timed(["sha256sum", "--", *files])
            if proc.returncode != 0:
                raise SystemExit(f"sha256sum failed: {proc.stderr.decode()[-2000:]}")
            wall["sha256sum"], cpu["sha256sum"] = min(wall["sha256sum"], t), min(cpu["sha256sum"], c)
        mb = size / 1e6
        wall["both"], cpu["both"] = wall["yara"] + wall["sha256sum"], cpu["yara"] + cpu["sha256sum"]
        print(f"{len(files)} files, {mb:.0f} MB (page cache warm), best of {args.repeat}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"yara rules: the bundle's {len(rules)} active files")
        print(f"{'tool':<44} {'wall s':>7} {'MB/s':>6} {'CPU s':>7} {'MB/CPU s':>8}")
        rows = [("minerwatch", f"minerwatch scan {new_tree.label} (3 digests+YARA)")]
        if old_tree is not None:
            rows.append(("baseline", f"minerwatch scan {old_tree.label} (baseline)"))
        rows += [("yara", "yara -r"), ("sha256sum", "sha256sum"), ("both", "yara -r + sha256sum, back to back")]
        for key, label in rows:
            print(f"{label:<44} {wall[key]:7.2f} {mb / wall[key]:6.0f} {cpu[key]:7.2f} {mb / cpu[key]:8.0f}")
        for key, _ in rows[:len(runs)]:
            ratio, cpu_ratio = wall["both"] / wall[key], cpu["both"] / cpu[key]
            tree = runs[key][0]
            print(f"ratio (yara -r + sha256sum) / minerwatch {tree.label}: wall {ratio:.3f} "
                  f"(acceptance >= 0.8: {'ok' if ratio >= 0.8 else 'NOT MET'}), CPU {cpu_ratio:.3f} "
                  f"({'ok' if cpu_ratio >= 0.8 else 'NOT MET'})")
        stages(top, empty, env, mb)
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
