"""What the operator's commands print, where it goes (issue 15): a table on a terminal, plain blocks and
one summary line in a pipe, right plurals, -q and -v, Ctrl-C exits 130, a command's own warnings as one
readable line, the daemon's Python warnings as JSON events, --version.

Terminal programs run on a real pseudo-terminal; pipes are real pipes; the processes are real.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from agent import __version__
from tests.helpers.containers import TEST_WALLET
from tests.sweeping import REPO, write_config
from tests.test_hostile_output import run_on_terminal

BOX = re.compile("[\u2500-\u257f]")  # rich's table borders
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def mw(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m agent ARGS`` with stdout and stderr on pipes."""
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def assert_plurals_right(text: str) -> None:
    """Every '<n> finding/process/container/file' agrees in number, and no '(s)' hedge is left."""
    assert "(s)" not in text, text
    pairs = re.findall(r"\b(\d+) (findings?|process(?:es)?|containers?|files?)\b", text)
    assert pairs, text
    for n, word in pairs:
        singular = word in ("finding", "process", "container", "file")
        assert singular == (n == "1"), f"{n} {word}: in {text!r}"


@pytest.fixture
def host_miner(helper_bins, spawn, fake_pool):
    miner = spawn([helper_bins.fakeminer, "-o", f"stratum+tcp://127.0.0.1:{fake_pool.port}", "-u", TEST_WALLET,
                   "-t", "0", "--seconds", "120"])
    from tests.helpers import procs

    procs.wait_until(lambda: procs.established_to(miner.pid, fake_pool.port), 10, 0.05, "miner connected")
    return miner


def test_sweep_in_a_pipe_prints_one_plain_block_per_finding_and_one_summary_line(tmp_path, host_miner):
    """Piped, the sweep prints no table: a block per finding (severity, subject, container, top evidence),
    each line whole (the command line is not folded), then one summary line with right plurals."""
    run = mw("sweep", "--config", str(write_config(tmp_path)), "--min-severity", "high")
    assert run.returncode == 1, run.stderr
    out = run.stdout
    assert not BOX.search(out), out
    assert not ANSI.search(out), out
    blocks = out.strip().split("\n\n")
    mine = [b for b in blocks if f"  process: pid {host_miner.pid} " in b]
    assert len(mine) == 1, out
    lines = mine[0].splitlines()
    assert re.match(r"^(CRITICAL|HIGH) \(score \d+\) ", lines[0]), lines[0]
    assert "  container: none (host)" in lines
    assert any(ln.startswith("  command: ") and TEST_WALLET in ln and "stratum+tcp://127.0.0.1:" in ln for ln in lines)
    assert 1 <= sum(ln.startswith("  evidence (") for ln in lines) <= 3
    summary = [ln for ln in out.splitlines() if ln.startswith("minerwatch sweep:")]
    assert len(summary) == 1, out
    assert re.search(r"\d+ process(es)?, \d+ containers? and \d+ files? checked in [\d.]+ s;", summary[0]), summary
    assert_plurals_right(summary[0])


def test_sweep_on_a_terminal_draws_the_table_with_right_plurals(tmp_path, host_miner):
    """On a terminal the sweep still draws its table; its title and summary say '1 finding' / 'N findings'."""
    cfg = write_config(tmp_path)
    code, shown = run_on_terminal([sys.executable, "-m", "agent", "sweep", "--config", str(cfg),
                                   "--min-severity", "high"], cols=200)
    text = ANSI.sub("", shown.decode("utf-8", "replace"))
    assert code == 1, text
    assert BOX.search(text), text
    assert re.search(r"minerwatch sweep: \d+ findings? at or above high", text), text
    summary = next(ln for ln in text.splitlines() if "checked in" in ln)
    assert_plurals_right(re.sub(r"^.*?minerwatch sweep: ", "", summary))


def test_quiet_prints_findings_only_and_verbose_says_what_was_partly_read(tmp_path):
    """-q: the finding blocks and the exit code, no summary or note; -v: each partly read process and why.
    The proc root is a small fake tree: pid 103 is a miner whose cwd cannot be read (a directory where a
    link should be); pid 104 is a clean process."""
    root = tmp_path / "proc"
    for pid, comm, args in ((103, "xmrig", b"xmrig\x00--donate-level=1\x00-o\x00stratum+tcp://pool.example:3333\x00"),
                            (104, "sleep", b"sleep\x0060\x00")):
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t0\t0\t0\t0\n")
        (d / "cmdline").write_bytes(args)
    (root / "103" / "cwd").mkdir()  # readlink fails with EINVAL: the field is unknown, not empty
    (root / "self").symlink_to("104")
    cfg = write_config(tmp_path, agent=f'proc_root = "{root}"', extra='[docker]\nurl = "unix:///nonexistent.sock"\n')

    quiet = mw("sweep", "-q", "--config", str(cfg))
    assert quiet.returncode == 1, quiet.stderr
    assert "  process: pid 103 " in quiet.stdout
    assert "minerwatch sweep:" not in quiet.stdout and "note:" not in quiet.stdout, quiet.stdout
    assert quiet.stderr == "", quiet.stderr

    verbose = mw("sweep", "-v", "--config", str(cfg))
    assert verbose.returncode == 1, verbose.stderr
    partly = [ln for ln in verbose.stdout.splitlines() if ln.startswith("partly read: ")]
    assert any(ln.startswith("partly read: pid 103 ") and "cwd" in ln and "unreadable" in ln for ln in partly), verbose.stdout
    assert not any("pid 104 " in ln for ln in partly)
    assert "1 process only partly read" in verbose.stdout


