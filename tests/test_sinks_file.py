"""File and stdout sinks: JSON lines, permissions, logrotate (rename-and-create, copytruncate), reopen."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import threading
import time

from agent.sinks.base import Record, encode
from agent.sinks.file import FileSink
from agent.sinks.stdout import StdoutSink
from tests.alerts_schema import validate
from tests.helpers.alert_factory import PipelineSet, make_alert, make_config

TEMPLATE = make_alert(0)


def record(i: int) -> Record:
    alert = json.loads(json.dumps(TEMPLATE))
    alert["event"]["id"] = f"line-{i:06d}"
    return Record(encode(alert), alert)


def ids_in(paths, *, torn_copies: bool = False) -> list[str]:
    """event.id of every line. ``torn_copies``: a rotated copy may end in a partial line
    (logrotate's copy read the file while a line was being written; that line is whole
    elsewhere); the current file never may."""
    out = []
    for p in paths:
        data = p.read_bytes()
        lines = data.splitlines()
        if torn_copies and p.name != "alerts.jsonl" and not data.endswith(b"\n"):
            lines = lines[:-1]
        for line in lines:
            out.append(json.loads(line)["event"]["id"])
    return out


class Writer(threading.Thread):
    """Sends numbered records through a FileSink as fast as it can until told to stop."""

    def __init__(self, sink: FileSink) -> None:
        super().__init__(daemon=True)
        self.sink, self.sent, self.stop = sink, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sink.send(record(self.sent))
            self.sent += 1
            if self.sent % 50 == 0:
                time.sleep(0.001)


def rotate_while_writing(tmp_path, rotate, rounds: int = 5, grace: float = 0.5):
    path = tmp_path / "log" / "alerts.jsonl"
    sink = FileSink(str(path), copytruncate_grace=grace)
    writer = Writer(sink)
    writer.start()
    try:
        for n in range(1, rounds + 1):
            time.sleep(0.15)
            rotate(path, n)
        time.sleep(0.15)
    finally:
        writer.stop.set()
        writer.join(10)
        sink.close()
    return path, sink, writer.sent


def test_file_sink_creates_private_file_and_appends_json_lines(tmp_path):
    """A new alert file is created 0640 in a new 0750 directory and gets one valid alert per line."""
    path = tmp_path / "var" / "log" / "alerts.jsonl"
    sink = FileSink(str(path))
    alerts = [make_alert(i) for i in range(3)]
    for a in alerts:
        sink.send(Record(encode(a), a))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    lines = path.read_bytes().splitlines()
    assert [validate(json.loads(line))["event"]["id"] for line in lines] == [a["event"]["id"] for a in alerts]


def test_file_sink_keeps_the_mode_of_an_existing_file(tmp_path):
    """A file logrotate created with its own mode keeps that mode."""
    path = tmp_path / "alerts.jsonl"
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    sink = FileSink(str(path))
    sink.send(record(1))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rename_and_create_rotation_loses_no_line(tmp_path):
    """Lines written continuously while logrotate renames and re-creates the file all land in some file."""

    def rotate(path, n):
        os.rename(path, f"{path}.{n}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)  # logrotate's "create 0640"
        os.close(fd)

    path, sink, sent = rotate_while_writing(tmp_path, rotate)
    files = [path, *sorted(path.parent.glob("alerts.jsonl.*"))]
    got = ids_in(files)
    assert sent > 100
    assert sorted(set(got)) == [f"line-{i:06d}" for i in range(sent)]
    assert len(got) == sent, "rename-and-create needs no repeats"
    assert sink.rotations >= 5
    assert all(path.read_bytes().count(b"\n") == len(path.read_bytes().splitlines()) for path in files)


def test_copytruncate_rotation_loses_no_line(tmp_path):
    """Lines written continuously while logrotate copies and truncates the file all survive (repeats allowed)."""

    def rotate(path, n):
        shutil.copyfile(path, f"{path}.{n}")  # logrotate copytruncate: copy, then truncate in place
        with open(path, "r+b") as f:
            f.truncate(0)

    path, sink, sent = rotate_while_writing(tmp_path, rotate)
    files = [path, *sorted(path.parent.glob("alerts.jsonl.*"))]
    got = ids_in(files, torn_copies=True)
    assert sent > 100
    assert sorted(set(got)) == [f"line-{i:06d}" for i in range(sent)]
    assert sink.rotations >= 5
    assert len(got) - sent <= sink.rewritten, "every repeat is one the sink wrote again on purpose"
    print(f"copytruncate: {sent} lines, {sink.rewritten} rewritten, {len(got) - sent} repeats")


def test_reopen_while_writing_loses_no_line(tmp_path):
    """reopen() (SIGHUP) from another thread while lines are written keeps every line in the file."""

    def rotate(path, n):
        sink_holder[0].reopen()

    sink_holder = []
    path = tmp_path / "alerts.jsonl"
    sink = FileSink(str(path))
    sink_holder.append(sink)
    writer = Writer(sink)
    writer.start()
    for n in range(5):
        time.sleep(0.05)
        rotate(path, n)
    writer.stop.set()
    writer.join(10)
    sink.close()
    assert ids_in([path]) == [f"line-{i:06d}" for i in range(writer.sent)]


def test_unwritable_file_is_a_retried_failure_not_a_crash(tmp_path):
    """A file path that cannot be opened fails delivery (kept in the spool) until it can, then delivers."""
    blocker = tmp_path / "logs"
    blocker.write_text("a file where a directory should be")
    cfg = make_config(tmp_path, file=str(blocker / "alerts.jsonl"))
    with PipelineSet() as pipes:
        p = pipes.make(cfg)
        p.submit(make_alert(1))
        deadline = time.monotonic() + 10
        while p.stats()["sinks"]["file"]["failed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.stats()["sinks"]["file"]["failed"] >= 2
        blocker.unlink()
        assert p.flush(10)
        stats = p.stats()["sinks"]["file"]
    assert stats["delivered"] == 1 and stats["retried"] >= 2
    assert len((blocker / "alerts.jsonl").read_bytes().splitlines()) == 1


def test_stdout_sink_writes_one_json_line_per_alert():
    """The stdout sink prints each alert as one compact JSON line (journald's input)."""
    out = io.StringIO()
    sink = StdoutSink(out)
    alerts = [make_alert(i) for i in range(2)]
    for a in alerts:
        sink.send(Record(encode(a), a))
    lines = out.getvalue().splitlines()
    assert [validate(json.loads(line)) for line in lines] == alerts
