"""What reaches the operator and the collectors when a process, a file or an image is hostile (issue 12).

- Escape sequences in an argv, a file name, an image's file path or Env, or a log value never reach the
  terminal: real ``minerwatch sweep`` / ``scan-image`` / log output read through a real pseudo-terminal.
- A padded argv makes a bounded alert (16 KiB at most) that a real UDP syslog receiver and a webhook with
  a body limit both get, cut and marked.
- The unit restarts the agent after any exit but a bad configuration.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from agent import alert as alert_builder
from agent.model import ContainerInfo, Evidence, FileSnapshot, ResponseRecord
from agent.sinks.base import encode
from agent.text import is_terminal_safe, terminal_safe
from tests.alerts_schema import validate
from tests.helpers import image_archives as ia
from tests.helpers import procs
from tests.helpers.alert_factory import HOST, PipelineSet, make_config, make_finding
from tests.helpers.containers import TEST_WALLET
from tests.helpers.receivers import SyslogReceiver, WebhookReceiver
from tests.sweeping import REPO, sweep, write_config

# Rich markup, then an OSC retitle, clear screen, blink+red, a C1 CSI (U+009B) asking for a cursor
# report, DEL, backspace, a cursor-up-and-erase that would hide earlier lines, a bidi override.
PAYLOAD = "[bold]MARK[/bold]\x1b]0;pwned\x07\x1b[2J\x1b[5;31m\u009b6n\x7f\x08\x1b[3A\x1b[K\u202e"
RAW = [b"\x1b]0;pwned", b"\x1b[2J", b"\x1b[5;31m", "\u009b".encode(), b"\x7f", b"\x08", "\u202e".encode(),
       b"\x1b[3A\x1b[K"]
SHOWN = terminal_safe(PAYLOAD)  # what the operator must see instead: \x1b]0;pwned\x07\x1b[2J...
NAME = PAYLOAD.replace("/", "")  # the same in one file name
# What rich itself writes on a terminal: colours/bold (SGR) and, for the transient progress bar
# and status spinner on stderr, hide/show cursor, erase line, cursor up.
RICH_OWN = re.compile(rb"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\x1b\[2K|\x1b\[1A|\r")


def run_on_terminal(argv: list[str], *, cols: int = 400, timeout: float = 180, env=None) -> tuple[int, bytes]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal ``cols`` wide; (exit code, bytes shown)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, cols, 0, 0))
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "TERM": "xterm-256color",
                "COLUMNS": str(cols), **(env or {})}
    full_env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=full_env,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            pytest.fail(f"{argv[:4]} still running after {timeout}s; shown so far: {bytes(out[-2000:])!r}")
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)
    return code, bytes(out)


def assert_nothing_acts_on_the_terminal(out: bytes) -> str:
    """No payload sequence, and no control character at all but rich's own styling; returns the text."""
    for raw in RAW:
        assert raw not in out, f"{raw!r} reached the terminal: ...{out[max(0, out.find(raw) - 200):out.find(raw) + 80]!r}"
    text = RICH_OWN.sub(b"", out).decode("utf-8")  # strict: no stray byte either
    bad = sorted({f"U+{ord(ch):04X}" for ch in text.replace("\n", "") if not is_terminal_safe(ch)})
    assert not bad, f"control characters reached the terminal: {bad}"
    return text


def squeeze(text: str) -> str:
    """The text without table borders, padding and line breaks (rich folds long cells)."""
    return re.sub(r"[\s\u2500-\u257f]+", "", text)


# ---------------------------------------------------------------------------- terminal injection


def test_sweep_on_a_terminal_shows_a_hostile_argv_and_file_name_escaped(tmp_path, helper_bins, spawn, fake_pool):
    """A miner whose argv carries escape sequences and rich markup, and a miner copy whose file name does
    (with a non-UTF-8 byte), are reported by `minerwatch sweep` on a real terminal as visible escapes:
    nothing retitles, clears, moves the cursor or styles the terminal."""
    miner = spawn(["xmrig", "--rig-id", PAYLOAD, "-o", f"stratum+tcp://127.0.0.1:{fake_pool.port}", "-u",
                   TEST_WALLET, "-t", "0", "--seconds", "120"], executable=str(helper_bins.fakeminer))
    procs.wait_until(lambda: procs.established_to(miner.pid, fake_pool.port), 10, 0.05, "miner connected")
    watched = tmp_path / "watched"
    watched.mkdir()
    name = os.fsencode(f"m{NAME}") + b"\xff"
    shutil.copy2(helper_bins.fakeminer, os.path.join(os.fsencode(watched), name))
    cfg = write_config(tmp_path, watch=watched)

    code, out = run_on_terminal([sys.executable, "-m", "agent", "sweep", "--config", str(cfg)])
    text = assert_nothing_acts_on_the_terminal(out)
    assert code == 1, text[-3000:]
    flat = squeeze(text)
    assert f"pid{miner.pid}" in flat, text[-3000:]
    assert squeeze(f"xmrig --rig-id {SHOWN}")[:60] in flat, "the argv is shown, escaped (the table cuts it at 80)"
    assert squeeze(f"{watched}/m{terminal_safe(NAME)}\\xff") in flat, "the file name is shown escaped, its odd byte as \\xff"
    assert "[bold]MARK[/bold]" in flat and "[bold]MARK[bold]" in flat, "rich markup in untrusted text is shown as text"


