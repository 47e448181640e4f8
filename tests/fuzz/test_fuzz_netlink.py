"""Fuzz the process-events connector decoder with real captured datagrams and mutations of them."""
from __future__ import annotations

import pytest
from hypothesis import given

from agent.collectors.cn_proc import Ack, ExitEvent, ForkEvent, OtherEvent, Problem, parse_messages
from agent.events import ExecEvent
from tests.fuzz.fuzzing import FUZZ, inputs, seed_ids, seed_paths

KINDS = (ExecEvent, ForkEvent, ExitEvent, Ack, OtherEvent, Problem)


def decoded_ok(buf: bytes) -> list:
    out = parse_messages(buf)
    assert all(isinstance(m, KINDS) for m in out)
    assert len(out) <= len(buf) // 16 + 1  # one message per 16-byte header at most, plus one problem
    for m in out:
        if isinstance(m, ExecEvent):
            assert isinstance(m.pid, int) and isinstance(m.tgid, int)
    return out


@pytest.mark.parametrize("path", seed_paths("netlink"), ids=seed_ids("netlink"))
def test_corpus_replays(path):
    """Captured and hand-made datagrams decode; real captures hold no malformed message."""
    out = decoded_ok(path.read_bytes())
    assert out
    if path.name.startswith("live-"):
        assert not any(isinstance(m, Problem) and m.kind == "malformed" for m in out), out


@FUZZ
@given(buf=inputs("netlink", max_random=256))
def test_mutated_datagrams_never_raise(buf):
    """Any datagram: decoded messages or Problems, never an exception, bounded output."""
    decoded_ok(buf)


@FUZZ
@given(buf=inputs("netlink", max_random=256))
def test_mutated_datagrams_fast_path_agrees(buf):
    """The one-unpack path for a lone exec datagram answers exactly like the general walk, on any datagram."""
    from agent.collectors.cn_proc import _walk

    assert parse_messages(buf) == _walk(buf)
