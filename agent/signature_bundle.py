"""The layout of a signature bundle, its bundle.toml and its MANIFEST.sha256.

Part of agent.signatures (import from there).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.signature_lists import FILE_NAME
from agent.signature_reader import Reader

RESOURCE_PACKAGE = "minerwatch_signatures"
META_FILE = "bundle.toml"
MANIFEST = "MANIFEST.sha256"
YARA_DIR = "yara"

_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_TOML_WHERE = re.compile(r"at line (\d+)")


def bundled_directory() -> Path:
    """The directory of the signature bundle shipped with minerwatch."""
    try:
        spec = importlib.util.find_spec(RESOURCE_PACKAGE)
    except (ImportError, ValueError):  # ValueError: a broken module entry without __spec__
        spec = None
    # A namespace package has no single files() root (MultiplexedPath): use its search locations.
    locations = (spec.submodule_search_locations or ()) if spec is not None else ()
    for location in locations:
        if (Path(location) / META_FILE).is_file():
            return Path(location)
    return Path(__file__).resolve().parent.parent / "signatures"


def bundle_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file of the bundle at ``root`` except the manifest.

    Hidden files and ``__pycache__`` are skipped (scripts/update_manifest.py uses the same rule).
    """
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file() and rel.as_posix() != MANIFEST:
            found.append(rel.as_posix())
    return sorted(found)


# --- bundle.toml ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleMeta:
    version: str
    description: str
    yara_enabled: tuple[str, ...]
    yara_disabled: dict[str, str]


def toml_line(text: str, key: str) -> int:
    match = re.search(rf'^\s*"?{re.escape(key)}"?\s*=', text, re.M)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def _yara_file_names(r: Reader, text: str, key: str, names: list[str]) -> list[str]:
    good = []
    for name in names:
        if not isinstance(name, str) or not name.endswith(".yar") or not FILE_NAME.fullmatch(name):
            r.issue(META_FILE, toml_line(text, key), f"[yara] {key}: {name!r} is not a .yar file name in yara/")
        else:
            good.append(name)
    return good


def read_meta(r: Reader) -> BundleMeta | None:
    text = r.text(META_FILE)
    if text is None:
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = _TOML_WHERE.search(str(exc))
        r.issue(META_FILE, int(where.group(1)) if where else 0, f"not valid TOML: {exc}")
        return None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        r.issue(META_FILE, 0, "not valid TOML: nested too deeply")
        return None
    for key in sorted(set(doc) - {"version", "description", "yara"}):
        r.issue(META_FILE, toml_line(text, key), f"unknown key {key!r}")
    version, description = doc.get("version"), doc.get("description", "")
    if not isinstance(version, str) or not version.strip() or any(c.isspace() for c in version):
        r.issue(META_FILE, toml_line(text, "version"), "version is missing or not a string without spaces")
        version = None
    if not isinstance(description, str):
        r.issue(META_FILE, toml_line(text, "description"), "description must be a string")
        description = ""
    table = doc.get("yara", {})
    if not isinstance(table, dict):
        r.issue(META_FILE, toml_line(text, "yara"), "yara must be a table")
        table = {}
    for key in sorted(set(table) - {"enabled", "disabled"}):
        r.issue(META_FILE, toml_line(text, key), f"unknown key 'yara.{key}'")
    enabled, disabled = table.get("enabled", []), table.get("disabled", {})
    if not isinstance(enabled, list):
        r.issue(META_FILE, toml_line(text, "enabled"), "yara.enabled must be a list of file names")
        enabled = []
    if not isinstance(disabled, dict):
        r.issue(META_FILE, toml_line(text, "disabled"), "yara.disabled must be a table of file = reason")
        disabled = {}
    enabled = _yara_file_names(r, text, "enabled", enabled)
    reasons = {}
    for name in _yara_file_names(r, text, "disabled", list(disabled)):
        if not isinstance(disabled[name], str) or not disabled[name].strip():
            r.issue(META_FILE, toml_line(text, name), f"yara.disabled: {name} needs a reason")
        elif name in enabled:
            r.issue(META_FILE, toml_line(text, name), f"{name} is both enabled and disabled")
        else:
            reasons[name] = disabled[name]
    if len(set(enabled)) != len(enabled):
        r.issue(META_FILE, toml_line(text, "enabled"), "yara.enabled lists a file twice")
    if version is None:
        return None
    return BundleMeta(version, description, tuple(dict.fromkeys(enabled)), reasons)


# --- MANIFEST.sha256 --------------------------------------------------------------------


def verify_manifest(r: Reader) -> None:
    """Every file is listed in MANIFEST.sha256 with its digest, and nothing else is."""
    text = r.text(MANIFEST)
    if text is None:
        return
    listed: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _MANIFEST_LINE.fullmatch(line)
        if not match:
            r.issue(MANIFEST, number, "expected '<sha256>  <path>' (sha256sum format)")
            continue
        digest, rel = match.group(1).lower(), match.group(2)
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts or rel == MANIFEST:
            r.issue(MANIFEST, number, f"{rel!r} is not a path inside the bundle")
            continue
        if not r.first(listed, rel, MANIFEST, number, "path"):
            continue
        if not (r.root / rel).is_file():
            r.issue(rel, 0, f"listed in {MANIFEST} (line {number}) but missing")
            r.mark_missing(rel)
            continue
        data = r.data(rel)
        if data is not None and hashlib.sha256(data).hexdigest() != digest:
            r.issue(rel, 0, f"content does not match {MANIFEST} line {number} "
                    "(edited without regenerating its manifest? `minerwatch signatures manifest DIR`)")
    for rel in bundle_files(r.root):
        if rel not in listed:
            r.issue(rel, 0, f"not listed in {MANIFEST}")
