"""The shipper snippets of docs/shipping.md, taken from the page itself.

- rsyslog: validated by Debian 12's own ``rsyslogd -N1`` (the snippet as /etc/rsyslog.d/minerwatch.conf
  beside the stock /etc/rsyslog.conf) in the suite's Debian 12 image; a misspelled option in it is
  refused (so the check can fail).
- Filebeat (YAML), Vector (TOML), Fluent Bit (classic): none is packaged in Debian 12, so each is
  parsed and its key options are checked against what the file sink really writes: a line written by
  ``FileSink`` is decoded as the snippet says and the id the snippet names resolves to the alert's
  ``event.id``; the path is the default of ``[alerts] file``; Fluent Bit's time format parses the
  alert's ``@timestamp``.
"""
from __future__ import annotations

import json
import re
import tomllib
from datetime import datetime

import pytest
import yaml

from agent.config import AlertsSection
from agent.sinks.base import Record, encode
from agent.sinks.file import FileSink
from tests.helpers import containers, debian_image
from tests.helpers.alert_factory import make_alert
from tests.helpers.containers import REPO_ROOT

DOC = REPO_ROOT / "docs" / "shipping.md"
PATH = AlertsSection().file


def snippets() -> dict[str, str]:
    """Fenced blocks of the page by label: the word after the language (```yaml filebeat), else the language."""
    out = {}
    fences = re.compile(r"^```(\w+)(?: ([\w-]+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    for lang, label, body in fences.findall(DOC.read_text()):
        key = label or lang
        assert key not in out, f"two snippets labelled {key}"
        out[key] = body
    return out


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> bytes:
    """One alert line as the file sink writes it."""
    path = tmp_path_factory.mktemp("shipping") / "alerts.jsonl"
    alert = make_alert(3)
    sink = FileSink(str(path))
    sink.send(Record(encode(alert), alert))
    sink.close()
    data = path.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return data


def dotted(doc: dict, path: str):
    for part in path.split("."):
        doc = doc[part]
    return doc


def test_every_shipper_has_a_snippet():
    assert set(snippets()) == {"filebeat", "vector", "fluent-bit", "fluent-bit-parsers", "rsyslog"}


def test_filebeat_snippet(line):
    cfg = yaml.safe_load(snippets()["filebeat"])
    (inp,) = cfg["filebeat.inputs"]
    assert inp["type"] == "filestream" and inp["id"]
    assert inp["paths"] == [PATH]
    (parser,) = inp["parsers"]
    assert parser["ndjson"]["target"] == "" and parser["ndjson"]["overwrite_keys"] is True
    (proc,) = inp["processors"]
    assert proc["fingerprint"]["target_field"] == "@metadata._id"
    (field,) = proc["fingerprint"]["fields"]
    event = json.loads(line)  # ndjson with target "": the alert's keys at the top of the event
    assert dotted(event, field) == event["event"]["id"]
    assert cfg["output.elasticsearch"]["hosts"]


def test_vector_snippet(line):
    cfg = tomllib.loads(snippets()["vector"])
    (src_id, src), = cfg["sources"].items()
    assert src["type"] == "file" and src["include"] == [PATH]
    (remap_id, remap), = cfg["transforms"].items()
    assert remap["type"] == "remap" and remap["inputs"] == [src_id]
    assert remap["source"].strip() == ". = parse_json!(.message)"  # the file source puts the line in .message
    (_, sink), = cfg["sinks"].items()
    assert sink["type"] == "elasticsearch" and sink["inputs"] == [remap_id] and sink["endpoints"]
    assert sink["bulk"]["index"]
    event = json.loads(line.rstrip(b"\n"))
    assert dotted(event, sink["id_key"]) == event["event"]["id"]


def classic(text: str) -> list[tuple[str, dict[str, str]]]:
    """Fluent Bit's classic format: [SECTION] headers, then 'Key value' lines indented by 4 spaces."""
    sections: list[tuple[str, dict[str, str]]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if m := re.fullmatch(r"\[([A-Z]+)\]", raw):
            sections.append((m[1], {}))
            continue
        m = re.fullmatch(r" {4}(\S+)\s+(\S.*)", raw)
        assert m and sections, f"line {n} is not '    Key value' inside a section: {raw!r}"
        key = m[1].lower()  # keys are case-insensitive
        assert key not in sections[-1][1], f"line {n}: {m[1]} twice"
        sections[-1][1][key] = m[2].strip()
    return sections


def test_fluent_bit_snippet(line):
    main = dict(classic(snippets()["fluent-bit"]))
    parsers = classic(snippets()["fluent-bit-parsers"])
    assert main["SERVICE"]["parsers_file"] == "parsers-minerwatch.conf"
    tail, es = main["INPUT"], main["OUTPUT"]
    assert tail["name"] == "tail" and tail["path"] == PATH and es["match"] == tail["tag"]
    (kind, parser), = parsers
    assert kind == "PARSER" and parser["name"] == tail["parser"] and parser["format"] == "json"
    assert int(tail["buffer_max_size"].rstrip("k")) << 10 >= 16 << 10  # the largest alert fits
    assert es["name"] == "es" and "generate_id" not in es
    m = re.fullmatch(r"\$(\w+)\['(\w+)'\]", es["id_key"])  # a record accessor
    event = json.loads(line)
    assert m and event[m[1]][m[2]] == event["event"]["id"]
    assert parser["time_key"] == "@timestamp" and parser["time_keep"].lower() == "off"
    # %L is Fluent Bit's fractional seconds; the alert's @timestamp must parse with the format
    datetime.strptime(event["@timestamp"], parser["time_format"].replace("%L", "%f"))


@pytest.fixture(scope="module")
def debian(docker_client, request):
    return debian_image.image_for_tests(docker_client, request).tag


def rsyslog_check(client, image: str, conf: str) -> tuple[int, str]:
    c = containers.run_container(client, image, ["sleep", "infinity"], name_prefix="mwtest-shipping")
    debian_image.put_files(c, {"/etc/rsyslog.d/minerwatch.conf": (conf.encode(), 0o644)})
    debian_image.run(c, "mkdir", "-p", "/var/log/minerwatch", "/var/spool/rsyslog", check=True)
    return debian_image.run(c, "rsyslogd", "-N1", "-f", "/etc/rsyslog.conf")


def test_rsyslog_snippet_passes_rsyslogd_config_check(docker_client, debian):
    conf = snippets()["rsyslog"]
    assert f'file="{PATH}"' in conf and 'reopenOnTruncate="on"' in conf and 'mode="inotify"' in conf
    code, out = rsyslog_check(docker_client, debian, conf)
    assert code == 0 and "error" not in out.lower(), out
    assert "End of config validation run" in out, out
    code, out = rsyslog_check(docker_client, debian, conf.replace("reopenOnTruncate", "reopenOnTruncat"))
    assert code != 0 and "reopenOnTruncat" in out, out  # a misspelled option is refused: the check is real
