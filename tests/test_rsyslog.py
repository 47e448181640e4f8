"""Alerts meet a real rsyslog (8.2302, Debian 12), in the Debian 12 test image without systemd.

- The syslog sink (agent/sinks/syslog.py) and `minerwatch alerts test` deliver to ``rsyslogd -n``
  listening on 127.0.0.1 inside the container's own network namespace (``--network none``):
  TCP with octet-counted framing (RFC 6587) and UDP. rsyslog parses each message as RFC 5424
  and writes its fields; the JSON alert comes out intact (or, above the transport's limit,
  cut to it, still valid and marked).
- rsyslog's ``imfile`` tails the alert file written by the agent's file sink while logrotate
  rotates it (the .deb's /etc/logrotate.d/minerwatch: rename + create; and copytruncate).

The checkout's code runs inside from the host's Python and venv, mounted read-only.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from tests.alerts_schema import validate
from tests.helpers import containers, debian_image
from tests.helpers.containers import REPO_ROOT

wait_for = debian_image.wait_for

PORT = 6514
OUT = "/mwtest"
ALERTS = "/var/log/minerwatch/alerts.jsonl"
SIGNATURES = "/usr/share/minerwatch/signatures"
FIELDS = ("version", "pri", "timestamp", "hostname", "app", "procid", "msgid", "sd", "msg")

RSYSLOG_CONF = f"""\
global(workDirectory="/var/spool/rsyslog" maxMessageSize="128k")
module(load="imtcp")
module(load="imudp")
module(load="imfile" mode="inotify")
template(name="fields" type="string"
         string="%protocol-version%|%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\\n")
template(name="line" type="string" string="%msg%\\n")
ruleset(name="tcp") {{ action(type="omfile" file="{OUT}/tcp.log" template="fields") }}
ruleset(name="udp") {{ action(type="omfile" file="{OUT}/udp.log" template="fields") }}
ruleset(name="file") {{ action(type="omfile" file="{OUT}/file.log" template="line") }}
input(type="imtcp" address="127.0.0.1" port="{PORT}" ruleset="tcp")
input(type="imudp" address="127.0.0.1" port="{PORT}" ruleset="udp")
input(type="imfile" file="{ALERTS}" tag="minerwatch" ruleset="file"
      reopenOnTruncate="on" freshStartTail="off")
"""

# Runs inside the container: sends alerts through the agent's syslog sink, prints what it sent.
SEND = """\
import dataclasses, json, os, sys
from agent import alert as alert_builder
from agent.model import Severity
from agent.sinks.base import Record, encode
from agent.sinks.syslog import SyslogSink, format_message
from tests.helpers.alert_factory import HOST, make_alert, make_finding

alerts = [make_alert(i, severity=s) for i, s in enumerate(Severity) if s]
f = make_finding(9)
argv = ("/tmp/xmrig", *["\\x1b[2J" + "0" * 120] * 400, "-o", "stratum+tcp://pool.example:3333")
alerts.append(alert_builder.build(dataclasses.replace(f, process=dataclasses.replace(f.process, cmdline=argv)),
                                  host_name=HOST))
sink = SyslogSink(sys.argv[1])
sent = []
for a in alerts:
    rec = Record(encode(a), a)
    sink.send(rec)
    sent.append({"alert": a, "len": len(format_message(rec, facility=sink.facility))})
sink.close()
print(json.dumps({"pid": os.getpid(), "max_bytes": sink.max_bytes, "sent": sent}))
"""

# Runs inside the container: the agent's file sink writes N alerts while logrotate runs
# alongside (started every N/ROTATIONS alerts, not waited for before the next writes).
WRITE = """\
import json, subprocess, sys, time
from agent.sinks.base import Record, encode
from agent.sinks.file import FileSink
from tests.helpers.alert_factory import make_alert

