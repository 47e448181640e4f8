"""Fuzz the miner-config parser (xmrig config.json and look-alikes) with real and mutated configs."""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collectors.minerconfig import MAX_CONFIG_BYTES, parse_miner_config
from agent.model import MinerConfig
from tests.fuzz.fuzzing import FUZZ, inputs, json_safe, seed_ids, seed_paths

MINERS = {"xmrig-full.json", "commented.jsonc", "pools-dict.json", "truncated.json", "deep-pools.json",
          "bom-and-invalid-utf8.json", "top-level-url.json", "wrong-types.json"}
NOT_MINERS = {"not-a-miner-db.json", "package.json", "deep-array.json"}


def parsed_ok(data: bytes | str) -> MinerConfig | None:
    started = time.monotonic()
    found = parse_miner_config(data, "/app/config.json")
    assert time.monotonic() - started < 10
    if found is not None:
        assert isinstance(found, MinerConfig) and found.path == "/app/config.json"
        assert all(isinstance(p, str) and p for p in found.pools) and all(isinstance(u, str) for u in found.users)
        assert found.pools or found.keys
        json_safe([found.pools, found.users, found.keys])
    return found


@pytest.mark.parametrize("path", seed_paths("minerconfig"), ids=seed_ids("minerconfig"))
def test_corpus_replays(path):
    """Each seed is recognised as a miner config or not, as its name says; deep nesting never raises."""
    found = parsed_ok(path.read_bytes())
    if path.name in MINERS:
        assert found is not None, path.name
    if path.name in NOT_MINERS:
        assert found is None, path.name


@FUZZ
@given(data=inputs("minerconfig", max_random=2048))
def test_mutated_configs_never_raise(data):
    """Any bytes in a config.json: a MinerConfig or None, never an exception."""
    parsed_ok(data)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["pools", "url", "user", "wallet", "pool", "cpu", "randomx", "algo", "x"]),
                           json_values, max_size=5))
def test_any_json_document_is_handled(doc):
    """Any JSON object shaped like a config (wrong types in every key) parses without raising."""
    parsed_ok(json.dumps(doc))


@FUZZ
@given(url=st.sampled_from(["stratum+tcp://", "stratum+ssl://", "stratum2+tcp://"]).flatmap(
    lambda s: st.from_regex(r"[a-z0-9.-]{1,30}:[0-9]{2,5}", fullmatch=True).map(lambda h: s + h)),
       user=st.text(max_size=30), comments=st.booleans())
def test_pool_urls_are_always_found(url, user, comments):
    """A stratum pool URL in pools[] is reported, with comments and trailing commas or without."""
    text = json.dumps({"pools": [{"url": url, "user": user}]})
    if comments:
        text = "// miner\n" + text.replace("}]", ",}, /* x */]")
    found = parsed_ok(text)
    assert found is not None and url in found.pools


def test_one_mebibyte_of_nesting_is_handled_quickly():
    """The largest config the agent reads (1 MiB), nested as deep as it can be, is parsed without error."""
    for text in ("[" * MAX_CONFIG_BYTES, "{\"a\":" * (MAX_CONFIG_BYTES // 5), "/*" + "[" * (MAX_CONFIG_BYTES - 2)):
        started = time.monotonic()
        assert parsed_ok(text) is None
        assert time.monotonic() - started < 5
