"""scan-image throughput: MB/s of executable content scanned, as a ratio to ``sha256sum`` on the same files.

Builds a throw-away image offline (``docker import``: busybox plus ``--files`` random
executables totalling ``--size-mib``), then times, best of ``--repeat`` runs each:

* ``scan-image``: ImageScanner over Docker's export stream (``docker save``), i.e. the Docker
  export, tar parsing, SHA-256 + SHA-1 + MD5 and YARA of every executable;
* the export alone (reading the ``docker save`` stream, nothing else), and the scanner alone
  (the same export, held in memory);
* ``sha256sum`` over the same executables written to a temporary directory (page cache warm).

MB/s is 10^6 bytes of executable content per second. Usage::

    python3 bench/scan_image.py [--size-mib 256] [--files 32] [--repeat 3]

The image and the temporary directory are removed at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import signatures  # noqa: E402
from agent.images.scanner import ImageScanner, ScanLimits  # noqa: E402
from tests.helpers import containers, images  # noqa: E402


def best_of(repeat: int, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def export_executables(client, tag: str, into: Path) -> list[str]:
    """Write the image's executable regular files to ``into`` (the sha256sum baseline only)."""
    out = []
    stream = io.BufferedReader(_ChunksIO(client.api.get_image(tag)), 1 << 20)
    with tarfile.open(fileobj=stream, mode="r|") as outer:
        for member in outer:
            if not member.name.endswith("layer.tar") and not member.name.startswith("blobs/"):
                continue
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|*") as layer:
                for m in layer:
                    if m.isreg() and m.mode & 0o111:
                        dest = into / f"f{len(out)}"
                        with open(dest, "wb") as f:
                            shutil.copyfileobj(layer.extractfile(m), f, 1 << 20)
                        out.append(str(dest))
    return out


class _ChunksIO(io.RawIOBase):
    def __init__(self, chunks) -> None:
        self.chunks, self.rest = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self.rest:
            self.rest = next(self.chunks, None)
            if self.rest is None:
                return 0
        n = min(len(buf), len(self.rest))
        buf[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("sha256sum"):
        print("sha256sum not found", file=sys.stderr)
        return 2
    client = containers.connect_docker(start=False)
    sig = signatures.load_bundle()
    size = max(1, (args.size_mib << 20) // args.files)
    files = {f"/opt/bench/tool{i}": (os.urandom(size), 0o755) for i in range(args.files)}
    tag = f"minerwatch-bench/scan-image:{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="mw-scanbench-"))
    try:
        images.import_image(client, tag, files)
        paths = export_executables(client, tag, tmp)
        total = sum(os.path.getsize(p) for p in paths)
        for p in paths:  # warm the page cache for the baseline
            Path(p).read_bytes()
        t_ref, _ = best_of(args.repeat, lambda: subprocess.run(["sha256sum", *paths], check=True, capture_output=True))
        t_export, _ = best_of(args.repeat, lambda: sum(len(c) for c in client.api.get_image(tag)))

        def scan():
            scanner = ImageScanner(sig, limits=ScanLimits())  # a new scanner: no YARA cache between runs
            return scanner.scan(client.api.get_image(tag), tag)

        t_scan, result = best_of(args.repeat, scan)
        assert result.bytes_hashed == total, (result.bytes_hashed, total)
        export = b"".join(client.api.get_image(tag))
        t_mem, _ = best_of(args.repeat, lambda: ImageScanner(sig).scan(io.BytesIO(export), tag))
        mb = total / 1e6
        ref, ours = mb / t_ref, mb / t_scan
        print(f"image {tag}: {len(paths)} executables, {total / (1 << 20):.0f} MiB "
              f"(best of {args.repeat}, {os.cpu_count()} CPUs)")
        print(f"sha256sum over the same files        {ref:8.0f} MB/s")
        print(f"docker save stream alone             {mb / t_export:8.0f} MB/s")
        print(f"scan-image (export+hashes+YARA)      {ours:8.0f} MB/s   ratio {ours / ref:.2f}")
        print(f"  the same export read from memory   {mb / t_mem:8.0f} MB/s   ratio {mb / t_mem / ref:.2f}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            client.images.remove(tag, force=True)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the figures; say what was left
            print(f"could not remove {tag}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
