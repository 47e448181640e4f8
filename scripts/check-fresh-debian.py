#!/usr/bin/env python3
"""The README's first commands on a fresh Debian 12, end to end, in a throwaway container (slow: run by hand).

    .venv/bin/python scripts/check-fresh-debian.py [--rev HEAD] [--pytest-args "tests/test_config.py -q"]
                                                   [--test-first] [--keep]

Starts a container from the suite's Debian 12 image (``tests/helpers/debian_image.py``: a debootstrap
minbase root, cached; it has no python3, no venv, no pip, no gcc: nothing minerwatch needs), with
``--network host`` so apt and pip reach the package registries, copies in a ``git clone`` of the
revision (what a user of the repository gets: committed files only), and as root runs, one after the other:

1. ``./scripts/install.sh`` (must exit 0), then ``minerwatch sweep`` (exit 0 or 1; 2 is a failure);
2. ``./scripts/test.sh <pytest args>``: must install the test dependencies and start pytest (the
   container has no Docker engine of its own: test.sh warns and goes on; the given tests need none).
   ``--test-first`` runs step 2 before step 1 (the README's commands work in either order).

Prints each step's exit code, time and the tail of its output; exit 0 when both steps did what they
must. The container and the clone are removed at the end (``--keep`` leaves the container).

This workplace reaches the registries through a TLS proxy whose CA only its hosts trust (pip is told
by ``PIP_CERT``); that bundle is handed to pip in the container the same way (read-only, ``PIP_CERT``),
as a host's own trust store would be. Nothing else of the host goes in.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, text=True, **kw)


def step(name: str, container: str, script: str, ok_codes: tuple[int, ...], env: dict[str, str]) -> bool:
    started = time.monotonic()
    flags = [f"--env={k}={v}" for k, v in env.items()]
    proc = subprocess.run(["docker", "exec", "-w", "/root/minerwatch", *flags, container, "bash", "-c", script],
                          check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    took = time.monotonic() - started
    ok = proc.returncode in ok_codes
    print(f"== {name}: exit {proc.returncode} in {took:.0f} s ({'ok' if ok else 'FAILED'})")
    print("\n".join("   " + line for line in proc.stdout.splitlines()[-40:]))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="revision of this checkout to clone (default HEAD)")
    ap.add_argument("--pytest-args", default="tests/test_config.py -q",
                    help="what scripts/test.sh passes to pytest (default: %(default)s)")
    ap.add_argument("--test-first", action="store_true", help="run scripts/test.sh before scripts/install.sh")
    ap.add_argument("--keep", action="store_true", help="leave the container running")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (docker, and the image build)")

    import docker

    from tests.helpers.debian_image import ensure_image

    image = ensure_image(docker.from_env()).tag
    name = f"mw-fresh-debian-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="mw-fresh-") as tmp:
        clone = Path(tmp) / "minerwatch"
        sh("git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone))
        sh("git", "-C", str(clone), "checkout", "-q", args.rev)
        rev = sh("git", "-C", str(clone), "log", "-1", "--format=%h %s", stdout=subprocess.PIPE).stdout.strip()
        print(f"fresh Debian 12 ({image}), clone of {rev[:100]}")
        trust, env = [], {}
        if os.environ.get("PIP_CERT") and os.path.isfile(os.environ["PIP_CERT"]):
            trust = ["-v", f"{os.path.realpath(os.environ['PIP_CERT'])}:/etc/minerwatch-check-ca.pem:ro"]
            env["PIP_CERT"] = "/etc/minerwatch-check-ca.pem"
        sh("docker", "run", "-d", "--name", name, "--network", "host", "--label", "minerwatch.test=1", *trust,
           image, "sleep", "infinity", stdout=subprocess.DEVNULL)
        try:
            have = subprocess.run(["docker", "exec", name, "sh", "-c",
                                   "command -v python3 pip3 gcc docker git || true"],
                                  check=False, stdout=subprocess.PIPE, text=True).stdout.split()
            print(f"preinstalled of python3 pip3 gcc docker git: {have or 'none'}")
            sh("docker", "cp", str(clone), f"{name}:/root/minerwatch")
            def install() -> bool:
                return (step("./scripts/install.sh", name, "./scripts/install.sh", (0,), env)
                        and step("minerwatch sweep", name, "minerwatch sweep", (0, 1), env))

            def test() -> bool:
                return step(f"./scripts/test.sh {args.pytest_args}", name,
                            "./scripts/test.sh " + " ".join(shlex.quote(a) for a in shlex.split(args.pytest_args)),
                            (0,), env)

            first, second = (test, install) if args.test_first else (install, test)
            ok = first()
            ok = second() and ok
        finally:
            if not args.keep:
                sh("docker", "rm", "-f", name, check=False, stdout=subprocess.DEVNULL)
    print("both steps did what they must" if ok else "a step FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
