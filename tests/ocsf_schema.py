"""Validate OCSF alerts against the OCSF 1.5.0 Detection Finding schema vendored beside this file.

``tests/ocsf_schema_detection_finding.json`` is the JSON Schema of the Detection Finding class
(class_uid 2004) of OCSF 1.5.0, as the PyPI package ``py-ocsf-models`` 0.10.0 (Apache-2.0; Python
models of the schema published at schema.ocsf.io) defines it: generated offline with
``DetectionFinding.model_json_schema(mode="validation")`` (pydantic 2), the version and source in its
``$comment``. No package on PyPI ships the schema server's own JSON Schema for offline use, so it is
vendored. To regenerate: ``pip install py-ocsf-models==0.10.0`` and rerun that call.

The generated schema checks the required attributes (metadata.product, severity_id, activity_id,
finding_info.uid/title, time, type_uid), every enum (severity_id, activity_id, type_uid, status_id...),
and the types of each object it models; it allows attributes it does not model (the host and container
profiles' ``device`` and ``container``, ``evidences[].process``/``file``). ``validate`` adds what the
class definition says besides: no attribute outside the class and its profiles at the top level,
``type_uid = class_uid * 100 + activity_id``, the ATT&CK mapping, and a severity word that agrees.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parent / "ocsf_schema_detection_finding.json"
PROFILE_ATTRIBUTES = {"device", "container"}  # the host and container profiles


@cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@cache
def attributes() -> frozenset[str]:
    return frozenset(json.loads(SCHEMA_PATH.read_text())["properties"])


def validate(alert: dict) -> dict:
    """Raise (jsonschema.ValidationError or AssertionError) unless ``alert`` is an OCSF Detection Finding."""
    validator().validate(alert)
    extra = set(alert) - attributes() - PROFILE_ATTRIBUTES
    assert not extra, f"attributes outside Detection Finding and its profiles: {sorted(extra)}"
    assert alert["class_uid"] == 2004 and alert["category_uid"] == 2
    assert alert["type_uid"] == alert["class_uid"] * 100 + alert["activity_id"]
    assert alert["metadata"]["version"].startswith("1.")
    (attack,) = alert["finding_info"]["attacks"]
    assert (attack["technique"]["uid"], attack["tactic"]["uid"]) == ("T1496", "TA0040")
    words = {2: "low", 3: "medium", 4: "high", 5: "critical"}
    assert words[alert["severity_id"]] == alert["unmapped"]["minerwatch"]["severity"] == alert["severity"].lower()
    assert alert["time"] > 0 and alert["finding_info"]["uid"] == alert["metadata"]["correlation_uid"]
    return alert
