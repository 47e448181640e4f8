"""Syslog sink: RFC 5424 lines carrying the alert JSON over UDP, TCP (octet counting) and a unix socket."""
from __future__ import annotations

import dataclasses
import os

import pytest

from agent import alert as alert_builder
from agent.errors import ConfigError
from agent.model import Evidence, Severity
from agent.sinks.base import Record, SinkError, encode
from agent.sinks.configured import build_sinks
from agent.sinks.syslog import SyslogSink, format_message
from tests.alerts_schema import validate
from tests.helpers.alert_factory import HOST, PipelineSet, make_alert, make_config, make_finding
from tests.helpers.receivers import SyslogReceiver, parse_rfc5424


def check_message(msg, alert: dict) -> None:
    """One received message is the RFC 5424 form of ``alert``."""
    assert msg.app_name == "minerwatch" and msg.procid == str(os.getpid()) and msg.msgid == "alert"
    assert msg.hostname == HOST and msg.timestamp == alert["@timestamp"]
    assert msg.facility == 4 and msg.structured_data == "-"
    assert validate(msg.alert) == alert


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_syslog_receiver_gets_valid_rfc5424_with_the_alert_json(tmp_path, transport):
    """A real syslog receiver on loopback gets one valid RFC 5424 message per alert, the JSON as MSG."""
    alerts = [make_alert(i, severity=s) for i, s in enumerate(Severity) if s]
    with SyslogReceiver(transport) as rx, PipelineSet() as pipes:
        p = pipes.make(make_config(tmp_path, syslog=rx.url))
        for a in alerts:
            assert p.submit(a)
        msgs = rx.wait_for_messages(len(alerts))
        assert p.flush(10)
        assert p.stats()["sinks"]["syslog"]["delivered"] == len(alerts)
    assert not rx.errors
    for msg, alert in zip(msgs, alerts):
        check_message(msg, alert)
    assert [m.severity for m in msgs] == [5, 4, 3, 2]  # low notice, medium warning, high err, critical crit


def test_tcp_syslog_reconnects_after_the_receiver_restarts(tmp_path):
    """When the TCP receiver goes away and comes back on the same port, later alerts still arrive, none lost."""
    rx = SyslogReceiver("tcp").start()
    try:
        with PipelineSet() as pipes:
            p = pipes.make(make_config(tmp_path, syslog=rx.url))
            p.submit(make_alert(1))
            rx.wait_for_messages(1)
            assert p.flush(10)
            rx.stop()
            p.submit(make_alert(2))  # refused or into a dead connection: must be retried
            rx.start()
            p.submit(make_alert(3))
            msgs = rx.wait_for_messages(3, timeout=20)
            assert p.flush(20)
            stats = p.stats()["sinks"]["syslog"]
    finally:
        rx.stop()
    assert [m.alert["minerwatch"]["finding_id"] for m in msgs] == [f"{n:032x}" for n in (2, 3, 4)]
    assert stats["delivered"] == 3


def test_unix_datagram_socket_and_facility_from_the_url(tmp_path):
    """unix:///path works (datagram, like /dev/log) and ?facility=local3 sets the facility."""
    alert = make_alert(5, severity=Severity.CRITICAL)
    with SyslogReceiver("unix") as rx:
        sink = SyslogSink(rx.url + "?facility=local3")
        sink.send(Record(encode(alert), alert))
        sink.close()
        (msg,) = rx.wait_for_messages(1)
    assert msg.facility == 19 and msg.severity == 2
    assert validate(msg.alert) == alert


def test_test_alert_is_marked_in_msgid():
    """The synthetic alert of `minerwatch alerts test` says so in MSGID."""
    alert = make_alert(1, test=True)
    msg = parse_rfc5424(format_message(Record(encode(alert), alert), procid=42))
    assert msg.msgid == "test" and msg.procid == "42" and msg.alert["minerwatch"]["test"] is True


