"""Validate alerts against the JSON Schema kept in the repo (agent/schema/alert.schema.json)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "agent" / "schema" / "alert.schema.json"


@cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def validate(alert: dict) -> dict:
    """Raise jsonschema.ValidationError unless ``alert`` follows the schema; return it."""
    validator().validate(alert)
    sev_words = {21: "low", 47: "medium", 73: "high", 99: "critical"}
    assert sev_words[alert["event"]["severity"]] == alert["minerwatch"]["severity"]
    return alert
