"""``[alerts] format = "ocsf"``: every sink gets an OCSF 1.x Detection Finding (class 2004) built from the same
finding as the ECS alert, with the ATT&CK mapping, bounded like it; every one validates against the vendored
OCSF schema (tests/ocsf_schema.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent import alert, ocsf
from agent.collectors.scan_paths import PathScanner
from agent.config import from_dict
from agent.errors import ConfigError
from agent.judge import Judge
from agent.signatures import load_bundle
from agent.sinks.base import encode
from agent.sinks.pipeline import AlertPipeline
from tests.alerts_schema import validate as validate_ecs
from tests.helpers.containers import TEST_WALLET
from tests.ocsf_schema import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def findings(helper_bins, tmp_path_factory):
    """Real findings: the fake miner binary and a launcher script, scanned and judged as `minerwatch scan` does."""
    d = tmp_path_factory.mktemp("ocsf-files")
    (d / "xmrig").write_bytes(helper_bins.fakeminer.read_bytes())
    (d / "start.sh").write_text(f"#!/bin/sh\n./xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u {TEST_WALLET} -k\n")
    sig = load_bundle()
    judge = Judge(sig)
    out = {os.path.basename(s.path): judge.file(s) for s in PathScanner(sig.yara).scan([str(d)])}
    assert out["xmrig"] is not None and out["start.sh"] is not None
    return out


def _config(tmp_path, **alerts):
    return from_dict({"agent": {"state_dir": str(tmp_path / "state")},
                      "alerts": {"stdout": False, "file": str(tmp_path / "alerts.jsonl"), **alerts}}, "test")


def test_format_key_is_checked(tmp_path):
    assert _config(tmp_path).alerts.format == "ecs"
    assert _config(tmp_path, format="ocsf").alerts.format == "ocsf"
    with pytest.raises(ConfigError) as exc:
        _config(tmp_path, format="cef")
    assert "[alerts] format" in str(exc.value) and "'ocsf'" in str(exc.value)


def test_the_same_finding_in_both_formats(findings):
    """Same ids, severity, hashes, pool and ATT&CK mapping as the ECS alert of the same finding."""
    f = findings["start.sh"]
    ecs = validate_ecs(alert.build(f))
    o = validate(ocsf.from_alert(ecs))
    assert o["metadata"]["uid"] == ecs["event"]["id"] and o["finding_info"]["uid"] == ecs["minerwatch"]["finding_id"]
    assert o["severity"] == "Critical" and o["risk_score"] == ecs["minerwatch"]["score"]
    subject = o["evidences"][0]
    assert subject["file"]["path"] == ecs["file"]["path"]
    assert {h["algorithm"]: h["value"] for h in subject["file"]["hashes"]} == {
        "SHA-256": ecs["file"]["hash"]["sha256"], "SHA-1": ecs["file"]["hash"]["sha1"], "MD5": ecs["file"]["hash"]["md5"]}
    assert subject["dst_endpoint"]["domain"] == "pool.supportxmr.com"
    assert [e["data"]["detail"] for e in o["evidences"][1:]] == [e["detail"] for e in ecs["minerwatch"]["evidence"]]
    assert o["finding_info"]["attacks"][0]["technique"] == {"uid": "T1496", "name": "Resource Hijacking"}
    validate(ocsf.build(findings["xmrig"]))


def test_process_and_container_finding(findings):
    """A process finding in a container maps to evidences[0].process and the container profile."""
    import dataclasses

    from agent.model import ContainerInfo, ProcessSnapshot

    f = findings["xmrig"]
    proc = ProcessSnapshot(pid=4242, ppid=1, name="xmrig", exe="/app/xmrig", cmdline=("/app/xmrig", "-o", "x:1"),
                           uid=0, user="root", cwd="/app", hashes=f.file.hashes, container_id="c" * 64)
    f = dataclasses.replace(f, process=proc, file=None, container=ContainerInfo(id="c" * 64, name="web", image="x/y:1"))
    o = validate(ocsf.build(f))
    p = o["evidences"][0]["process"]
    assert (p["pid"], p["cmd_line"], p["file"]["path"], p["parent_process"]["pid"]) == (4242, "/app/xmrig -o x:1", "/app/xmrig", 1)
    assert o["container"]["uid"] == "c" * 64 and o["container"]["image"]["name"] == "x/y:1"
    assert o["metadata"]["profiles"] == ["host", "container"]


def test_hostile_alert_stays_bounded(findings):
    """A command line of 64 KiB and a huge path: the OCSF alert fits in 16 KiB and names what was cut."""
    import dataclasses

    from agent.model import ProcessSnapshot

    f = findings["xmrig"]
    proc = ProcessSnapshot(pid=7, name="x", exe="/" + "p" * 5000, cmdline=("x",) + ("A" * 4000,) * 16)
    o = validate(ocsf.build(dataclasses.replace(f, process=proc)))
    assert len(json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode()) <= alert.MAX_ALERT_BYTES
    assert o["unmapped"]["minerwatch"]["truncated"]
    small = validate(ocsf.fit(o, 4096))
    assert len(encode(small)) <= 4096
    digests = [h["value"] for h in small["evidences"][0]["file"]["hashes"]] + [x["value"] for x in small["observables"]]
    assert sorted(digests) == sorted([f.file.hashes.md5, f.file.hashes.sha1, f.file.hashes.sha256] * 1 + [f.file.hashes.sha256])


def _udp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def test_pipeline_spools_and_sends_ocsf(tmp_path, findings):
    """Through the real pipeline: the alert file and a UDP syslog receiver get OCSF lines, deduped like ECS."""
    rx = _udp_listener()
    port = rx.getsockname()[1]
    cfg = _config(tmp_path, format="ocsf", syslog=f"udp://127.0.0.1:{port}?max_bytes=4096")
    with AlertPipeline(cfg, fsync=False, idle_wait=0.05) as pipeline:
        for f in findings.values():
            assert pipeline.submit(alert.build(f))
        assert not pipeline.submit(alert.build(findings["xmrig"]))  # a repeat, suppressed
        assert pipeline.flush(20)
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 2
    got = [validate(json.loads(line)) for line in lines]
    assert {a["evidences"][0]["file"]["name"] for a in got} == {"xmrig", "start.sh"}
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "state" / "alerts" / "spool").glob("*") if p.is_file())
    assert b'"class_uid":2004' in spooled and b'"ecs":' not in spooled
    for _ in got:
        msg = rx.recv(65536)
        assert len(msg) <= 4096
        head, body = msg.split(b" - ", 1)
        assert head.startswith(b"<34>1 ")  # auth.crit: the severity read from the OCSF alert
        assert b" minerwatch " in head and b" alert" in head
        validate(json.loads(body))
    rx.close()


def test_alerts_test_sends_ocsf(tmp_path):
    """`minerwatch alerts test` with format = "ocsf" writes the marked test alert as OCSF."""
    conf = tmp_path / "config.toml"
    conf.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n[alerts]\nstdout = false\nformat = "ocsf"\n'
                    f'file = "{tmp_path}/alerts.jsonl"\n')
    proc = subprocess.run([sys.executable, "-m", "agent", "alerts", "test", "--config", str(conf)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = (tmp_path / "alerts.jsonl").read_text().splitlines()
    o = validate(json.loads(line))
    assert o["unmapped"]["minerwatch"]["test"] is True and o["metadata"]["labels"] == ["minerwatch-test"]
    assert o["message"].startswith("TEST ALERT")


def test_ecs_stays_the_default(tmp_path, findings):
    cfg = _config(tmp_path)
    with AlertPipeline(cfg, fsync=False, idle_wait=0.05) as pipeline:
        pipeline.submit(alert.build(findings["xmrig"]))
        assert pipeline.flush(20)
    (line,) = (tmp_path / "alerts.jsonl").read_text().splitlines()
    validate_ecs(json.loads(line))
