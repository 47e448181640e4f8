"""Fuzz the procfs parsers (stat, status, cmdline, environ) with real and mutated /proc samples."""
from __future__ import annotations


import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collectors.procparse import (
    ARG_MAX_CHARS,
    CMDLINE_MAX_CHARS,
    ENV_MAX_VARS,
    ENV_VALUE_MAX,
    REDACTED,
    cap_cmdline,
    decode,
    filter_environ,
    parse_status,
    split_cmdline,
)
from agent.collectors.procread import Stat, parse_stat
from tests.fuzz.fuzzing import FUZZ, inputs, json_safe, seed_ids, seed_paths

STAT_INTS = ("ppid", "flags", "utime", "stime", "num_threads", "start_ticks")


def stat_ok(text: str) -> Stat | None:
    """parse_stat's contract: the documented fields, or ValueError (what procfs turns into a partial snapshot)."""
    try:
        st_ = parse_stat(text)
    except ValueError:
        return None
    assert isinstance(st_, Stat) and all(isinstance(getattr(st_, k), int) for k in STAT_INTS)
    assert json_safe(st_._asdict())
    return st_


def status_ok(text: str) -> dict:
    """parse_status never raises: a malformed Uid leaves the uid out (the snapshot marks it partial)."""
    out = parse_status(text)
    assert set(out) <= {"name", "uid"} and isinstance(out.get("uid", 0), int)
    return out


def cmdline_ok(raw: bytes) -> list[str]:
    args = split_cmdline(raw)
    assert all(isinstance(a, str) for a in args) and json_safe(args)
    capped, truncated = cap_cmdline(args)
    assert sum(len(a) + 1 for a in capped) <= CMDLINE_MAX_CHARS + 2 * (ARG_MAX_CHARS + 64)
    assert all(len(a) <= ARG_MAX_CHARS + 1 or a.startswith("\u2026[") for a in capped)
    if not truncated:
        assert capped == args
    return args


def environ_ok(raw: bytes, extra=()) -> tuple:
    kept = filter_environ(raw, extra)
    assert len(kept) <= ENV_MAX_VARS and json_safe(kept)
    for name, value in kept:
        assert len(name) <= 256 and len(value) <= 4 * ENV_VALUE_MAX  # \xNN escapes are 4 chars a byte
        for word in ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "PRIVATE"):
            if word in name.upper():
                assert value == REDACTED, (name, value)
    return kept


@pytest.mark.parametrize("path", seed_paths("proc_stat"), ids=seed_ids("proc_stat"))
def test_stat_corpus(path):
    """Real and odd /proc/PID/stat samples parse, comm kept whole (spaces, parentheses, newlines)."""
    st_ = stat_ok(decode(path.read_bytes()))
    assert st_ is not None and st_.start_ticks > 0


@pytest.mark.parametrize("path", seed_paths("proc_status"), ids=seed_ids("proc_status"))
def test_status_corpus(path):
    """Status samples give a name and, when well-formed, a uid."""
    status_ok(decode(path.read_bytes()))


@pytest.mark.parametrize("path", seed_paths("proc_cmdline"), ids=seed_ids("proc_cmdline"))
def test_cmdline_corpus(path):
    """Command-line samples split into JSON-safe arguments, capped with head and tail kept."""
    args = cmdline_ok(path.read_bytes())
    assert args
    capped, _ = cap_cmdline(args)
    assert capped[0] == args[0][:ARG_MAX_CHARS] or capped[0].startswith(args[0][:ARG_MAX_CHARS])
    assert capped[-1][:ARG_MAX_CHARS] == args[-1][:ARG_MAX_CHARS]


@pytest.mark.parametrize("path", seed_paths("proc_environ"), ids=seed_ids("proc_environ"))
def test_environ_corpus(path):
    """Environment samples keep only miner-relevant variables, secrets redacted."""
    kept = dict(environ_ok(path.read_bytes()))
    assert "HOME" not in kept and "PATH" not in kept


@FUZZ
@given(data=inputs("proc_stat"))
def test_stat_mutated(data):
    """Any stat bytes: the fields or ValueError."""
    stat_ok(decode(data))


@FUZZ
@given(comm=st.text(st.characters(blacklist_characters="\x00"), max_size=15),
       nums=st.lists(st.integers(0, 2**63 - 1), min_size=49, max_size=49), state=st.sampled_from("RSDZTtXIP"))
def test_stat_round_trip_with_any_comm(comm, nums, state):
    """A stat line with any comm (even one holding ') 1 2 (' or newlines) gives back exactly its fields."""
    line = f"{nums[0]} ({comm}) {state} " + " ".join(map(str, nums[1:])) + "\n"
    st_ = parse_stat(line)
    assert st_ == Stat(comm=comm, state=state, ppid=nums[1], flags=nums[6], utime=nums[11], stime=nums[12],
                       num_threads=nums[17], start_ticks=nums[19])


@FUZZ
@given(data=inputs("proc_status"))
def test_status_mutated(data):
    """Any status bytes: a dict, never an exception."""
    status_ok(decode(data))


@FUZZ
@given(data=inputs("proc_cmdline", max_random=4096))
def test_cmdline_mutated(data):
    """Any cmdline bytes: JSON-safe arguments within the caps."""
    cmdline_ok(data)


@FUZZ
@given(args=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b), min_size=2, max_size=20))
def test_cmdline_round_trip(args):
    """NUL-separated arguments come back one for one (bytes that are not UTF-8 as \\xNN escapes)."""
    assert split_cmdline(b"\x00".join(args) + b"\x00") == [decode(a) for a in args]


@FUZZ
@given(data=inputs("proc_environ", max_random=4096), extra=st.lists(st.text(max_size=8), max_size=3))
def test_environ_mutated(data, extra):
    """Any environ bytes: a bounded, JSON-safe selection with secrets redacted."""
    environ_ok(data, extra)


@FUZZ
@given(names=st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), max_size=10),
       values=st.lists(st.binary(max_size=64).filter(lambda b: b"\x00" not in b), min_size=10, max_size=10))
def test_environ_never_keeps_unrelated_variables(names, values):
    """A variable whose name and value say nothing about mining is never kept."""
    unrelated = [n for n in names if not any(w in n.upper() for w in (
        "POOL", "WALLET", "XMR", "MINING", "MINER", "MONERO", "NICEHASH", "STRATUM", "ALGO", "COIN", "WORKER",
        "RIG_ID", "DONATE", "THREADS"))]
    raw = b"".join(n.encode() + b"=" + v.replace(b"tratum", b"") + b"\x00" for n, v in zip(unrelated, values))
    assert filter_environ(raw) == ()
