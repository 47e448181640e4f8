"""Scoring rules: floors, ceilings, thresholds, stable ids and crash barriers."""

from __future__ import annotations

from agent import engine
from agent.detectors.base import Context
from agent.engine import Engine, severity_of
from agent.model import Connection, ContainerInfo, Evidence, Hashes, MinerConfig, ProcessSnapshot, Severity

from tests.sigfixtures import MD5, SIGS, WALLET


def ev(weight: int, signal: str = "cmdline", **kw) -> Evidence:
    return Evidence(signal, "d", weight, **kw)


def test_no_evidence_is_no_severity():
    """No evidence scores nothing."""
    assert severity_of([]) == (Severity.NONE, 0)


def test_thresholds_map_scores_to_levels():
    """Summed weights map to low, medium, high and critical."""
    assert severity_of([ev(10)])[0] is Severity.LOW
    assert severity_of([ev(30)])[0] is Severity.MEDIUM
    assert severity_of([ev(30), ev(25)])[0] is Severity.HIGH
    assert severity_of([ev(50), ev(50), ev(50)]) == (Severity.CRITICAL, 100)


def test_weak_evidence_alone_never_exceeds_low():
    """Heavy CPU, odd locations and bare ports together are still only low."""
    weak = [ev(60, "behaviour", strong=False), ev(20, "network", strong=False), ev(15, "location", strong=False)]
    assert severity_of(weak)[0] is Severity.LOW
    assert severity_of([*weak, ev(30)])[0] is Severity.CRITICAL


def test_floor_lifts_a_known_hash_to_critical():
    """A known-bad hash is critical whatever its weight."""
    assert severity_of([ev(1, "hash", floor=Severity.CRITICAL)])[0] is Severity.CRITICAL


def test_image_evidence_alone_stays_below_critical():
    """Image evidence on its own is capped at high."""
    assert severity_of([ev(45, "image"), ev(35, "image"), ev(20, "image")])[0] is Severity.HIGH


def test_finding_id_is_stable_and_distinct():
    """The same subject gives the same id; another subject another id."""
    assert engine.finding_id("a", "b") == engine.finding_id("a", "b")
    assert engine.finding_id("a", "b") != engine.finding_id("a", "c")


def test_stratum_miner_with_wallet_and_pool_connection_is_high_or_more():
    """The classic xmrig command line plus its pool connection is at least high."""
    proc = ProcessSnapshot(
        pid=42, exe="/usr/local/bin/xmrig", name="xmrig",
        cmdline=("xmrig", "-o", "stratum+tcp://127.0.0.1:3333", "-u", WALLET, "--donate-level=1"),
        connections=(Connection("127.0.0.1", 50000, "127.0.0.1", 3333, "ESTABLISHED"),),
        hashes=Hashes("a" * 64, "b" * 40, "c" * 32, 10),
    )
    f = Engine().evaluate_process(proc, Context(SIGS))
    assert f is not None and f.severity >= Severity.HIGH
    assert {e.signal for e in f.evidence} >= {"cmdline", "network", "name"}


def test_config_file_miner_connected_to_its_pool_is_medium_or_more():
    """No flags, only a config.json with pools, plus the matching connection: at least medium."""
    proc = ProcessSnapshot(
        pid=7, exe="/opt/app/worker", name="worker", cmdline=("./worker",),
        miner_config=MinerConfig("/opt/app/config.json", pools=("127.0.0.1:443",), users=(WALLET,)),
        connections=(Connection("127.0.0.1", 40000, "127.0.0.1", 443, "ESTABLISHED"),),
    )
    f = Engine().evaluate_process(proc, Context(SIGS))
    assert f is not None and f.severity >= Severity.MEDIUM
    assert any(e.destination and e.destination[1] == 443 for e in f.evidence)


def test_known_hash_is_critical():
    """An executable whose MD5 is in the bundle is critical."""
    proc = ProcessSnapshot(pid=9, exe="/tmp/x", hashes=Hashes("a" * 64, "b" * 40, MD5, 10))
    f = Engine().evaluate_process(proc, Context(SIGS))
    assert f is not None and f.severity is Severity.CRITICAL and f.rule_name == "Known cryptominer hash"


def test_clean_process_has_no_finding():
    """An ordinary process produces no finding at all."""
    proc = ProcessSnapshot(pid=1, exe="/usr/bin/python3", name="python3", cmdline=("python3", "-o", "out.txt"))
    assert Engine().evaluate_process(proc, Context(SIGS)) is None


def test_image_evidence_joins_only_when_the_process_has_its_own():
    """A lookalike image does not turn every process in it into a finding."""
    eng = Engine()
    image_ev = [ev(45, "image")]
    quiet = ProcessSnapshot(pid=3, exe="/bin/sh", name="sh", cmdline=("sh",), container_id="c" * 64)
    assert eng.evaluate_process(quiet, Context(SIGS), extra=image_ev) is None
    loud = ProcessSnapshot(pid=4, exe="/bin/xmrig", name="xmrig", cmdline=("xmrig",), container_id="c" * 64)
    f = eng.evaluate_process(loud, Context(SIGS), extra=image_ev)
    assert f is not None and any(e.signal == "image" for e in f.evidence)


def test_a_crashing_detector_is_counted_and_the_others_still_run(monkeypatch):
    """One detector raising does not hide the evidence of the rest."""
    from agent import detectors
    from agent.detectors import location

    class Boom:
        ID, VERSION, TITLE = "boom", 1, "Boom"

        @staticmethod
        def detect(subject, ctx):
            raise RuntimeError("bug")

    monkeypatch.setattr(detectors, "PROCESS_DETECTORS", (Boom, location))
    eng = Engine()
    proc = ProcessSnapshot(pid=5, exe="/bin/x", name="kworker/0:1", cmdline=("kworker/0:1",))
    f = eng.evaluate_process(proc, Context(SIGS))
    assert f is not None and f.evidence[0].signal == "masquerade"
    assert eng.errors["boom"] == 1


def test_container_with_bad_namespace_and_launcher():
    """thanhtudo/openjdk with a dao.py entrypoint is a finding, below critical on image evidence alone."""
    c = ContainerInfo(id="d" * 64, name="x", image="thanhtudo/openjdk:latest", entrypoint=("python3", "/dao.py"))
    f = Engine().evaluate_container(c, Context(SIGS, container=c))
    assert f is not None and Severity.MEDIUM <= f.severity <= Severity.HIGH
    details = " ".join(e.detail for e in f.evidence)
    assert "thanhtudo" in details and "dao.py" in details and "openjdk" in details


def test_official_image_has_no_image_evidence():
    """openjdk:17 from the official namespace carries no image evidence."""
    c = ContainerInfo(id="e" * 64, name="ok", image="openjdk:17", entrypoint=("java", "-jar", "app.jar"))
    assert Engine().container_evidence(c, Context(SIGS, container=c)) == []
