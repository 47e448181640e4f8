"""The YARA rules of a signature bundle: validated, compiled with includes off and checked meta.

Part of agent.signatures (import from there).
"""

from __future__ import annotations

import io
import re
from pathlib import PurePosixPath
from typing import Any

import yara

from agent.signature_bundle import META_FILE, YARA_DIR, BundleMeta
from agent.signature_reader import Reader

YARA_MODULES = frozenset({"elf", "pe", "math", "hash", "string", "time"})
YARA_CATEGORIES = frozenset({"miner", "miner-suspect", "packer"})
YARA_TIERS = frozenset({"stable", "incubating", "sandbox"})
YARA_SCOPES = frozenset({"file", "memory", "any"})
# The only external a rule may use: compiled false (every file scan); YaraScanner.scan_memory
# sets it true at match time for data read from process memory.
YARA_MEMORY_EXTERNAL = "mw_memory_scan"

_YARA_RULE = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+([A-Za-z_]\w*)", re.M)
_YARA_IMPORT = re.compile(r'^\s*import\s+"([^"]*)"', re.M)
_YARA_WHERE = re.compile(r"line (\d+): (.*)", re.S)


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    problems = [f"meta {key} is missing or empty" for key in ("description", "source")
                if not isinstance(meta.get(key), str) or not meta[key].strip()]
    weight = meta.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
        problems.append("meta weight must be an integer from 1 to 100")
    for key, allowed in (("category", YARA_CATEGORIES), ("tier", YARA_TIERS), ("scope", YARA_SCOPES)):
        if meta.get(key) not in allowed:
            problems.append(f"meta {key} must be one of {', '.join(sorted(allowed))}")
    return problems


def _compile(r: Reader, files: dict[str, str]) -> Any:
    """Compile ``files`` (path -> text) together, one namespace per file.

    When that fails, each file is compiled alone to name the file and line of every error,
    and the good ones are compiled together again. Warnings count as errors: a bundle must
    compile clean.
    """
    try:
        return yara.compile(sources={PurePosixPath(rel).stem: text for rel, text in files.items()},
                            includes=False, error_on_warning=True,
                            externals={YARA_MEMORY_EXTERNAL: False})
    except yara.Error as exc:  # SyntaxError or WarningError, both "line N: message"
        if len(files) == 1:
            rel = next(iter(files))
            warnings = exc.warnings if isinstance(exc, yara.WarningError) else [str(exc)]
            kind = "YARA warning" if isinstance(exc, yara.WarningError) else "YARA"
            for message in warnings:
                where = _YARA_WHERE.match(message)
                r.issue(rel, int(where.group(1)) if where else 0, f"{kind}: {where.group(2) if where else message}")
            return None
        good = {rel: text for rel, text in files.items() if _compile(r, {rel: text}) is not None}
        if len(good) == len(files):
            r.issue(YARA_DIR, 0, f"YARA: the files compile alone but not together: {exc}")
            return None
        return _compile(r, good) if good else None


def _rule_meta(r: Reader, rules: Any, where: dict[str, list[tuple[str, int]]]) -> dict[str, dict]:
    """Check the meta of every compiled rule; identifier -> meta."""
    metas = {}
    for rule in rules:
        places = where.get(rule.identifier, [(YARA_DIR, 0)])
        rel, line = places[0]
        # A duplicated name is already an issue, and which copy this is cannot be told apart.
        for problem in _meta_problems(rule.meta) if len(places) == 1 else ():
            r.issue(rel, line, f"rule {rule.identifier}: {problem}")
        metas[rule.identifier] = dict(rule.meta)
    return metas


def read_yara(r: Reader, meta: BundleMeta | None) -> tuple[Any, dict[str, dict]]:
    """Validate every listed YARA file; compile the enabled ones into one Rules object."""
    enabled = meta.yara_enabled if meta else ()
    disabled = meta.yara_disabled if meta else {}
    folder = r.root / YARA_DIR
    present = sorted(p.name for p in folder.glob("*.yar")) if folder.is_dir() else []
    for name in present:
        if meta is not None and name not in enabled and name not in disabled:
            r.issue(f"{YARA_DIR}/{name}", 0, f"not listed in {META_FILE} [yara] enabled or [yara.disabled]")
    texts: dict[str, str] = {}
    where: dict[str, list[tuple[str, int]]] = {}
    for name in (*enabled, *disabled):
        rel = f"{YARA_DIR}/{name}"
        if name not in present:
            toml = r.text(META_FILE) or ""
            at = toml.find(f'"{name}"')
            r.issue(META_FILE, toml.count("\n", 0, at) + 1 if at >= 0 else 0,
                    f"{rel} is listed in [yara] but does not exist")
            continue
        text = r.text(rel)
        if text is None or not _imports_allowed(r, rel, text):
            continue
        texts[rel] = text
        for match in _YARA_RULE.finditer(text):
            where.setdefault(match.group(1), []).append((rel, text.count("\n", 0, match.start()) + 1))
    for identifier, places in where.items():
        for rel, line in places[1:]:
            r.issue(rel, line, f"rule {identifier} is already defined in {places[0][0]} line {places[0][1]}")
    off = {rel: text for rel, text in texts.items() if PurePosixPath(rel).name in disabled}
    on = {rel: text for rel, text in texts.items() if rel not in off}
    if off and (checked := _compile(r, off)) is not None:
        _rule_meta(r, checked, where)
    rules = _compile(r, on) if on else None
    return (_compact(rules), _rule_meta(r, rules, where)) if rules is not None else (None, {})


def _compact(rules: Any) -> Any:
    """The same rules saved and loaded back, in memory: libyara's compiler leaves the Rules it makes in
    arenas grown for compiling (about 7 MiB resident even for one trivial rule, 9 MiB for the bundle's),
    while loaded rules take what their ~25 KB need. Only our own freshly compiled bytes are loaded."""
    buf = io.BytesIO()
    rules.save(file=buf)
    buf.seek(0)
    return yara.load(file=buf)


def _imports_allowed(r: Reader, rel: str, text: str) -> bool:
    """Only the YARA modules in YARA_MODULES may be imported."""
    ok = True
    for match in _YARA_IMPORT.finditer(text):
        if match.group(1) not in YARA_MODULES:
            ok = False
            r.issue(rel, text.count("\n", 0, match.start()) + 1,
                    f"import {match.group(1)!r} is not allowed ({', '.join(sorted(YARA_MODULES))})")
    return ok