def test_scan_image_report_on_a_terminal_shows_hostile_paths_and_env_escaped(tmp_path, docker_client, helper_bins):
    """An image whose miner sits at a path full of escape sequences and whose Env names a pool with them is
    reported by `minerwatch scan-image` on a real terminal as visible escapes only."""
    path = f"usr/bin/k{NAME}"
    layer = ia.layer_tar([ia.reg("bin/sh", b"#!/bin/true\n", 0o755), ia.reg(path, helper_bins.fakeminer.read_bytes(), 0o755)])
    tag = f"mwtest/hostile-output:{os.getpid()}"
    ia.load(docker_client, ia.save_archive([layer], repo_tag=tag,
                                           env=[f"POOL_URL=stratum+tcp://pool.example:3333/{PAYLOAD}"]), tag)
    runner = ("import sys; from agent.cli import main as m; from agent.cli.scan_image_cmd import scan_image; "
              "m.cli.commands.setdefault('scan-image', scan_image); m.main(sys.argv[1:])")
    code, out = run_on_terminal([sys.executable, "-c", runner, "scan-image", tag, "--min-severity", "low"])
    text = assert_nothing_acts_on_the_terminal(out)
    assert code == 1, text[-3000:]
    flat = squeeze(text)
    assert squeeze(f"/usr/bin/k{terminal_safe(NAME)}") in flat, text[-3000:]
    assert "[bold]MARK[bold]" in flat


def test_console_log_on_a_terminal_escapes_untrusted_values():
    """On a terminal, log lines (structlog's console renderer) show escape sequences in the event text, in
    values (quoted or not) and in an exception's message as visible escapes; a newline cannot forge a line."""
    code = ("import sys, structlog; from agent import logging_setup; logging_setup.configure('info'); "
            "log = structlog.get_logger(); v = sys.argv[1]; "
            "log.warning(v, bare=v.replace(' ', '_'), quoted=v, listed=[v]); "
            "exec('try:\\n raise OSError(v)\\nexcept OSError:\\n log.exception(\"failed\", path=v)')")
    value = PAYLOAD + "\n2099-01-01T00:00:00Z [error    ] forged_line"
    status, out = run_on_terminal([sys.executable, "-c", code, value], timeout=60)
    text = assert_nothing_acts_on_the_terminal(out)
    assert status == 0, text
    assert not re.search(r"^2099-01-01", text, re.MULTILINE), "a value forged a log line"
    assert terminal_safe(PAYLOAD) in text and "[warning" in text and "failed" in text


def test_terminal_safe_escapes_every_control_and_keeps_spaces():
    """The pure function: C0, DEL, C1, lone surrogates and bidi controls become visible escapes; text,
    spaces, non-ASCII letters and backslashes stay as they are."""
    assert terminal_safe("a b\tc\nd\re") == "a b\\tc\\nd\\re"
    assert terminal_safe("\x00\x1b[2J\x7f\x80\x9b\x9f") == "\\x00\\x1b[2J\\x7f\\x80\\x9b\\x9f"
    assert terminal_safe(b"caf\xc3\xa9 \xff".decode("utf-8", "surrogateescape")) == "café \\xff"
    assert terminal_safe("\ud800") == "\\ud800" and terminal_safe("\u202eevil\u2066") == "\\u202eevil\\u2066"
    assert terminal_safe("line1\nline2\x1b", keep_newlines=True) == "line1\nline2\\x1b"
    assert terminal_safe("C:\\x [b]ok[/b] ünïcödé 日本") == "C:\\x [b]ok[/b] ünïcödé 日本"
    assert terminal_safe(42) == "42"
    everything = "".join(map(chr, range(0x110000)))
    assert is_terminal_safe(terminal_safe(everything))


# ---------------------------------------------------------------------------------- alert size


