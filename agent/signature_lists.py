"""The IOC lists of a signature bundle: hashes, pool domains and ports, names, images.

Part of agent.signatures (import from there). Each reader validates every line of its file
and reports a bad entry with its file and line instead of raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.signature_reader import NUMBER, Reader


@dataclass(frozen=True, slots=True)
class IocEntry:
    """One indicator with where it came from."""

    value: str
    source: str
    name: str = ""
    file: str = ""
    line: int = 0


HEX = re.compile(r"[0-9a-f]+")
DOMAIN = re.compile(r"(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")
FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\*?")
_REPO = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_NAME = re.compile(_REPO)
IMAGE_REF = re.compile(rf"(?:[a-z0-9.-]+(?::[0-9]+)?/)?{_REPO}(?:/{_REPO})*|sha256:[0-9a-f]{{64}}")


def read_hashes(r: Reader) -> dict[str, IocEntry]:
    rel, out, seen = "hashes.txt", {}, {}
    for line, (digest, name, source) in r.rows(rel, ("digest", "name", "source")):
        digest = digest.lower()
        if len(digest) not in (32, 40, 64) or not HEX.fullmatch(digest):
            r.issue(rel, line, f"digest must be 32, 40 or 64 hex digits (MD5, SHA-1, SHA-256): {digest!r}")
        elif r.first(seen, digest, rel, line, "digest"):
            out[digest] = IocEntry(digest, source, name, rel, line)
    return out


def read_domains(r: Reader) -> tuple[tuple[IocEntry, ...], tuple[IocEntry, ...]]:
    rel, seen = "pool_domains.txt", {}
    enabled: dict[str, IocEntry] = {}
    disabled: list[IocEntry] = []
    for line, (suffix, status, source) in r.rows(rel, ("suffix", "status", "source")):
        suffix = suffix.lower().rstrip(".")
        on = r.status(rel, line, status, source)
        if not DOMAIN.fullmatch(suffix):
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


def read_ports(r: Reader) -> tuple[dict[int, IocEntry], dict[int, IocEntry]]:
    rel, seen = "pool_ports.txt", {}
    enabled: dict[int, IocEntry] = {}
    disabled: dict[int, IocEntry] = {}
    for line, (text, status, source) in r.rows(rel, ("port", "status", "source")):
        on = r.status(rel, line, status, source)
        if not NUMBER.fullmatch(text) or not 1 <= int(text) <= 65535:
            r.issue(rel, line, f"port must be a number from 1 to 65535, not {text!r}")
        elif on is not None and r.first(seen, int(text), rel, line, "port"):
            (enabled if on else disabled)[int(text)] = IocEntry(text, source, "", rel, line)
    return enabled, disabled


def read_names(r: Reader, rel: str, valid: re.Pattern[str], fold: bool, what: str) -> dict[str, IocEntry]:
    """A ``name | source`` list; ``fold`` lower-cases names, otherwise they must match as written."""
    out, seen = {}, {}
    for line, (name, source) in r.rows(rel, ("name", "source")):
        key = name.lower() if fold else name
        if not valid.fullmatch(key):
            r.issue(rel, line, f"{name!r} is not a valid {what}")
        elif r.first(seen, key, rel, line, what):
            out[key] = IocEntry(key, source, "", rel, line)
    return out


def read_images(r: Reader) -> tuple[dict[str, IocEntry], ...]:
    rel, seen = "images.txt", {}
    kinds: dict[str, tuple[re.Pattern[str], dict[str, IocEntry]]] = {
        "official": (REPO_NAME, {}), "namespace": (REPO_NAME, {}), "image": (IMAGE_REF, {})}
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
