"""Dedupe: one alert per finding per window, a new one when it gets worse, state kept across restarts."""
from __future__ import annotations

import json

from agent.model import Severity
from agent.sinks.dedupe import Dedupe
from tests.alerts_schema import validate
from tests.helpers.alert_factory import PipelineSet, make_alert, make_config


class Clock:
    """An injected wall clock that tests move by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_same_miner_for_an_hour_gives_one_alert_and_rising_severity_a_second(tmp_path):
    """A miner seen every 5 s for an hour is one alert in the file; its severity rising adds exactly one more."""
    clock = Clock()
    path = tmp_path / "alerts.jsonl"
    with PipelineSet() as pipes:
        p = pipes.make(make_config(tmp_path, file=str(path)), clock=clock)
        accepted = 0
        for _ in range(0, 3600, 5):
            accepted += p.submit(make_alert(7, severity=Severity.MEDIUM))
            clock.now += 5
        assert accepted == 1
        assert p.submit(make_alert(7, severity=Severity.CRITICAL)) is True
        assert p.submit(make_alert(7, severity=Severity.CRITICAL)) is False
        assert p.submit(make_alert(7, severity=Severity.HIGH)) is False, "falling severity is no news"
        assert p.flush(10)
        stats = p.stats()
    lines = [validate(json.loads(line)) for line in path.read_bytes().splitlines()]
    assert [a["minerwatch"]["severity"] for a in lines] == ["medium", "critical"]
    assert stats["suppressed"] == 720 - 1 + 2 and stats["submitted"] == 2


def test_changed_response_is_a_new_alert():
    """The same finding paused after first being only reported is worth a second alert."""
    d = Dedupe(None, 3600, clock=Clock())
    first = make_alert(1, severity=Severity.CRITICAL, action="pause", result="failed")
    assert d.check(first)
    d.record(first)
    assert not d.check(make_alert(1, severity=Severity.CRITICAL, action="pause", result="failed"))
    paused = make_alert(1, severity=Severity.CRITICAL, action="pause", result="done")
    assert d.check(paused)


def test_window_runs_from_the_last_alert_sent():
    """After dedupe_minutes the same finding is reported again, once, as a reminder."""
    clock = Clock()
    d = Dedupe(None, 60 * 60, clock=clock)
    sent = 0
    for _ in range(0, 2 * 3600 + 1, 60):
        a = make_alert(2)
        if d.check(a):
            d.record(a)
            sent += 1
        clock.now += 60
    assert sent == 3  # t = 0, 60 min, 120 min


def test_dedupe_state_survives_a_restart(tmp_path):
    """A restarted pipeline on the same state dir still suppresses the repeat."""
    clock = Clock()
    cfg = make_config(tmp_path, stdout=True)
    with PipelineSet() as pipes:
        assert pipes.make(cfg, clock=clock, start=False).submit(make_alert(3))
    clock.now += 600
    with PipelineSet() as pipes:
        p = pipes.make(cfg, clock=clock, start=False)
        assert p.submit(make_alert(3)) is False
        assert p.submit(make_alert(3, severity=Severity.CRITICAL)) is True


def test_test_alerts_are_never_suppressed_nor_remembered():
    """`alerts test` alerts always go out and leave no dedupe state."""
    d = Dedupe(None, 3600, clock=Clock())
    for _ in range(3):
        assert d.check(make_alert(4, test=True))
        d.record(make_alert(4, test=True))
    assert len(d) == 0


def test_dedupe_memory_and_file_stay_bounded(tmp_path):
    """Many distinct findings keep at most max_entries in memory, and the file is compacted."""
    clock = Clock()
    path = tmp_path / "dedupe.jsonl"
    d = Dedupe(path, 3600, clock=clock, max_entries=100)
    template = make_alert(0)
    for i in range(5000):
        a = {**template, "minerwatch": {**template["minerwatch"], "finding_id": f"{i + 1:032x}"}}  # still schema-valid
        assert d.check(a)
        d.record(a)
        clock.now += 0.01
    assert len(d) == 100
    d.close()
    assert len(path.read_bytes().splitlines()) <= 2 * 1000 + 1
    again = Dedupe(path, 3600, clock=clock, max_entries=100)
    last = {**template, "minerwatch": {**template["minerwatch"], "finding_id": f"{5000:032x}"}}
    first = {**template, "minerwatch": {**template["minerwatch"], "finding_id": f"{1:032x}"}}
    assert not again.check(last) and again.check(first)


def test_damaged_dedupe_file_is_survived(tmp_path):
    """A torn or garbage dedupe file is logged and skipped line by line, never fatal."""
    path = tmp_path / "dedupe.jsonl"
    clock = Clock()
    d = Dedupe(path, 3600, clock=clock)
    a = make_alert(9)
    d.record(a)
    d.close()
    with open(path, "a") as f:
        f.write('["abc", 1, \n\x00garbage\n')
    again = Dedupe(path, 3600, clock=clock)
    assert not again.check(a)


def test_an_incident_that_grows_is_alerted_again():
    """The same incident at the same severity is alerted again when it gains a new subject (the file now
    runs as a process, another process), a new signal kind or a new peer; a plain repeat is not."""
    clock = Clock()
    d = Dedupe(None, 3600, clock=clock)
    base = make_alert(1)
    fid = base["minerwatch"]["finding_id"]
    mw = base["minerwatch"]
    as_file = {k: v for k, v in base.items() if k != "process"}
    as_file["file"] = {"path": "/tmp/kworkerds", "size": 10}
    steps = [
        (as_file, True),
        (as_file, False),  # a plain repeat
        ({**base, "file": as_file["file"]}, True),  # the file now runs: a process
        ({**base, "file": as_file["file"]}, False),
        ({**base, "file": as_file["file"], "process": {**base["process"], "pid": 4242}}, True),  # another process
        ({**base, "file": as_file["file"], "minerwatch": {**mw, "evidence": [*mw["evidence"],
          {"signal": "yara", "detail": "MW_XMRig_Memory in its memory", "weight": 90}]}}, True),  # a new signal kind
        ({**base, "file": as_file["file"], "destination": {"ip": "127.0.0.9", "port": 443}}, True),  # a peer
    ]
    for n, (alert, expected) in enumerate(steps):
        assert alert["minerwatch"]["finding_id"] == fid
        assert d.check(alert) is expected, n
        if expected:
            d.record(alert)



def test_a_file_with_new_content_is_alerted_again_up_to_a_bound():
    """A file inspected while it was written and again once closed has another sha256: alerted again, so
    the SOC gets the final hash; the same content again is a repeat; past MAX_PROCESS_FACETS contents of one
    incident, another is no news (a file rewritten in a loop does not flood the alerts)."""
    from agent.sinks.dedupe import MAX_PROCESS_FACETS

    d = Dedupe(None, 3600, clock=Clock())
    base = {k: v for k, v in make_alert(1).items() if k != "process"}

    def with_hash(n: int) -> dict:
        return {**base, "file": {"path": "/tmp/x", "size": 10, "hash": {"sha256": f"{n:064x}"}}}

    assert d.check(with_hash(0)) is True
    d.record(with_hash(0))
    assert d.check(with_hash(0)) is False
    for n in range(1, MAX_PROCESS_FACETS):
        assert d.check(with_hash(n)) is True, n
        d.record(with_hash(n))
    assert d.check(with_hash(MAX_PROCESS_FACETS)) is False
