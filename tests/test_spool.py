"""The durable alert spool: order, per-reader positions, restarts, torn writes, bounds and drops."""
from __future__ import annotations

import json
import stat
import time

import structlog.testing

from agent.sinks.spool import Spool
from tests.helpers.alert_factory import PipelineSet, make_alert, make_config
from tests.helpers.receivers import WebhookReceiver


def take(spool: Spool, name: str, n: int | None = None) -> list[bytes]:
    out = []
    while n is None or len(out) < n:
        entry = spool.next(name)
        if entry is None:
            break
        out.append(entry.line)
        spool.commit(name, entry)
    return out


def test_each_reader_gets_every_record_in_order_from_its_own_position(tmp_path):
    """Two readers read the same records in order, independently of each other."""
    spool = Spool(tmp_path, ["a", "b"], segment_bytes=64, max_bytes=1 << 20, fsync=False)
    for i in range(20):
        spool.append(b"record-%02d" % i)
    assert take(spool, "a", 5) == [b"record-%02d" % i for i in range(5)]
    assert take(spool, "b") == [b"record-%02d" % i for i in range(20)]
    assert take(spool, "a") == [b"record-%02d" % i for i in range(5, 20)]
    assert spool.idle()


def test_uncommitted_record_is_given_again_and_positions_survive_a_restart(tmp_path):
    """A record handed out but not committed comes back, also after a restart, marked as a possible repeat."""
    spool = Spool(tmp_path, ["a"], segment_bytes=64, max_bytes=1 << 20)
    for i in range(5):
        spool.append(b"r%d" % i)
    assert take(spool, "a", 2) == [b"r0", b"r1"]
    entry = spool.next("a")
    assert entry.line == b"r2" and spool.next("a") == entry and not entry.maybe_repeat
    spool.close()  # "crash": r2 was in flight
    again = Spool(tmp_path, ["a"], segment_bytes=64, max_bytes=1 << 20)
    first = again.next("a")
    assert first.line == b"r2" and first.maybe_repeat
    again.commit("a", first)
    assert take(again, "a") == [b"r3", b"r4"]
    assert not again.next("a")


def test_new_reader_starts_at_the_end(tmp_path):
    """A sink added later gets new alerts, not the backlog of the others."""
    Spool(tmp_path, ["a"], fsync=False).append(b"old")
    spool = Spool(tmp_path, ["a", "late"], fsync=False)
    spool.append(b"new")
    assert take(spool, "late") == [b"new"]
    assert take(spool, "a") == [b"old", b"new"]


def test_torn_last_write_is_cut_on_restart(tmp_path):
    """A half-written last line (crash mid-write, never acknowledged) is removed; complete records stay."""
    spool = Spool(tmp_path, ["a"], fsync=False)
    spool.append(b"complete")
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(b'{"half":')
    again = Spool(tmp_path, ["a"], fsync=False)
    assert take(again, "a") == [b"complete"]
    again.append(b"after")
    assert take(again, "a") == [b"after"]
    assert segment.read_bytes() == b"complete\nafter\n"


def test_unreadable_position_replays_from_the_oldest_record(tmp_path):
    """A damaged position file means repeats (at-least-once), never a silent skip."""
    spool = Spool(tmp_path, ["a"], fsync=False)
    for i in range(3):
        spool.append(b"r%d" % i)
    take(spool, "a")
    spool.close()
    (tmp_path / "a.pos").write_text("{not json")
    again = Spool(tmp_path, ["a"], fsync=False)
    entry = again.next("a")
    assert entry.line == b"r0" and entry.maybe_repeat


def test_consumed_segments_are_deleted_and_files_are_private(tmp_path):
    """Segments every reader has passed are removed; the spool directory is 0700 and its files 0600."""
    spool = Spool(tmp_path / "spool", ["a"], segment_bytes=100, max_bytes=1 << 20, fsync=False)
    for i in range(50):
        spool.append(b"x" * 40)
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) > 10
    take(spool, "a")
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) <= 2
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    for p in (tmp_path / "spool").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_full_spool_drops_the_oldest_and_counts_per_reader(tmp_path):
    """Over max_bytes the oldest segments go; each reader's loss and the total are counted."""
    spool = Spool(tmp_path, ["slow", "fast"], segment_bytes=100, max_bytes=400, fsync=False)
    for i in range(100):
        spool.append(b"%04d" % i + b"." * 15)  # 20 bytes a line: 5 per segment
        take(spool, "fast")
    assert spool.size_bytes <= 400 + 100
    kept = take(spool, "slow")
    assert kept[-1].startswith(b"0099")
    assert spool.reader_dropped("slow") == 100 - len(kept) == spool.dropped
    assert spool.reader_dropped("fast") == 0
    assert [int(k[:4]) for k in kept] == list(range(100 - len(kept), 100)), "the oldest went first"


