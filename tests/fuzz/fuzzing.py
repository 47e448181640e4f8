"""The fuzz harness: the seed corpus in ``tests/fuzz/corpus/<kind>/`` and byte-level mutations of it.

Every fuzz module first replays its corpus (one test per seed file, so a regression names
the file), then runs a bounded Hypothesis pass (``FUZZ``: 200 examples, no deadline) over
mutated seeds and free-form input. Add a file to the corpus to keep an input that once
found a bug; ``python -m tests.fuzz.make_corpus`` refreshes the samples taken from a live
host (files named ``live-*``).
"""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parent / "corpus"

# Bounded: the whole fuzz set runs in well under a minute on 2 shared cores.
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Bytes that tend to break parsers: separators, escapes, NUL, invalid UTF-8, huge numbers.
INTERESTING = (b"\x00", b"\n", b"\r\n", b" ", b":", b"|", b"(", b")", b"[", b"]", b"{", b"}", b'"', b"\\",
               b"=", b"#", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"-1", b"0x", b"99999999999999999999",
               b"\t", b"/", b"..", "\u202e".encode(), b"socket:[", b"stratum+tcp://")


def seed_paths(kind: str) -> list[Path]:
    """The seed files of one input kind, sorted (a missing kind is an error: the corpus is part of the test)."""
    paths = sorted(p for p in (CORPUS / kind).iterdir() if p.is_file())
    assert paths, f"no seeds in {CORPUS / kind}"
    return paths


def seeds(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in seed_paths(kind)]


def seed_ids(kind: str) -> list[str]:
    return [p.name for p in seed_paths(kind)]


@st.composite
def mutated(draw, corpus: list[bytes], max_ops: int = 6) -> bytes:
    """A seed with a few random edits: flips, inserts, deletions, duplications, splices with another seed."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(("flip", "insert", "interesting", "delete", "duplicate", "splice", "truncate")))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "interesting":
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 32))]
        elif op == "duplicate":
            chunk = data[pos:pos + draw(st.integers(1, 64))]
            data[pos:pos] = chunk * draw(st.integers(1, 8))
        elif op == "splice":
            other = draw(st.sampled_from(corpus))
            cut = draw(st.integers(0, len(other)))
            data[pos:] = other[cut:]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def inputs(kind: str, max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Mostly mutated seeds of ``kind``, sometimes free random bytes."""
    corpus = seeds(kind)
    return st.one_of(mutated(corpus), mutated(corpus), mutated(corpus), st.binary(max_size=max_random))


def json_safe(value) -> bool:
    """True when ``value`` serialises to JSON and encodes as strict UTF-8 (what an alert needs)."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return True