def test_unreachable_udp_port_is_reported_as_a_failure():
    """Sending to a closed UDP port on loopback surfaces the ICMP refusal on a following send."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sink = SyslogSink(f"udp://127.0.0.1:{port}", timeout=1)
    alert = make_alert(1)
    errors = 0
    for _ in range(3):
        try:
            sink.send(Record(encode(alert), alert))
        except SinkError:
            errors += 1
    sink.close()
    assert errors >= 1


def padded_alert(n: int = 1, args: int = 400, evidence: int = 0) -> dict:
    """A schema-valid alert for a miner whose argv is padded (each arg full of escape characters); with
    ``evidence``, that many more evidence items quote the padded command line."""
    f = make_finding(n)
    argv = ("/tmp/xmrig", *["\x1b[2J" + "0" * 120] * args, "-o", "stratum+tcp://pool.example:3333")
    quoted = tuple(Evidence("cmdline", f"pattern {i}: {' '.join(argv)}", 5) for i in range(evidence))
    f = dataclasses.replace(f, process=dataclasses.replace(f.process, cmdline=argv), evidence=f.evidence + quoted)
    return validate(alert_builder.build(f, host_name=HOST))


@pytest.mark.parametrize("transport, limit", [("udp", 480), ("udp", 2048), ("unix", 1024), ("tcp", 600)])
def test_message_over_the_limit_is_cut_to_it_and_delivered_as_one_valid_frame(transport, limit):
    """Over ?max_bytes=, the message is cut to the limit (a valid RFC 5424 frame, its JSON cut and marked) and
    delivered, not given up; from 1 KiB on the JSON stays whole and schema-valid, its cuts named."""
    alert = padded_alert()
    assert len(encode(alert)) > limit
    with SyslogReceiver(transport) as rx:
        sink = SyslogSink(f"{rx.url}?max_bytes={limit}")
        sink.send(Record(encode(alert), alert))
        sink.close()
        (msg,) = rx.wait_for_messages(1)
    assert not rx.errors
    raw = format_message(Record(encode(alert), alert), procid=os.getpid(), max_bytes=limit)
    assert len(raw) <= limit and raw.endswith(msg.msg)
    assert msg.msgid == "alert" and msg.hostname == HOST and msg.timestamp == alert["@timestamp"]
    if limit >= 1024:
        got = validate(msg.alert)
        assert got["minerwatch"]["finding_id"] == alert["minerwatch"]["finding_id"]
        assert got["event"]["id"] == alert["event"]["id"]
        assert "process.command_line" in got["minerwatch"]["truncated"] or got["minerwatch"]["truncated"] == ["*"]
    else:  # below what even the identifying fields take: the JSON text is cut, and says so
        assert msg.alert is None and msg.msg.endswith("\u2026".encode())
        assert msg.msg.startswith(b'{"@timestamp":"' + alert["@timestamp"].encode())


def test_default_udp_limit_is_8_kib_and_the_cut_alert_keeps_head_and_tail():
    """By default a UDP message is at most 8 KiB: a 16 KiB alert is cut to it (argv[0] and the pool URL kept)."""
    alert = padded_alert(args=2000, evidence=10)
    assert 8192 < len(encode(alert)) <= alert_builder.MAX_ALERT_BYTES
    with SyslogReceiver("udp") as rx:
        sink = SyslogSink(rx.url)
        sink.send(Record(encode(alert), alert))
        sink.close()
        (msg,) = rx.wait_for_messages(1)
    got = validate(msg.alert)
    assert len(format_message(Record(encode(alert), alert), max_bytes=8192)) <= 8192
    assert got["process"]["args"][0] == "/tmp/xmrig" and got["process"]["args"][-1] == "stratum+tcp://pool.example:3333"
    assert got["process"]["command_line"].endswith("-o stratum+tcp://pool.example:3333") and "\u2026" in got["process"]["command_line"]
    assert {"process.args", "process.command_line"} <= set(got["minerwatch"]["truncated"])


@pytest.mark.parametrize("url, needle", [
    ("udp://127.0.0.1:514?facility=nope", "unknown facility"),
    ("tcp://:514", "HOST:PORT"),
    ("udp://127.0.0.1:99999", "bad port"),
    ("udp://127.0.0.1:514?max_bytes=100", "at least 480"),
    ("udp://127.0.0.1:514?max_bytes=70000", "at most 65507"),
    ("tcp://127.0.0.1:514?max_bytes=8k", "whole number"),
])
def test_bad_syslog_url_is_a_config_error_naming_the_key(tmp_path, url, needle):
    """A bad [alerts] syslog URL is a ConfigError that names the key."""
    with pytest.raises(ConfigError) as err:
        build_sinks(make_config(tmp_path, syslog=url))
    assert err.value.key == "[alerts] syslog" and needle in str(err.value)
