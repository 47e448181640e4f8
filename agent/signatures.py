"""The signature bundle: IOC lists and YARA rules, validated on load.

CONTRACT (detectors depend on these names; keep them):

    Signatures.version: str
    Signatures.directory: str
    Signatures.hashes: dict[str, IocEntry]          # lower-case hex digest (md5/sha1/sha256) -> entry
    Signatures.pool_domains: tuple[IocEntry, ...]   # value = domain suffix, lower case
    Signatures.pool_ports: dict[int, IocEntry]      # enabled stratum ports only
    Signatures.miner_names: dict[str, IocEntry]     # lower-case executable/comm names (xmrig, xmr-stak...)
    Signatures.cmdline_patterns: tuple[Pattern, ...]
    Signatures.wallet_patterns: tuple[Pattern, ...]
    Signatures.env_vars: dict[str, IocEntry]        # upper-case variable names (POOL_URL...)
    Signatures.official_images: dict[str, IocEntry] # official repository names (openjdk, golang...)
    Signatures.bad_namespaces: dict[str, IocEntry]  # lower-case namespaces (thanhtudo...)
    Signatures.bad_images: dict[str, IocEntry]      # lower-case repo refs or digests
    Signatures.launchers: dict[str, IocEntry]       # launcher script base names (dao.py...)
    Signatures.yara: yara.Rules | None              # compiled rules
    Signatures.yara_rule_count: int

    load_bundle(directory: str | Path | None) -> Signatures   # None: bundled; raises SignatureError
    check_bundle(directory) -> tuple[Signatures | None, list[SignatureIssue]]

Beyond the contract:

    Signatures.description: str
    Signatures.disabled_pool_domains: tuple[IocEntry, ...]  # shipped disabled, with the reason
    Signatures.disabled_pool_ports: dict[int, IocEntry]
    Signatures.yara_meta: dict[str, dict]           # active rule identifier -> its meta
    Signatures.yara_disabled: dict[str, str]        # disabled YARA file -> reason
    Signatures.pool_domain(host) -> IocEntry | None # suffix match on label boundaries
    Signatures.env_var(name) -> IocEntry | None     # exact name or a NAME_* prefix entry
    describe(sig) -> dict                           # counts for `minerwatch signatures check`
    bundled_directory() -> Path

YARA matches carry ``.rule``, ``.namespace`` (the file name without .yar) and ``.meta``
with ``weight`` (1-100), ``category`` (miner | miner-suspect | packer), ``tier`` and
``scope`` (file | memory | any); every active rule is guaranteed to have them.

The file formats are documented in signatures/README.md. Loading reads and validates
data only: YARA is compiled with includes disabled, a short list of allowed modules and
one boolean external, ``mw_memory_scan`` (false unless a memory scan sets it); nothing from
the bundle is executed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yara

from agent.errors import SignatureError, SignatureIssue


@dataclass(frozen=True, slots=True)
class IocEntry:
    """One indicator with where it came from."""

    value: str
    source: str
    name: str = ""
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Pattern:
    """A named regular expression with a weight and a source."""

    name: str
    regex: re.Pattern[str]
    weight: int
    source: str
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Signatures:
    version: str
    directory: str
    hashes: dict[str, IocEntry] = field(default_factory=dict)
    pool_domains: tuple[IocEntry, ...] = ()
    pool_ports: dict[int, IocEntry] = field(default_factory=dict)
    miner_names: dict[str, IocEntry] = field(default_factory=dict)
    cmdline_patterns: tuple[Pattern, ...] = ()
    wallet_patterns: tuple[Pattern, ...] = ()
    env_vars: dict[str, IocEntry] = field(default_factory=dict)
    official_images: dict[str, IocEntry] = field(default_factory=dict)
    bad_namespaces: dict[str, IocEntry] = field(default_factory=dict)
    bad_images: dict[str, IocEntry] = field(default_factory=dict)
    launchers: dict[str, IocEntry] = field(default_factory=dict)
    yara: Any = None
    yara_rule_count: int = 0
    description: str = ""
    disabled_pool_domains: tuple[IocEntry, ...] = ()
    disabled_pool_ports: dict[int, IocEntry] = field(default_factory=dict)
    yara_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    yara_disabled: dict[str, str] = field(default_factory=dict)

    def pool_domain(self, host: str) -> IocEntry | None:
        """The pool-domain entry that ``host`` equals or is a subdomain of, if any."""
        host = host.lower().rstrip(".")
        for entry in self.pool_domains:
            if host == entry.value or host.endswith("." + entry.value):
                return entry
        return None

    def env_var(self, name: str) -> IocEntry | None:
        """The entry for variable ``name``: an exact entry, else a ``PREFIX*`` entry it starts with."""
        entry = self.env_vars.get(name)
        if entry is not None:
            return entry
        for key, entry in self.env_vars.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                return entry
        return None


# --- bundle layout -------------------------------------------------------------------

RESOURCE_PACKAGE = "minerwatch_signatures"
META_FILE = "bundle.toml"
MANIFEST = "MANIFEST.sha256"
YARA_DIR = "yara"
YARA_MODULES = frozenset({"elf", "pe", "math", "hash", "string", "time"})
YARA_CATEGORIES = frozenset({"miner", "miner-suspect", "packer"})
YARA_TIERS = frozenset({"stable", "incubating", "sandbox"})
YARA_SCOPES = frozenset({"file", "memory", "any"})
# The only external a rule may use: compiled false (every file scan); YaraScanner.scan_memory
# sets it true at match time for data read from process memory.
YARA_MEMORY_EXTERNAL = "mw_memory_scan"

_SEPARATOR = re.compile(r"(?:^|\s+)\|(?:\s+|$)")
_HEX = re.compile(r"[0-9a-f]+")
_NUMBER = re.compile(r"[0-9]{1,6}")  # ASCII only: str.isdigit() accepts digits int() rejects
_DOMAIN = re.compile(r"(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")
_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\*?")
_IDENT = re.compile(r"[a-z][a-z0-9_]*")
_REPO = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_NAME = re.compile(_REPO)
_IMAGE_REF = re.compile(rf"(?:[a-z0-9.-]+(?::[0-9]+)?/)?{_REPO}(?:/{_REPO})*|sha256:[0-9a-f]{{64}}")
_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_YARA_RULE = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+([A-Za-z_]\w*)", re.M)
_YARA_IMPORT = re.compile(r'^\s*import\s+"([^"]*)"', re.M)
_YARA_WHERE = re.compile(r"line (\d+): (.*)", re.S)
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


# --- reading with issue collection ---------------------------------------------------


class _Reader:
    """Reads the files of one bundle once and collects every issue found in them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.issues: list[SignatureIssue] = []
        self._data: dict[str, bytes | None] = {}
        self._text: dict[str, str | None] = {}

    def issue(self, file: str, line: int, message: str) -> None:
        self.issues.append(SignatureIssue(file, line, message))

    def mark_missing(self, rel: str) -> None:
        """Record that ``rel`` is missing, already reported, so later reads stay quiet."""
        self._data[rel] = None

    def data(self, rel: str) -> bytes | None:
        if rel not in self._data:
            try:
                self._data[rel] = (self.root / rel).read_bytes()
            except FileNotFoundError:
                self.issue(rel, 0, "file is missing")
                self._data[rel] = None
            except OSError as exc:
                self.issue(rel, 0, f"cannot read: {exc.strerror or exc}")
                self._data[rel] = None
        return self._data[rel]

    def text(self, rel: str) -> str | None:
        if rel not in self._text:
            raw = self.data(rel)
            try:
                self._text[rel] = None if raw is None else raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.issue(rel, raw.count(b"\n", 0, exc.start) + 1, "not valid UTF-8")
                self._text[rel] = None
        return self._text[rel]

    def rows(self, rel: str, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, columns) for every entry line with the right, non-empty columns."""
        text = self.text(rel)
        # split("\n"), not splitlines(): that also breaks at \x1c-\x1e, \x85, \u2028..., and the
        # line numbers in issues would then not be the ones an editor shows.
        for number, raw in enumerate((text or "").split("\n"), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            cols = [c.strip() for c in _SEPARATOR.split(line)]
            if len(cols) != len(columns):
                self.issue(rel, number, f"expected {len(columns)} columns ({' | '.join(columns)}), "
                           f"found {len(cols)} (columns are separated by ' | ')")
                continue
            empty = [name for name, value in zip(columns, cols) if not value]
            if empty:
                self.issue(rel, number, f"missing {empty[0]}")
                continue
            yield number, cols

    def first(self, seen: dict[Any, int], key: Any, rel: str, line: int, what: str) -> bool:
        """True the first time ``key`` is seen; a duplicate is an issue."""
        if key in seen:
            self.issue(rel, line, f"duplicate {what} {key!r} (first on line {seen[key]})")
            return False
        seen[key] = line
        return True

    def status(self, rel: str, line: int, status: str, source: str) -> bool | None:
        """enabled -> True, disabled (with its reason) -> False, anything else -> None."""
        if status not in ("enabled", "disabled"):
            self.issue(rel, line, f"status must be 'enabled' or 'disabled', not {status!r}")
            return None
        if status == "disabled" and "disabled:" not in source:
            self.issue(rel, line, "a disabled entry must give its reason after 'disabled:' in the source")
            return None
        return status == "enabled"


# --- bundle.toml and the manifest -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Meta:
    version: str
    description: str
    yara_enabled: tuple[str, ...]
    yara_disabled: dict[str, str]


def _toml_line(text: str, key: str) -> int:
    match = re.search(rf'^\s*"?{re.escape(key)}"?\s*=', text, re.M)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def _yara_file_names(r: _Reader, text: str, key: str, names: list[str]) -> list[str]:
    good = []
    for name in names:
        if not isinstance(name, str) or not name.endswith(".yar") or not _FILE_NAME.fullmatch(name):
            r.issue(META_FILE, _toml_line(text, key), f"[yara] {key}: {name!r} is not a .yar file name in yara/")
        else:
            good.append(name)
    return good


def _read_meta(r: _Reader) -> _Meta | None:
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
        r.issue(META_FILE, _toml_line(text, key), f"unknown key {key!r}")
    version, description = doc.get("version"), doc.get("description", "")
    if not isinstance(version, str) or not version.strip() or any(c.isspace() for c in version):
        r.issue(META_FILE, _toml_line(text, "version"), "version is missing or not a string without spaces")
        version = None
    if not isinstance(description, str):
        r.issue(META_FILE, _toml_line(text, "description"), "description must be a string")
        description = ""
    table = doc.get("yara", {})
    if not isinstance(table, dict):
        r.issue(META_FILE, _toml_line(text, "yara"), "yara must be a table")
        table = {}
    for key in sorted(set(table) - {"enabled", "disabled"}):
        r.issue(META_FILE, _toml_line(text, key), f"unknown key 'yara.{key}'")
    enabled, disabled = table.get("enabled", []), table.get("disabled", {})
    if not isinstance(enabled, list):
        r.issue(META_FILE, _toml_line(text, "enabled"), "yara.enabled must be a list of file names")
        enabled = []
    if not isinstance(disabled, dict):
        r.issue(META_FILE, _toml_line(text, "disabled"), "yara.disabled must be a table of file = reason")
        disabled = {}
    enabled = _yara_file_names(r, text, "enabled", enabled)
    reasons = {}
    for name in _yara_file_names(r, text, "disabled", list(disabled)):
        if not isinstance(disabled[name], str) or not disabled[name].strip():
            r.issue(META_FILE, _toml_line(text, name), f"yara.disabled: {name} needs a reason")
        elif name in enabled:
            r.issue(META_FILE, _toml_line(text, name), f"{name} is both enabled and disabled")
        else:
            reasons[name] = disabled[name]
    if len(set(enabled)) != len(enabled):
        r.issue(META_FILE, _toml_line(text, "enabled"), "yara.enabled lists a file twice")
    if version is None:
        return None
    return _Meta(version, description, tuple(dict.fromkeys(enabled)), reasons)


def _verify_manifest(r: _Reader) -> None:
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
                    "(changed without running scripts/update_manifest.py?)")
    for rel in bundle_files(r.root):
        if rel not in listed:
            r.issue(rel, 0, f"not listed in {MANIFEST}")


# --- IOC lists ------------------------------------------------------------------------


def _read_hashes(r: _Reader) -> dict[str, IocEntry]:
    rel, out, seen = "hashes.txt", {}, {}
    for line, (digest, name, source) in r.rows(rel, ("digest", "name", "source")):
        digest = digest.lower()
        if len(digest) not in (32, 40, 64) or not _HEX.fullmatch(digest):
            r.issue(rel, line, f"digest must be 32, 40 or 64 hex digits (MD5, SHA-1, SHA-256): {digest!r}")
        elif r.first(seen, digest, rel, line, "digest"):
            out[digest] = IocEntry(digest, source, name, rel, line)
    return out


def _read_domains(r: _Reader) -> tuple[tuple[IocEntry, ...], tuple[IocEntry, ...]]:
    rel, seen = "pool_domains.txt", {}
    enabled: dict[str, IocEntry] = {}
    disabled: list[IocEntry] = []
    for line, (suffix, status, source) in r.rows(rel, ("suffix", "status", "source")):
        suffix = suffix.lower().rstrip(".")
        on = r.status(rel, line, status, source)
        if not _DOMAIN.fullmatch(suffix):
            r.issue(rel, line, f"{suffix!r} is not a domain name with at least two labels")
        elif on is not None and r.first(seen, suffix, rel, line, "domain"):
            entry = IocEntry(suffix, source, "", rel, line)
            if on:
                enabled[suffix] = entry
            else:
                disabled.append(entry)
    for entry in (*enabled.values(), *disabled):
        labels = entry.value.split(".")
        for i in range(1, len(labels) - 1):
            parent = enabled.get(".".join(labels[i:]))
            if parent is not None:
                r.issue(rel, entry.line, f"{entry.value!r} is already covered by {parent.value!r} "
                        f"(line {parent.line}); fold its source into that line")
                break
    return tuple(enabled.values()), tuple(disabled)


def _read_ports(r: _Reader) -> tuple[dict[int, IocEntry], dict[int, IocEntry]]:
    rel, seen = "pool_ports.txt", {}
    enabled: dict[int, IocEntry] = {}
    disabled: dict[int, IocEntry] = {}
    for line, (text, status, source) in r.rows(rel, ("port", "status", "source")):
        on = r.status(rel, line, status, source)
        if not _NUMBER.fullmatch(text) or not 1 <= int(text) <= 65535:
            r.issue(rel, line, f"port must be a number from 1 to 65535, not {text!r}")
        elif on is not None and r.first(seen, int(text), rel, line, "port"):
            (enabled if on else disabled)[int(text)] = IocEntry(text, source, "", rel, line)
    return enabled, disabled


def _read_names(r: _Reader, rel: str, valid: re.Pattern[str], fold: bool, what: str) -> dict[str, IocEntry]:
    """A ``name | source`` list; ``fold`` lower-cases names, otherwise they must match as written."""
    out, seen = {}, {}
    for line, (name, source) in r.rows(rel, ("name", "source")):
        key = name.lower() if fold else name
        if not valid.fullmatch(key):
            r.issue(rel, line, f"{name!r} is not a valid {what}")
        elif r.first(seen, key, rel, line, what):
            out[key] = IocEntry(key, source, "", rel, line)
    return out


def _read_patterns(r: _Reader, rel: str) -> tuple[Pattern, ...]:
    out, seen = [], {}
    for line, (name, weight, text, source) in r.rows(rel, ("name", "weight", "regex", "source")):
        problems = len(r.issues)
        if not _IDENT.fullmatch(name):
            r.issue(rel, line, f"name {name!r} must be a lower-case identifier")
        if not _NUMBER.fullmatch(weight) or not 1 <= int(weight) <= 100:
            r.issue(rel, line, f"weight must be an integer from 1 to 100, not {weight!r}")
        try:
            regex = re.compile(text)
        except re.error as exc:
            r.issue(rel, line, f"regex does not compile: {exc}")
        else:
            if regex.search("") is not None:
                r.issue(rel, line, "regex matches the empty string, so it would match every input")
        if len(r.issues) == problems and r.first(seen, name, rel, line, "pattern name"):
            out.append(Pattern(name, regex, int(weight), source, rel, line))
    return tuple(out)


def _read_images(r: _Reader) -> tuple[dict[str, IocEntry], ...]:
    rel, seen = "images.txt", {}
    kinds: dict[str, tuple[re.Pattern[str], dict[str, IocEntry]]] = {
        "official": (_REPO_NAME, {}), "namespace": (_REPO_NAME, {}), "image": (_IMAGE_REF, {})}
    for line, (kind, value, source) in r.rows(rel, ("kind", "value", "source")):
        if kind not in kinds:
            r.issue(rel, line, f"unknown kind {kind!r} (official, namespace, image)")
            continue
        valid, out = kinds[kind]
        if not valid.fullmatch(value):
            r.issue(rel, line, f"{value!r} is not a valid lower-case {kind} name")
        elif r.first(seen, (kind, value), rel, line, "entry"):
            out[value] = IocEntry(value, source, kind, rel, line)
    return tuple(out for _, out in kinds.values())


# --- YARA -----------------------------------------------------------------------------


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


def _compile(r: _Reader, files: dict[str, str]) -> Any:
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


def _rule_meta(r: _Reader, rules: Any, where: dict[str, list[tuple[str, int]]]) -> dict[str, dict]:
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


def _read_yara(r: _Reader, meta: _Meta | None) -> tuple[Any, dict[str, dict]]:
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
    return (rules, _rule_meta(r, rules, where)) if rules is not None else (None, {})


def _imports_allowed(r: _Reader, rel: str, text: str) -> bool:
    """Only the YARA modules in YARA_MODULES may be imported."""
    ok = True
    for match in _YARA_IMPORT.finditer(text):
        if match.group(1) not in YARA_MODULES:
            ok = False
            r.issue(rel, text.count("\n", 0, match.start()) + 1,
                    f"import {match.group(1)!r} is not allowed ({', '.join(sorted(YARA_MODULES))})")
    return ok


# --- public API -----------------------------------------------------------------------


def check_bundle(directory: str | Path | None = None) -> tuple[Signatures | None, list[SignatureIssue]]:
    """Validate a bundle without raising: what could be loaded, and every issue found.

    The Signatures hold the good entries even when there are issues; they are None only
    when the bundle has no readable bundle.toml with a version.
    """
    root = Path(directory) if directory is not None else bundled_directory()
    r = _Reader(root)
    if not root.is_dir():
        r.issue(str(root), 0, "signature bundle directory does not exist")
        return None, r.issues
    _verify_manifest(r)
    meta = _read_meta(r)
    domains, disabled_domains = _read_domains(r)
    ports, disabled_ports = _read_ports(r)
    official, namespaces, images = _read_images(r)
    rules, yara_meta = _read_yara(r, meta)
    sig = Signatures(
        version=meta.version if meta else "",
        directory=str(root),
        hashes=_read_hashes(r),
        pool_domains=domains,
        pool_ports=ports,
        miner_names=_read_names(r, "miner_names.txt", _FILE_NAME, True, "executable name"),
        cmdline_patterns=_read_patterns(r, "cmdline_patterns.txt"),
        wallet_patterns=_read_patterns(r, "wallet_patterns.txt"),
        env_vars=_read_names(r, "env_vars.txt", _ENV_NAME, False, "upper-case variable name"),
        official_images=official,
        bad_namespaces=namespaces,
        bad_images=images,
        launchers=_read_names(r, "launchers.txt", _FILE_NAME, True, "script base name"),
        yara=rules,
        yara_rule_count=len(yara_meta),
        description=meta.description if meta else "",
        disabled_pool_domains=disabled_domains,
        disabled_pool_ports=disabled_ports,
        yara_meta=yara_meta,
        yara_disabled=dict(meta.yara_disabled) if meta else {},
    )
    issues = sorted(r.issues, key=lambda i: (i.file, i.line))
    return (sig if meta else None), issues


def load_bundle(directory: str | Path | None = None) -> Signatures:
    """Load and validate a bundle (None: the bundled one); SignatureError lists every issue."""
    sig, issues = check_bundle(directory)
    if sig is None or issues:
        where = str(directory) if directory is not None else str(bundled_directory())
        raise SignatureError(where, issues)
    return sig


def describe(sig: Signatures) -> dict[str, Any]:
    """What a bundle holds, as plain data for `minerwatch signatures check` and `version`."""
    return {
        "version": sig.version,
        "directory": sig.directory,
        "description": sig.description,
        "hashes": len(sig.hashes),
        "pool_domains": len(sig.pool_domains),
        "pool_domains_disabled": len(sig.disabled_pool_domains),
        "pool_ports": len(sig.pool_ports),
        "pool_ports_disabled": len(sig.disabled_pool_ports),
        "miner_names": len(sig.miner_names),
        "cmdline_patterns": len(sig.cmdline_patterns),
        "wallet_patterns": len(sig.wallet_patterns),
        "env_vars": len(sig.env_vars),
        "official_images": len(sig.official_images),
        "bad_namespaces": len(sig.bad_namespaces),
        "bad_images": len(sig.bad_images),
        "launchers": len(sig.launchers),
        "yara_rules": sig.yara_rule_count,
        "yara_files_disabled": dict(sig.yara_disabled),
    }
