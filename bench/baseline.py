"""Another revision of minerwatch to benchmark against, run with this checkout's venv.

    python3 bench/baseline.py [REV]          # make (or reuse) REV's worktree, check it, print its path
    python3 bench/baseline.py --list         # the cached worktrees
    python3 bench/baseline.py --remove [REV] # remove REV's cached worktree (every cached one without REV)

A revision is checked out once as a detached ``git worktree`` under
``/tmp/minerwatch-baseline/<commit>/`` (keyed by the full commit hash, reused across runs;
creation is serialised by a lock file there). Its agent runs as ``python -m agent ...`` with
``cwd=<tree>`` and ``PYTHONPATH=<tree>``: the venv's editable install of this checkout is a
meta-path finder placed after the path finder, so ``PYTHONPATH`` wins for ``agent``. The
signature bundle is the resource package ``minerwatch_signatures``, which in a source tree is
the directory ``signatures/``; a symlink ``<tree>/minerwatch_signatures -> signatures`` makes the
old agent load its own bundle rather than this checkout's (``Tree.check`` proves both).

``Tree.current()`` is this checkout (its label says when ``agent/`` or ``signatures/`` carry
uncommitted changes). ``add_arguments``/``trees_from_args`` give the benchmarks
``--baseline REV``, ``--no-baseline`` and ``--new REV``; ``Table`` prints figures side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = "ed345f9"  # the commit before the worker redesign (issue 11)
CACHE = Path("/tmp/minerwatch-baseline")
SIGNATURES_LINK = "minerwatch_signatures"

_CHECK = (
    "import json, agent, agent.signatures as s; "
    "print(json.dumps({'agent': agent.__file__, 'bundle': str(s.bundled_directory().resolve()), "
    "'version': s.load_bundle(None).version}))"
)


def git(*args: str, cwd: Path = REPO) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout.strip()


@dataclass(frozen=True)
class Tree:
    """A source tree of minerwatch: where its agent runs from and how it is named in output."""

    root: Path
    label: str
    commit: str

    @classmethod
    def current(cls) -> "Tree":
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "agent", "signatures"))
        return cls(REPO, commit[:7] + ("+wip" if dirty else ""), commit)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default the environment) with this tree first on ``PYTHONPATH``."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def run_python(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """``python ARGS`` (this venv) with this tree's ``agent``; cwd is the tree."""
        return subprocess.run([sys.executable, *args], cwd=self.root, env=self.env(kw.pop("env", None)), **kw)

    def check(self) -> dict:
        """Proves that ``agent`` and its bundled signatures resolve inside this tree; returns what was found."""
        res = self.run_python("-c", _CHECK, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{self.label}: the agent does not import: {res.stderr.strip()[-2000:]}")
        found = json.loads(res.stdout.strip().splitlines()[-1])
        root = self.root.resolve()
        if not Path(found["agent"]).resolve().is_relative_to(root / "agent"):
            raise RuntimeError(f"{self.label}: agent resolves to {found['agent']}, not inside {root}")
        if Path(found["bundle"]) != root / "signatures":
            raise RuntimeError(f"{self.label}: the bundle resolves to {found['bundle']}, not {root}/signatures")
        return found


# ----------------------------------------------------------------------------- worktrees


def _resolve(rev: str) -> str:
    return git("rev-parse", "--verify", f"{rev}^{{commit}}")


def _path_of(commit: str) -> Path:
    # The base name is the worktree's admin name under .git/worktrees: make it unique.
    return CACHE / commit / f"mw-{commit[:12]}"


def _registered() -> set[Path]:
    out = git("worktree", "list", "--porcelain")
    return {Path(line[len("worktree "):]) for line in out.splitlines() if line.startswith("worktree ")}


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(mode=0o755, exist_ok=True)
    if CACHE.is_symlink() or not CACHE.is_dir():
        raise RuntimeError(f"{CACHE} is not a directory")
    with open(CACHE / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def worktree(rev: str = DEFAULT_BASELINE) -> Tree:
    """A checked tree of ``rev``: the cached worktree when it is intact, else a new one."""
    commit = _resolve(rev)
    path = _path_of(commit)
    with _locked():
        intact = path.is_dir() and path in _registered() and _head(path) == commit
        if not intact:
            if path.parent.exists() or path in _registered():
                _remove_path(path)  # a broken or half-made one
            git("worktree", "add", "--force", "--detach", str(path), commit)
        link = path / SIGNATURES_LINK
        if not link.is_symlink():
            link.symlink_to("signatures", target_is_directory=True)
    tree = Tree(path, f"{rev}" if rev == commit[: len(rev)] else f"{rev} ({commit[:7]})", commit)
    tree.check()
    return tree


def _head(path: Path) -> str | None:
    try:
        return git("rev-parse", "HEAD", cwd=path)
    except RuntimeError:
        return None


def _remove_path(path: Path) -> None:
    """Removes one of our worktrees (only ever a path under CACHE) and its git registration."""
    if not path.resolve().is_relative_to(CACHE.resolve()) or path.parent.parent != CACHE:
        raise RuntimeError(f"refusing to remove {path}: not a cached baseline worktree")
    if path in _registered():
        try:
            # --force: the tree holds our untracked signatures link and bytecode.
            git("worktree", "remove", "--force", str(path))
        except RuntimeError:
            pass  # its directory is already gone: the registration goes below
    if path.parent.is_dir() and not path.parent.is_symlink():
        shutil.rmtree(path.parent)
    if path in _registered():
        git("worktree", "prune")  # drops registrations whose directory is missing (ours now is)


def cached() -> list[Path]:
    registered = _registered()
    return sorted(p for p in CACHE.glob("*/mw-*") if p in registered) if CACHE.is_dir() else []


def remove(rev: str | None = None) -> list[Path]:
    """Removes the cached worktree of ``rev`` (every cached one when None); returns what went."""
    with _locked():
        paths = [_path_of(_resolve(rev))] if rev else cached()
        gone = []
        for path in paths:
            if path.exists() or path in _registered():
                _remove_path(path)
                gone.append(path)
        return gone


# ----------------------------------------------------------------------------- benchmark glue


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--baseline", metavar="REV", default=DEFAULT_BASELINE,
                    help=f"revision to compare against, run from a cached worktree (default {DEFAULT_BASELINE}, "
                         "the commit before the worker redesign)")
    ap.add_argument("--no-baseline", action="store_true", help="measure only the new tree")
    ap.add_argument("--new", metavar="REV", default=None,
                    help="measure REV (from a worktree) as the new tree instead of this checkout")


def trees_from_args(args: argparse.Namespace) -> tuple[Tree | None, Tree]:
    """(old tree or None, new tree), both checked."""
    new = worktree(args.new) if args.new else Tree.current()
    new.check()
    old = None if args.no_baseline else worktree(args.baseline)
    return old, new


def ratio(old: float | None, new: float | None) -> str:
    if old is None or new is None:
        return "-"
    if old == 0:
        return "inf" if new else "1.00"
    return f"{new / old:.2f}"


class Table:
    """Figures printed as they come, one row per figure: old | new | new/old."""

    def __init__(self, old: Tree | None, new: Tree, name_width: int = 44) -> None:
        self.old, self.new, self.width = old, new, name_width
        old_head = f"old {old.label}" if old else "old (none)"
        print(f"{'':<{self.width}} {old_head:>18} {'new ' + new.label:>18} {'new/old':>8}", flush=True)

    def row(self, name: str, old: float | None, new: float, fmt: str = "{:.3f}", note: str = "") -> None:
        o = fmt.format(old) if old is not None else "-"
        print(f"{name:<{self.width}} {o:>18} {fmt.format(new):>18} {ratio(old, new):>8}"
              + (f"  {note}" if note else ""), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", nargs="?", default=None)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--remove", action="store_true")
    args = ap.parse_args()
    if args.list:
        for path in cached():
            print(path)
    elif args.remove:
        for path in remove(args.rev):
            print(f"removed {path}")
    else:
        tree = worktree(args.rev or DEFAULT_BASELINE)
        found = tree.check()
        print(f"{tree.label}: {tree.root}\n  agent {found['agent']}\n  bundle {found['bundle']} "
              f"(version {found['version']})")
        print(f"  run: cd {tree.root} && PYTHONPATH={tree.root} {sys.executable} -m agent ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