def test_padded_argv_alert_arrives_over_udp_syslog_and_a_limited_webhook_cut_and_marked(tmp_path, helper_bins,
                                                                                        spawn, fake_pool):
    """A real miner padded with ~128 KiB of argv makes an alert of at most 16 KiB (it was 129 KB: UDP gave it
    up as too long, a webhook behind a 32 KiB body limit answered 413). It arrives over UDP syslog (8 KiB,
    cut further) and at the webhook, valid, its head and tail kept and the cut fields named."""
    pool = f"stratum+tcp://127.0.0.1:{fake_pool.port}"
    miner = spawn([helper_bins.fakeminer, *["0" * 127] * 1000, "-o", pool, "-u", TEST_WALLET, "-t", "0",
                   "--seconds", "120"])
    procs.wait_until(lambda: procs.established_to(miner.pid, fake_pool.port), 10, 0.05, "miner connected")
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    alert = run.for_pid(miner.pid)
    assert alert is not None, run.stderr[-2000:]

    with SyslogReceiver("udp") as rx, WebhookReceiver(max_body=32 << 10) as hook, PipelineSet() as pipes:
        (tmp_path / "deliver").mkdir()
        p = pipes.make(make_config(tmp_path / "deliver", syslog=rx.url, webhook=hook.url))
        assert p.submit(alert)
        p.flush(20)
        stats = p.stats()["sinks"]
        assert stats["syslog"]["given_up"] == 0 and stats["webhook"]["given_up"] == 0, \
            f"given up: alert of {len(encode(alert))} bytes; {stats}"
        (msg,) = rx.wait_for_messages(1, timeout=20)
        hook.wait_for(lambda h: len(h.accepted) == 1, timeout=20)
        assert p.flush(10)
        stats = p.stats()["sinks"]
    assert not rx.errors
    assert stats["syslog"]["delivered"] == 1 and stats["webhook"]["delivered"] == 1
    assert [r.status for r in hook.requests] == [200] and validate(hook.accepted[0].alert) == alert

    assert len(encode(alert)) <= 16 << 10
    assert {"process.args", "process.command_line"} <= set(alert["minerwatch"]["truncated"])
    cmd = alert["process"]["command_line"]
    assert cmd.startswith(f"{helper_bins.fakeminer} 000") and "\u2026" in cmd and cmd.endswith("--seconds 120")
    assert alert["process"]["args"][0] == str(helper_bins.fakeminer) and "\u2026" in alert["process"]["args"]
    assert alert["process"]["args"][-8:] == ["-o", pool, "-u", TEST_WALLET, "-t", "0", "--seconds", "120"]
    got = validate(msg.alert)
    assert len(msg.msg) <= 8192
    assert got["event"]["id"] == alert["event"]["id"] and got["process"]["pid"] == miner.pid
    assert pool in got["process"]["command_line"] and "\u2026" in got["process"]["command_line"]
    assert {"process.args", "process.command_line"} <= set(got["minerwatch"]["truncated"])


def test_every_free_text_field_is_capped_and_the_alert_bounded():
    """A finding in which every field a process, container or file supplies is 70,000 escape characters (six
    bytes each in JSON) still makes a schema-valid alert of at most 16 KiB, with the ids and digests whole,
    every cut field named and marked with an ellipsis; C1 controls are escaped in the alert too."""
    x = "\x1b" * 70_000
    f = make_finding(7)
    finding = dataclasses.replace(
        f, rule_name=x,
        evidence=tuple(Evidence("cmdline", x, 5) for _ in range(50)),
        process=dataclasses.replace(f.process, cmdline=(x,) * 40, exe=x, cwd=x, name=x, user=x),
        container=ContainerInfo(id=f.container.id, name=x, image=x),
        response=ResponseRecord("pause", "failed", x),
        file=FileSnapshot(path=x, size=1, mode=0o755),
    )
    alert = validate(alert_builder.build(finding, host_name=x))
    assert len(encode(alert)) <= alert_builder.MAX_ALERT_BYTES
    assert alert["minerwatch"]["finding_id"] == f.finding_id and alert["container"]["id"] == f.container.id
    assert alert["event"]["action"] == "cryptominer-detected"
    cut = set(alert["minerwatch"]["truncated"])
    expected = {"rule.name", "message", "host.name", "process.command_line", "process.args", "process.executable",
                "process.working_directory", "process.name", "process.user.name", "container.name",
                "container.image.name", "file.path", "minerwatch.evidence", "minerwatch.evidence.detail",
                "minerwatch.response.reason"}
    assert expected <= cut, expected - cut
    for value in (alert["process"]["command_line"], alert["file"]["path"], alert["container"]["name"],
                  alert["minerwatch"]["response"]["reason"], alert["minerwatch"]["evidence"][0]["detail"]):
        assert "\u2026" in value

    plain = validate(alert_builder.build(make_finding(8), host_name=HOST))
    assert "truncated" not in plain["minerwatch"], "an ordinary alert is not cut"
    c1 = dataclasses.replace(f, process=dataclasses.replace(f.process, cmdline=("xmrig", "\u009b2J")))
    assert validate(alert_builder.build(c1, host_name=HOST))["process"]["args"] == ["xmrig", "\\x9b2J"]


# ---------------------------------------------------------------------------------- systemd unit


def test_unit_restarts_after_any_exit_but_a_bad_configuration():
    """Restart=always (a clean exit after a stray SIGTERM is restarted too); exit 2 (bad config) stays failed."""
    from tests.test_packaging import UNIT, _unit_settings

    settings = _unit_settings(Path(UNIT))
    assert settings["Restart"] == ["always"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings.get("RestartSec") == ["5"]
