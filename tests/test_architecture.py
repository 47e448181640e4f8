"""The house rules of agent/, read from the code itself: who may import whom, where evidence is made, module size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parent.parent / "agent"
MAX_LINES = 350
REASON_MARK = "Why this module is long:"

# A module in the first part must never import one in the second (a package, or one module).
FORBIDDEN = [
    ("agent.detectors", "agent.collectors"),
    ("agent.detectors", "agent.sinks"),
    ("agent.detectors", "agent.daemon"),
    ("agent.detectors", "agent.response"),
    ("agent.detectors", "agent.images"),
    ("agent.detectors", "agent.cli"),
    ("agent.collectors", "agent.engine"),
    ("agent.collectors", "agent.judge"),
    ("agent.collectors", "agent.detectors"),
    ("agent.collectors", "agent.daemon"),
    ("agent.collectors", "agent.sinks"),
    ("agent.judge", "agent.collectors"),
    ("agent.engine", "agent.collectors"),
    ("agent.model", "agent"),  # plain data imports nothing of ours
    ("agent.sinks", "agent.daemon"),
    ("agent.response", "agent.daemon"),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in AGENT.rglob("*.py"):
        rel = path.relative_to(AGENT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Every ``agent...`` module a file imports, at any depth (function-local imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "agent" or m.startswith("agent.")}


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_import_rules_hold():
    """Detectors import no collector, sink, responder or daemon; collectors never import the engine or detectors."""
    mods = modules()
    broken = []
    for name, path in sorted(mods.items()):
        imported = imports_of(name, path)
        for importer, target in FORBIDDEN:
            if not under(name, importer):
                continue
            for m in imported:
                if target == "agent" and importer == "agent.model":
                    bad = m != "agent" and m in mods and not under(m, "agent.model")
                else:
                    bad = under(m, target) and not under(m, importer)
                if bad:
                    broken.append(f"{name} imports {m} ({importer} must not import {target})")
    assert broken == []


def test_the_rules_catch_a_forbidden_import(tmp_path):
    """The checker itself sees a detector importing a collector (it cannot pass vacuously)."""
    bad = tmp_path / "agent" / "detectors" / "rogue.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from agent.collectors import procfs\n\ndef f():\n    from agent.daemon import worker\n")
    assert imports_of("agent.detectors.rogue", bad) >= {"agent.collectors.procfs", "agent.daemon.worker"}


def test_evidence_is_made_only_by_detectors():
    """Every ``Evidence(...)`` is built under agent/detectors/ (behind the engine's crash barrier)."""
    makers = []
    for name, path in modules().items():
        if under(name, "agent.detectors") or name == "agent.model":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                if called == "Evidence":
                    makers.append(f"{name}:{node.lineno}")
    assert makers == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_long_without_a_reason(name):
    """Modules stay under ~350 lines unless their docstring says why they are long."""
    path = modules()[name]
    lines = path.read_text().count("\n")
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert REASON_MARK in doc, f"{path} has {lines} lines and no '{REASON_MARK}' in its docstring"


def test_every_registered_detector_has_the_protocol():
    """Each registered detector has an id, a version, a title and a detect function."""
    from agent import detectors

    for det in detectors.ALL:
        assert isinstance(det.ID, str) and det.ID and isinstance(det.VERSION, int) and det.TITLE
        assert callable(det.detect)
    assert len({d.ID for d in detectors.ALL}) == len(detectors.ALL)