def test_full_spool_in_the_pipeline_drops_oldest_reports_and_delivers_the_rest(tmp_path):
    """With the webhook down and the spool full, the oldest alerts go, the drop is logged and in stats, the rest arrive."""
    hook = WebhookReceiver().start()
    hook.stop()
    cfg = make_config(tmp_path, webhook=hook.url)
    alerts = [make_alert(i) for i in range(120)]
    try:
        with PipelineSet() as pipes, structlog.testing.capture_logs() as logs:
            p = pipes.make(cfg, spool_max_bytes=24 << 10, spool_segment_bytes=4 << 10)
            for a in alerts:
                assert p.submit(a)
            stats = p.stats()
            assert stats["dropped"] > 0 and stats["sinks"]["webhook"]["dropped"] == stats["dropped"]
            assert stats["spool_bytes"] <= (24 + 4 + 2) << 10
            hook.start()
            assert p.flush(30)
            stats = p.stats()
        dropped = stats["dropped"]
        ids = hook.event_ids()
        assert len(set(ids)) + dropped == len(alerts)
        assert alerts[-1]["event"]["id"] in ids, "the newest survive"
        lost = [a["event"]["id"] not in ids for a in alerts]
        assert lost[1:dropped + 1] == [True] * dropped, "the oldest went (the first one was in flight and kept)"
        full = [e for e in logs if e["event"] == "alert_spool_full"]
        assert full and sum(e["dropped"] for e in full) == dropped
    finally:
        hook.close()
    print(f"full spool: {dropped} of {len(alerts)} dropped, {stats['sinks']['webhook']}")


def test_second_pipeline_on_the_same_state_dir_is_refused(tmp_path):
    """Two agents must not share one spool: the second gets a clear SpoolError."""
    from agent.sinks.pipeline import SpoolError

    cfg = make_config(tmp_path, stdout=True)
    with PipelineSet() as pipes:
        pipes.make(cfg, start=False)
        try:
            pipes.make(cfg, start=False)
        except SpoolError as exc:
            assert "in use" in str(exc)
        else:
            raise AssertionError("a second pipeline was allowed on the same state dir")


def test_submit_returns_quickly_with_fsync(tmp_path):
    """submit() returns within milliseconds even with a sink down (it only spools)."""
    cfg = make_config(tmp_path, webhook="http://127.0.0.1:9/alerts")
    with PipelineSet() as pipes:
        p = pipes.make(cfg)
        times = []
        for i in range(50):
            start = time.perf_counter()
            p.submit(make_alert(i))
            times.append(time.perf_counter() - start)
    times.sort()
    print(f"submit latency with fsync: median {times[25] * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms")
    assert times[25] < 0.25


FULL_DISK_AGENT = """
import json, resource, signal, sys
from agent.config import load
from agent.sinks.pipeline import AlertPipeline, SpoolError
from agent import logging_setup
logging_setup.configure(stream=sys.stderr)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
alerts = [json.loads(line) for line in open(sys.argv[2])]
p = AlertPipeline(load(sys.argv[1]), backoff_base=0.02, backoff_max=0.1)
p.start()
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
results = []
for a in alerts:
    try:
        results.append(p.submit(a))
    except SpoolError as exc:
        results.append(str(exc))
p.flush(10)
p.stop(5)
print("RESULTS " + json.dumps(results), file=sys.stderr)
"""


def test_a_full_disk_fails_submit_cleanly_and_leaves_no_torn_record(tmp_path):
    """When the spool cannot grow (file size limit as a stand-in for a full disk) submit raises SpoolError; every spooled record stays whole and is delivered."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.alerts_schema import validate
    from tests.helpers.alert_factory import write_config

    repo = Path(__file__).resolve().parents[1]
    alerts = [make_alert(i) for i in range(10)]
    path = tmp_path / "alerts.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in alerts))
    cfg = write_config(tmp_path, stdout=True)
    result = subprocess.run([sys.executable, "-c", FULL_DISK_AGENT, str(cfg), str(path)], cwd=repo,
                            capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    results = json.loads(result.stderr.split("RESULTS ", 1)[1])
    accepted = results.count(True)
    assert 0 < accepted < len(alerts), results
    assert all(r is True or "cannot write the alert spool" in r for r in results)
    delivered = [validate(json.loads(line)) for line in result.stdout.splitlines()]
    assert [a["event"]["id"] for a in delivered] == [a["event"]["id"] for a in alerts[:accepted]]
    segments = list((tmp_path / "state" / "alerts" / "spool").glob("*.jsonl"))
    for seg in segments:
        for line in seg.read_bytes().splitlines():
            validate(json.loads(line))


def test_pipeline_state_is_not_world_readable(tmp_path):
    """The state dir is created 0700; spool, positions, dedupe state and lock are 0600 inside a 0700 directory."""
    import stat

    with PipelineSet() as pipes:
        p = pipes.make(make_config(tmp_path, stdout=True))
        p.submit(make_alert(1))
        assert p.flush(10)
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [f for f in state.rglob("*")]
    assert {f.name for f in files} >= {"alerts", "spool", "lock", "dedupe.jsonl", "stdout.pos", "000000000001.jsonl"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
