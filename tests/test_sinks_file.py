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


def _copy_then_truncate(path, lines_between, *, cut: int = 0, copy_name: str = ".1"):
    """logrotate's copytruncate step by step: 10 lines, the copy (its last ``cut`` bytes missing, as when
    the copy read the end of a line being written), ``lines_between`` more lines (written after the copy,
    before the truncate), the truncate, then one more line. (sink, ids of the copy, ids of the file)."""
    sink = FileSink(str(path))
    for i in range(10):
        sink.send(record(i))
    data = path.read_bytes()
    if copy_name:
        (path.parent / f"{path.name}{copy_name}").write_bytes(data[:len(data) - cut])
    for i in range(10, 10 + lines_between):
        sink.send(record(i))
    with open(path, "r+b") as f:
        f.truncate(0)
    sink.send(record(99))
    sink.close()
    copy = path.parent / f"{path.name}{copy_name}"
    in_copy = ids_in([copy], torn_copies=True) if copy_name else []
    return sink, in_copy, ids_in([path])


def test_copytruncate_rewrites_exactly_what_the_copy_lacks(tmp_path):
    """The sink finds logrotate's copy beside the file, checks it holds its own lines at their offsets,
    and writes again only the lines written after the copy: every line once in copy + file, no repeat."""
    path = tmp_path / "alerts.jsonl"
    sink, in_copy, in_file = _copy_then_truncate(path, 3)
    assert in_copy == [f"line-{i:06d}" for i in range(10)]
    assert in_file == [*(f"line-{i:06d}" for i in range(10, 13)), "line-000099"]
    assert sink.rewritten == 3 and sink.recovered_by == {"copy": 1, "grace": 0}


def test_copytruncate_with_nothing_written_between_copy_and_truncate_rewrites_nothing(tmp_path):
    path = tmp_path / "alerts.jsonl"
    sink, in_copy, in_file = _copy_then_truncate(path, 0, copy_name="-20261201")  # dateext names too
    assert len(in_copy) == 10 and in_file == ["line-000099"]
    assert sink.rewritten == 0 and sink.recovered_by["copy"] == 1


def test_copytruncate_rewrites_the_line_the_copy_cut(tmp_path):
    """A copy that ends inside a line (it read while the line was written) gets that line whole again."""
    path = tmp_path / "alerts.jsonl"
    sink, in_copy, in_file = _copy_then_truncate(path, 2, cut=7)
    assert in_copy == [f"line-{i:06d}" for i in range(9)]
    assert in_file == ["line-000009", "line-000010", "line-000011", "line-000099"]
    assert sink.rewritten == 3


def test_copytruncate_without_a_verifiable_copy_falls_back_to_the_grace_window(tmp_path):
    """No copy beside the file (compressed or moved at once), or one that does not hold our lines: the
    lines written within copytruncate_grace seconds before the truncation are written again."""
    path = tmp_path / "alerts.jsonl"
    (tmp_path / "alerts.jsonl.1").write_bytes(b"not our lines\n" * 200)  # an unrelated file named like a copy
    sink, _, in_file = _copy_then_truncate(path, 3, copy_name="")
    assert sink.recovered_by == {"copy": 0, "grace": 1}
    assert sorted(in_file) == sorted(["line-000099", *(f"line-{i:06d}" for i in range(13))])  # all within grace


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
