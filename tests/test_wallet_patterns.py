"""The wallet patterns spelt out by halves (signatures/wallet_patterns.txt): rebuilt here, and checked
against what they mean, at every position where the deciding character can be.

RE2 has no look-ahead, so "95 base58 characters, not all of them hex" (Monero) and "26-35 characters
with an upper- and a lower-case letter side by side" (Bitcoin base58) are spelt out as alternations.
One alternative per position of the deciding character made programs of 35,000-44,000 RE2
instructions each (RE2 copies ``x{k}`` k times), about 20 MiB resident for the patterns and their
set; by halves, the same language takes a tenth of that.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest

from agent.signatures import load_bundle

B = "[1-9A-HJ-NP-Za-km-z]"  # base58
H = "[1-9A-Fa-f]"  # the base58 characters that are hex digits
N = "[G-HJ-NP-Zg-km-z]"  # the base58 characters that are not
P = "(?:[a-km-z][A-HJ-NP-Z]|[A-HJ-NP-Z][a-km-z])"  # a lower- and an upper-case letter side by side

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
HEX58 = "123456789ABCDEFabcdef"
NOT_HEX = "".join(c for c in BASE58 if c not in HEX58)
LOWER = "abcdefghijkmnopqrstuvwxyz"
UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def _rep(x: str, n: int, most: int | None = None) -> str:
    if most is not None:
        return f"{x}{{{n},{most}}}"
    return "" if n == 0 else x if n == 1 else f"{x}{{{n}}}"


def not_all_hex(n: int) -> str:
    """``n`` base58 characters, at least one not a hex digit: in the first half, or the first half is
    all hex and it is in the second."""
    if n == 1:
        return N
    a = n // 2
    return f"(?:{not_all_hex(a)}{_rep(B, n - a)}|{_rep(H, a)}{not_all_hex(n - a)})"


def mixed_pair(n: int) -> str:
    """``n`` base58 characters with a mixed-case pair side by side: in the first half, across the
    middle, or in the second half."""
    if n == 2:
        return P
    if n == 3:
        return f"(?:{P}{B}|{B}{P})"
    a = n // 2
    b = n - a
    return f"(?:{mixed_pair(a)}{_rep(B, b)}|{_rep(B, a - 1)}{P}{_rep(B, b - 1)}|{_rep(B, a)}{mixed_pair(b)})"


def _late_pair() -> str:
    """2-10 characters with the pair at position 0-8 (positions 24-32 of a Bitcoin address's tail)."""
    return "|".join(f"{_rep(B, k)}{P}{_rep(B, 0, 8 - k)}" if k < 8 else f"{_rep(B, k)}{P}" for k in range(9))


EXPECTED = {
    "monero_address": rf"\b4[1-9AB]{not_all_hex(93)}\b",
    "monero_subaddress": rf"\b8[1-9AB]{not_all_hex(93)}\b",
    "monero_integrated": rf"\b4{not_all_hex(105)}\b",
    "bitcoin_base58": rf"\b[13](?:{mixed_pair(25)}{_rep(B, 0, 9)}|{_rep(B, 24)}(?:{_late_pair()}))\b",
}


def _is_wallet(name: str, token: str) -> bool:
    """What each pattern means, for one whole word (a run of ASCII word characters)."""
    if any(c not in BASE58 for c in token):
        return False
    if name in ("monero_address", "monero_subaddress"):
        return (len(token) == 95 and token[0] == ("4" if name == "monero_address" else "8")
                and token[1] in "123456789AB" and any(c in NOT_HEX for c in token))
    if name == "monero_integrated":
        return len(token) == 106 and token[0] == "4" and any(c in NOT_HEX for c in token)
    tail = token[1:]
    return (token[0] in "13" and 25 <= len(tail) <= 34
            and any((a in LOWER and b in UPPER) or (a in UPPER and b in LOWER) for a, b in itertools.pairwise(tail)))


_WORD = re.compile(r"[0-9A-Za-z_]+")  # RE2's \w (ASCII)


def _first_wallet(name: str, text: str) -> tuple[int, int] | None:
    for m in _WORD.finditer(text):
        if _is_wallet(name, m.group(0)):
            return m.span()
    return None


def _tokens(rng: random.Random):
    """Tokens around every edge: the deciding character at each position, lengths one off, prefixes."""
    for first in ("4A", "4B", "41", "4C", "40", "8A", "81", "4", "1", "3", "1A"):
        for n in (25, 26, 27, 34, 35, 36, 94, 95, 96, 105, 106, 107):
            rest = n - len(first)
            if rest <= 0:
                continue
            yield first + "".join(rng.choice(HEX58) for _ in range(rest))  # all hex
            for i in range(rest):  # hex but for one character
                chars = [rng.choice(HEX58) for _ in range(rest)]
                chars[i] = rng.choice(NOT_HEX)
                yield first + "".join(chars)
            for i in range(rest - 1):  # one case only but for one mixed pair
                chars = [rng.choice("123456789" + LOWER) for _ in range(rest)]
                chars[i], chars[i + 1] = rng.choice([(rng.choice(LOWER), rng.choice(UPPER)),
                                                     (rng.choice(UPPER), rng.choice(LOWER))])
                yield first + "".join(chars)
            yield first + "".join(rng.choice("123456789" + UPPER) for _ in range(rest))
            for _ in range(5):
                yield first + "".join(rng.choice(BASE58) for _ in range(rest))


@pytest.fixture(scope="module")
def wallet():
    return {p.name: p for p in load_bundle(None).wallet_patterns}


def test_the_shipped_patterns_are_the_ones_built_by_halves(wallet):
    """The file holds exactly the patterns built here (so they can be rebuilt and reviewed), and each
    compiles to a small program: the per-position spelling was 6,900-44,000 instructions."""
    for name, text in EXPECTED.items():
        assert wallet[name].regex.pattern == text, name
        assert wallet[name].regex.programsize <= 3500, (name, wallet[name].regex.programsize)


def test_patterns_built_by_halves_match_exactly_what_they_mean(wallet):
    """At every position of the deciding character, at lengths one off and next to every kind of
    neighbour, each pattern finds the first word that is such an address, and nothing else."""
    rng = random.Random(2026)
    checked = 0
    for token in _tokens(rng):
        for before, after in ((" ", " "), ("", ""), ("-u ", ".worker1"), ("a", ""), ("", "0"), ("x=", "_"), ("\t", "l")):
            text = before + token + after
            for name in EXPECTED:
                m = wallet[name].regex.search(text)
                assert (m.span() if m else None) == _first_wallet(name, text), (name, text)
                checked += 1
    assert checked > 100_000


def test_the_wallet_set_names_the_same_patterns_as_each_search(wallet):
    """The RE2 set over the rebuilt patterns agrees with searching each one, on real-looking lines."""
    sig = load_bundle(None)
    rng = random.Random(7)
    for token in list(_tokens(rng))[::7]:
        text = f"./x -o pool:3333 -u {token} -p x"
        assert sig.wallet_patterns.matching(text) == tuple(p for p in sig.wallet_patterns if p.regex.search(text))