def test_a_commands_own_warning_is_one_readable_line_unless_json_is_asked_for(tmp_path):
    """Docker unreachable: one 'minerwatch: warning: ...' line on stderr in a pipe, not a JSON record;
    MINERWATCH_LOG_FORMAT=json gives the JSON record."""
    cfg = write_config(tmp_path, extra='[docker]\nurl = "unix:///nonexistent-mw.sock"\n')
    run = mw("sweep", "--config", str(cfg), "--min-severity", "critical")
    assert run.returncode in (0, 1), run.stderr
    lines = run.stderr.splitlines()
    warning = [ln for ln in lines if "docker unreachable" in ln]
    assert len(warning) == 1 and warning[0].startswith("minerwatch: warning: docker unreachable: "), run.stderr
    assert "url=unix:///nonexistent-mw.sock" in warning[0]
    assert not any(ln.lstrip().startswith("{") for ln in lines), run.stderr

    as_json = mw("sweep", "--config", str(cfg), "--min-severity", "critical", env={"MINERWATCH_LOG_FORMAT": "json"})
    records = [json.loads(ln) for ln in as_json.stderr.splitlines() if ln.startswith("{")]
    assert any(r["event"] == "docker_unreachable" and r["level"] == "warning" for r in records), as_json.stderr


def test_ctrl_c_exits_130(tmp_path):
    """SIGINT to the sweep's process group on a terminal (what Ctrl-C does) ends it with exit 130."""
    watched = tmp_path / "watched"
    watched.mkdir()
    for i in range(3000):  # enough files that the sweep is still running when the signal comes
        (watched / f"f{i}").write_bytes(b"#!/bin/sh\necho %d\n" % i)
    cfg = write_config(tmp_path, watch=watched)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "sweep", "--config", str(cfg)], stdin=slave,
                            stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
                            env={**os.environ, "TERM": "xterm-256color", "PYTHONDONTWRITEBYTECODE": "1"})
    os.close(slave)
    out = bytearray()
    try:
        deadline = time.monotonic() + 60
        while b"sweeping" not in out and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        assert b"sweeping" in out, bytes(out)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(30)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)
    assert code == 130, bytes(out[-2000:])
    assert b"minerwatch: interrupted" in out
    assert b"Traceback" not in out


def test_daemon_python_warnings_are_json_events_on_stderr():
    """In the daemon's logging (JSON to a non-terminal stderr), a Python warning is a structlog JSON event,
    not the warnings module's multi-line text."""
    code = ("import warnings\nfrom agent import logging_setup\nlogging_setup.configure('info')\n"
            "warnings.warn('Callback with id 1 already exists\\nfor watch /tmp', RuntimeWarning)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines, "no warning at all"
    records = [json.loads(ln) for ln in lines]  # every line is JSON
    (rec,) = records
    assert rec["event"] == "python_warning" and rec["category"] == "RuntimeWarning"
    assert rec["message"].startswith("Callback with id 1 already exists") and rec["level"] == "warning"


def test_version_option():
    """`minerwatch --version` (and -V) prints the agent's version."""
    for flag in ("--version", "-V"):
        run = mw(flag)
        assert run.returncode == 0, run.stderr
        assert run.stdout == f"minerwatch {__version__}\n"


def test_help_lists_every_command():
    """The top-level help lists config (new) next to the others."""
    run = mw("--help")
    assert run.returncode == 0
    for name in ("config", "release", "sweep", "signatures", "alerts", "version", "run"):
        assert re.search(rf"^\s+{name}\b", run.stdout, re.M), run.stdout
    assert Path(REPO / "agent" / "cli" / "config_cmd.py").is_file()


def test_alerts_test_keeps_the_raw_alert_out_of_its_status_lines(tmp_path):
    """On a terminal (stdout and stderr on one screen) the ok/FAILED lines and the summary come together;
    the stdout sink's raw test alert is printed after them, not among them."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n[alerts]\nstdout = true\nfile = "{tmp_path}/alerts.jsonl"\n'
                   'syslog = "tcp://127.0.0.1:9"\n')
    code, shown = run_on_terminal([sys.executable, "-m", "agent", "alerts", "test", "--config", str(cfg),
                                   "--timeout", "2"], cols=300)
    lines = [ln for ln in ANSI.sub("", shown.decode("utf-8", "replace")).splitlines() if ln.strip()]
    assert code == 1, lines
    status = [i for i, ln in enumerate(lines) if ln.startswith(("ok ", "FAILED ", "test alert "))]
    raw = [i for i, ln in enumerate(lines) if ln.startswith("{")]
    assert len(status) == 4 and len(raw) == 1, lines
    assert status == list(range(status[0], status[0] + 4)) and raw[0] > status[-1], lines
    assert json.loads(lines[raw[0]])["tags"] == ["minerwatch-test"]
