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
    compile_signature_regex(text) -> RE2 regex      # ValueError when RE2 cannot compile it
    clip_middle(text), match_text(parts), clip_items(items)   # caps on what a matcher is given

The implementation is split by file kind: signature_reader (line reading, issues),
signature_lists (IOC lists), signature_patterns (RE2 regexes and text caps), signature_yara
(YARA rules), signature_bundle (layout, bundle.toml, MANIFEST.sha256); this module ties them
together and is the one to import.

YARA matches carry ``.rule``, ``.namespace`` (the file name without .yar) and ``.meta``
with ``weight`` (1-100), ``category`` (miner | miner-suspect | packer), ``tier`` and
``scope`` (file | memory | any); every active rule is guaranteed to have them.

The file formats are documented in signatures/README.md. The regexes are compiled with RE2
(linear-time matching; a pattern RE2 cannot compile is a bad entry) and detectors hand them
text capped with ``match_text``/``clip_middle``/``clip_items``. Loading reads and validates
data only: YARA is compiled with includes disabled, a short list of allowed modules and
one boolean external, ``mw_memory_scan`` (false unless a memory scan sets it); nothing from
the bundle is executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import SignatureError, SignatureIssue
from agent.signature_bundle import (
    MANIFEST,
    META_FILE,
    RESOURCE_PACKAGE,
    YARA_DIR,
    BundleMeta,
    bundle_files,
    bundled_directory,
    read_meta,
    verify_manifest,
)
from agent.signature_lists import (
    ENV_NAME,
    FILE_NAME,
    IocEntry,
    read_domains,
    read_hashes,
    read_images,
    read_names,
    read_ports,
)
from agent.signature_patterns import (
    MAX_MATCH_ITEMS,
    MAX_MATCH_PART,
    MAX_MATCH_TEXT,
    Pattern,
    PatternSet,
    clip_items,
    clip_middle,
    compile_signature_regex,
    match_text,
    read_patterns,
)
from agent.signature_reader import Reader
from agent.signature_yara import (
    YARA_CATEGORIES,
    YARA_MEMORY_EXTERNAL,
    YARA_MODULES,
    YARA_SCOPES,
    YARA_TIERS,
    read_yara,
)

__all__ = [
    "MANIFEST", "MAX_MATCH_ITEMS", "MAX_MATCH_PART", "MAX_MATCH_TEXT", "META_FILE", "RESOURCE_PACKAGE",
    "YARA_CATEGORIES", "YARA_DIR", "YARA_MEMORY_EXTERNAL", "YARA_MODULES", "YARA_SCOPES", "YARA_TIERS",
    "BundleMeta", "IocEntry", "Pattern", "PatternSet", "SignatureError", "SignatureIssue", "Signatures",
    "bundle_files", "bundled_directory", "check_bundle", "clip_items", "clip_middle",
    "compile_signature_regex", "describe", "load_bundle", "match_text",
]

_IDENT = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Signatures:
    version: str
    directory: str
    hashes: dict[str, IocEntry] = field(default_factory=dict)
    pool_domains: tuple[IocEntry, ...] = ()
    pool_ports: dict[int, IocEntry] = field(default_factory=dict)
    miner_names: dict[str, IocEntry] = field(default_factory=dict)
    cmdline_patterns: PatternSet = field(default_factory=PatternSet)
    wallet_patterns: PatternSet = field(default_factory=PatternSet)
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

    def __post_init__(self) -> None:
        # Patterns given as a plain sequence (tests, hand-built bundles) get their RE2 set too.
        for name in ("cmdline_patterns", "wallet_patterns"):
            value = getattr(self, name)
            if not isinstance(value, PatternSet):
                object.__setattr__(self, name, PatternSet(value))

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


# --- public API -----------------------------------------------------------------------


def check_bundle(directory: str | Path | None = None) -> tuple[Signatures | None, list[SignatureIssue]]:
    """Validate a bundle without raising: what could be loaded, and every issue found.

    The Signatures hold the good entries even when there are issues; they are None only
    when the bundle has no readable bundle.toml with a version.
    """
    root = Path(directory) if directory is not None else bundled_directory()
    r = Reader(root)
    if not root.is_dir():
        r.issue(str(root), 0, "signature bundle directory does not exist")
        return None, r.issues
    verify_manifest(r)
    meta = read_meta(r)
    domains, disabled_domains = read_domains(r)
    ports, disabled_ports = read_ports(r)
    official, namespaces, images = read_images(r)
    rules, yara_meta = read_yara(r, meta)
    sig = Signatures(
        version=meta.version if meta else "",
        directory=str(root),
        hashes=read_hashes(r),
        pool_domains=domains,
        pool_ports=ports,
        miner_names=read_names(r, "miner_names.txt", FILE_NAME, True, "executable name"),
        cmdline_patterns=read_patterns(r, "cmdline_patterns.txt", _IDENT),
        wallet_patterns=read_patterns(r, "wallet_patterns.txt", _IDENT),
        env_vars=read_names(r, "env_vars.txt", ENV_NAME, False, "upper-case variable name"),
        official_images=official,
        bad_namespaces=namespaces,
        bad_images=images,
        launchers=read_names(r, "launchers.txt", FILE_NAME, True, "script base name"),
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
