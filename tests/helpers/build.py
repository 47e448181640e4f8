"""Compile the static C test helpers once and cache them.

    from tests.helpers.build import build_helpers
    bins = build_helpers()            # HelperBins
    bins.fakeminer, bins["fakeminer-plain"], bins.dir

Binaries land in ``$MINERWATCH_TEST_BIN or /tmp/minerwatch-test-bin/<hash>/``; the hash
covers the C sources, the compiler flags and ``gcc --version``, so an unchanged tree reuses
them across runs and sessions. Safe against concurrent builders (file lock + atomic rename).

    python -m tests.helpers.build     # builds and prints the directory

Dynamically linked builds (``DYNAMIC_TARGETS``: what ``ld.so PROGRAM`` can run) are apart, so adding one
changes neither the static helpers' directory nor the base image made of them:

    build_dynamic("fakeminer-dyn")    # Path of the binary
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_ROOT = Path(os.environ.get("MINERWATCH_TEST_BIN", "/tmp/minerwatch-test-bin"))
CC = os.environ.get("CC", "gcc")
BASE_FLAGS = ["-static", "-O2", "-pthread", "-Wall", "-Wno-format-truncation"]

# output name -> (source, extra flags)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "fakeminer": ("fakeminer.c", ["-DWITH_STRINGS"]),
    "fakeminer-plain": ("fakeminer.c", ["-DOBFUSCATED"]),
    "fakepool": ("fakepool.c", []),
    "burner": ("burner.c", []),
}


# output name -> (source, extra flags); linked dynamically against the host's glibc (no -static)
DYNAMIC_TARGETS: dict[str, tuple[str, list[str]]] = {
    "fakeminer-dyn": ("fakeminer.c", ["-DWITH_STRINGS"]),
    # the RandomX fake miner (a shared object against librandomx-dev) and the stub that unpacks it (rxpack.py)
    "randomx-miner.so": ("randomx_miner.c", ["-shared", "-fPIC", "-Wl,--no-as-needed", "-lrandomx"]),
    "rxpack-stub": ("rxpack_stub.c", []),
}
DYNAMIC_FLAGS = ["-O2", "-pthread", "-Wall", "-Wno-format-truncation", "-fPIE", "-pie"]


@dataclass(frozen=True)
class HelperBins:
    """Paths of the built helpers. Attribute names use underscores
    (``fakeminer_plain``); item access takes the file names (``bins["fakeminer-plain"]``)."""

    dir: Path
    fakeminer: Path
    fakeminer_plain: Path
    fakepool: Path
    burner: Path

    def __getitem__(self, name: str) -> Path:
        return getattr(self, name.replace("-", "_"))

    def as_dict(self) -> dict[str, Path]:
        return {name: self[name] for name in TARGETS}


def _compiler_id() -> str:
    try:
        out = subprocess.run([CC, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # pragma: no cover - env problem
        raise RuntimeError(f"C compiler {CC!r} not usable: {exc} (apt-get install gcc libc6-dev)")
    return out.splitlines()[0] if out else CC


def sources_hash() -> str:
    h = hashlib.sha256()
    h.update(_compiler_id().encode())
    h.update(repr(BASE_FLAGS).encode())
    for name in sorted(TARGETS):
        src, flags = TARGETS[name]
        h.update(name.encode() + b"\0" + repr(flags).encode() + b"\0")
        h.update((HERE / src).read_bytes())
    return h.hexdigest()[:16]


def _bins(d: Path) -> HelperBins:
    return HelperBins(
        dir=d,
        fakeminer=d / "fakeminer",
        fakeminer_plain=d / "fakeminer-plain",
        fakepool=d / "fakepool",
        burner=d / "burner",
    )


def _complete(d: Path) -> bool:
    return (d / ".complete").exists() and all(
        (d / n).is_file() and os.access(d / n, os.X_OK) for n in TARGETS
    )


def build_helpers(cache_root: Path | None = None) -> HelperBins:
    """Build (or reuse) all helpers; returns their paths. Raises RuntimeError with the
    compiler output when a build fails."""
    root = Path(cache_root) if cache_root else CACHE_ROOT
    d = root / sources_hash()
    if _complete(d):
        return _bins(d)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(d):
            return _bins(d)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            for name, (src, flags) in TARGETS.items():
                cmd = [CC, *BASE_FLAGS, *flags, "-o", str(tmp / name), str(HERE / src)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    raise RuntimeError(
                        f"building {name} failed ({' '.join(cmd)}):\n{res.stdout}{res.stderr}"
                    )
            (tmp / ".complete").write_text("ok\n")
            if d.exists():
                shutil.rmtree(d)
            os.rename(tmp, d)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        os.chmod(d, 0o755)
    return _bins(d)


def build_dynamic(name: str, cache_root: Path | None = None) -> Path:
    """Build (or reuse) the dynamically linked helper ``name`` of ``DYNAMIC_TARGETS``; returns its path."""
    src, flags = DYNAMIC_TARGETS[name]
    h = hashlib.sha256()
    h.update(_compiler_id().encode() + repr(DYNAMIC_FLAGS + flags).encode() + (HERE / src).read_bytes())
    root = Path(cache_root) if cache_root else CACHE_ROOT
    d = root / f"dyn-{name}-{h.hexdigest()[:16]}"
    out = d / name
    if out.is_file() and os.access(out, os.X_OK):
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            cmd = [CC, *DYNAMIC_FLAGS, *flags, "-o", str(tmp / name), str(HERE / src)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"building {name} failed ({' '.join(cmd)}):\n{res.stdout}{res.stderr}")
            os.chmod(tmp, 0o755)
            os.rename(tmp, d)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    b = build_helpers()
    print(b.dir)
    sys.exit(0)