n, rotations, conf, state = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sink = FileSink(sys.argv[5])
procs = []
for i in range(n):
    a = make_alert(i)
    sink.send(Record(encode(a), a))
    if (i + 1) % (n // (rotations + 1)) == 0 and len(procs) < rotations:
        procs.append(subprocess.Popen(["logrotate", "-f", "-s", state, conf],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    time.sleep(0.004)
outs = [p.communicate()[0].decode() for p in procs]
sink.close()
print(json.dumps({"rotations": sink.rotations, "rewritten": sink.rewritten,
                  "logrotate": [[p.returncode, o] for p, o in zip(procs, outs)]}))
"""


@pytest.fixture(scope="module")
def image(docker_client, request):
    return debian_image.image_for_tests(docker_client, request).tag


@pytest.fixture
def box(docker_client, image, tmp_path):
    """A container of the image (no systemd) running ``rsyslogd -n``; its outputs in tmp_path/out."""
    out = tmp_path / "out"
    out.mkdir()
    volumes = {**debian_image.agent_volumes(), str(out): {"bind": OUT, "mode": "rw"}}
    c = containers.run_container(docker_client, image, ["sleep", "infinity"], name_prefix="mwtest-rsyslog",
                                 network="none", volumes=volumes)
    logrotate = (REPO_ROOT / "packaging/deb/logrotate").read_bytes()
    files = {"/etc/rsyslog-test.conf": (RSYSLOG_CONF.encode(), 0o644),
             "/etc/logrotate.d/minerwatch": (logrotate, 0o644),
             "/usr/bin/minerwatch": (debian_image.wrapper_script(), 0o755)}
    files.update(debian_image.tree_files(REPO_ROOT / "signatures", SIGNATURES))  # root's, as the .deb has them
    debian_image.put_files(c, files)
    for argv in (["mkdir", "-p", "/var/spool/rsyslog", "/var/log/minerwatch"], ["chmod", "0750", "/var/log/minerwatch"]):
        debian_image.run(c, *argv, check=True)
    res = c.exec_run(["rsyslogd", "-n", "-f", "/etc/rsyslog-test.conf", "-i", "/run/rsyslogd-test.pid"], detach=True)
    assert res.exit_code is None
    wait_for("rsyslog listening on TCP and UDP", lambda: listening(c, PORT), timeout=20)
    yield c, out




def listening(c, port: int) -> bool:
    want = f"0100007F:{port:04X}"
    tcp = debian_image.run(c, "cat", "/proc/net/tcp")[1]
    udp = debian_image.run(c, "cat", "/proc/net/udp")[1]
    tcp_ok = any(f[1] == want and f[3] == "0A" for f in (line.split() for line in tcp.splitlines()[1:]))
    udp_ok = any(f[1] == want for f in (line.split() for line in udp.splitlines()[1:]))
    return tcp_ok and udp_ok


def py(c, script: str, *args: str) -> dict:
    """Runs ``script`` with the venv's python in the container; its report (the last output line)."""
    out = debian_image.run(c, debian_image.venv_python(), "-c", script, *args, check=True,
                           env={"PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"})[1]
    return json.loads(out.strip().splitlines()[-1])


def rsyslog_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def received(path: Path, n: int) -> list[dict]:
    lines = wait_for(f"{n} messages in {path.name}", lambda: (ls := rsyslog_lines(path)) and len(ls) >= n and ls)
    time.sleep(0.5)
    lines = rsyslog_lines(path)
    assert len(lines) == n, lines
    return [dict(zip(FIELDS, line.split("|", len(FIELDS) - 1))) for line in lines]


# ---------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("transport, query", [("tcp", ""), ("udp", ""), ("udp", "?max_bytes=2048")])
def test_syslog_sink_to_a_real_rsyslog(box, transport, query):
    """Each alert is one RFC 5424 message to rsyslog (TCP octet-counted or UDP), header fields as
    the sink sets them and the JSON alert intact, the padded one too (alerts are capped at build);
    with a collector limit of 2048 bytes the padded alert is cut to it, still valid JSON, the cut
    named, never dropped."""
    c, out = box
    report = py(c, SEND, f"{transport}://127.0.0.1:{PORT}{query}")
    sent = report["sent"]
    assert report["max_bytes"] == {"tcp": 64 << 10, "udp": 8 << 10}[transport] if not query else 2048
    msgs = received(out / f"{transport}.log", len(sent))
    cut = 0
    for item, msg in zip(sent, msgs):
        alert = item["alert"]
        mw = alert["minerwatch"]
        assert msg["version"] == "1" and msg["app"] == "minerwatch" and msg["msgid"] == "alert", msg
        assert msg["hostname"] == alert["host"]["name"] and msg["procid"] == str(report["pid"]) and msg["sd"] == "-"
        sev = {"critical": 2, "high": 3, "medium": 4, "low": 5}[mw["severity"]]
        assert int(msg["pri"]) == 4 * 8 + sev  # facility auth
        ts = alert["@timestamp"].replace("Z", "+00:00")
        assert datetime.fromisoformat(msg["timestamp"]) == datetime.fromisoformat(ts)
        got = json.loads(msg["msg"])
        if item["len"] <= report["max_bytes"]:
            assert got == alert
        else:  # over the limit: shrunk by the sink, never dropped
            cut += 1
            assert len(msg["msg"].encode()) < report["max_bytes"]
            validate(got)
            assert got["minerwatch"]["truncated"] and got["minerwatch"]["finding_id"] == mw["finding_id"]
            assert got["event"]["id"] == alert["event"]["id"]
    assert cut == (1 if query else 0), [item["len"] for item in sent]  # only the padded one, only at 2048


def test_alerts_test_command_reaches_rsyslog_over_tcp_and_udp(box):
    """`minerwatch alerts test` with `[alerts] syslog = "tcp://127.0.0.1:PORT"` (and udp://): rsyslog
    gets the marked test alert (MSGID test), the same JSON the file sink wrote."""
    c, out = box
    for transport in ("tcp", "udp"):
        conf = (f'[agent]\nsignatures = "{SIGNATURES}"\n'
                f'[alerts]\nstdout = false\nfile = "/var/log/mw-{transport}.jsonl"\n'
                f'syslog = "{transport}://127.0.0.1:{PORT}?facility=local0"\n').encode()
        debian_image.put_files(c, {f"/etc/minerwatch/{transport}.toml": (conf, 0o644)})
        rc, text = debian_image.run(c, "minerwatch", "alerts", "test", "--config", f"/etc/minerwatch/{transport}.toml")
        assert rc == 0, text
        (msg,) = received(out / f"{transport}.log", 1)
        assert msg["msgid"] == "test" and int(msg["pri"]) // 8 == 16, msg  # local0
        (line,) = debian_image.run(c, "cat", f"/var/log/mw-{transport}.jsonl", check=True)[1].splitlines()
        got = json.loads(msg["msg"])
        assert got == json.loads(line) and got["minerwatch"]["test"] is True
        validate(got)


def rotate_conf(mode: str) -> bytes:
    shipped = (REPO_ROOT / "packaging/deb/logrotate").read_text()
    if mode == "create":
        return shipped.encode()
    changed = shipped.replace("    create 0600 root root\n", "    copytruncate\n")
    assert changed != shipped
    return changed.encode()


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_imfile_tails_the_alert_file_across_logrotate(box, mode):
    """The file sink writes 400 alerts at ~200/s while logrotate rotates the file 3 times
    (the shipped rename + create, and copytruncate); rsyslog imfile delivers every alert line once
    (copytruncate: lines the sink wrote again after a truncation repeat with the same event.id)."""
    c, out = box
    n, rotations = 400, 3
    debian_image.put_files(c, {"/etc/mw-logrotate.conf": (rotate_conf(mode), 0o644)})
    report = py(c, WRITE, str(n), str(rotations), "/etc/mw-logrotate.conf", "/run/logrotate.state", ALERTS)
    assert [rc for rc, _ in report["logrotate"]] == [0] * rotations, report["logrotate"]
    assert report["rotations"] >= rotations if mode == "copytruncate" else True
    files = debian_image.run(c, "ls", "/var/log/minerwatch")[1].split()
    assert "alerts.jsonl.1" in files and any(f.endswith(".gz") for f in files), files  # it did rotate

    want = {f"{i + 1:032x}" for i in range(n)}

    def ids() -> Counter:
        seen = Counter()
        for line in rsyslog_lines(out / "file.log"):
            seen[json.loads(line)["minerwatch"]["finding_id"]] += 1
        return seen

    try:
        wait_for("every alert line through imfile", lambda: want <= set(ids()), timeout=20)
    finally:
        seen = ids()
        missing = sorted(want - set(seen))
        print(f"{mode}: {len(seen)} of {n} alerts, missing {len(missing)}, repeated "
              f"{sum(v - 1 for v in seen.values())}; sink: {report['rotations']} rotations seen, "
              f"{report['rewritten']} lines rewritten")
    time.sleep(1.5)  # late repeats
    seen = ids()
    assert set(seen) == want
    repeated = {k: v for k, v in seen.items() if v > 1}
    if mode == "create":
        assert not repeated, repeated
    else:
        assert sum(v - 1 for v in repeated.values()) <= report["rewritten"], (repeated, report)
        by_id: dict[str, set] = {}
        for line in rsyslog_lines(out / "file.log"):
            a = json.loads(line)
            by_id.setdefault(a["minerwatch"]["finding_id"], set()).add(a["event"]["id"])
        assert all(len(v) == 1 for v in by_id.values())  # a repeat is the same event: SIEMs dedupe it
    bad = [line for line in rsyslog_lines(out / "file.log") if not re.match(r'^\{"@timestamp":".*\}$', line)]
    assert not bad, bad[:3]
