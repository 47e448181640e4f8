#!/usr/bin/env python3
"""Regenerate (or check) the MANIFEST.sha256 of a minerwatch signature bundle.

Usage:
    python3 scripts/update_manifest.py [BUNDLE_DIR]          # rewrite BUNDLE_DIR/MANIFEST.sha256
    python3 scripts/update_manifest.py --check [BUNDLE_DIR]  # exit 1 if it is out of date

BUNDLE_DIR defaults to the repository's signatures/ directory. The manifest lists, in
`sha256sum` format ("<sha256>  <relative/path>"), every file of the bundle except itself,
hidden files and __pycache__ (the same rule as agent.signatures.bundle_files), sorted by
path, so `cd BUNDLE_DIR && sha256sum -c MANIFEST.sha256` works too. Standard library only.
Run it after every edit to the bundle; the agent refuses a bundle whose manifest does not
match its files.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "signatures"


def bundle_files(root: Path) -> list[str]:
    """Relative POSIX paths of every bundle file except the manifest, hidden files and __pycache__."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file() and rel.as_posix() != MANIFEST:
            found.append(rel.as_posix())
    return sorted(found)


def render(root: Path) -> str:
    """The manifest text for the bundle at ``root``."""
    lines = [f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}\n" for rel in bundle_files(root)]
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE, help="bundle directory")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args(argv)
    root: Path = args.bundle
    if not (root / "bundle.toml").is_file():
        print(f"{root}: not a signature bundle (no bundle.toml)", file=sys.stderr)
        return 2
    wanted = render(root)
    manifest = root / MANIFEST
    current = manifest.read_text(encoding="utf-8") if manifest.is_file() else None
    if args.check:
        if current == wanted:
            print(f"{manifest}: up to date")
            return 0
        print(f"{manifest}: out of date; run {Path(__file__).name} {root}", file=sys.stderr)
        return 1
    if current == wanted:
        print(f"{manifest}: already up to date ({wanted.count(chr(10))} files)")
        return 0
    manifest.write_text(wanted, encoding="utf-8")
    print(f"{manifest}: written ({wanted.count(chr(10))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
