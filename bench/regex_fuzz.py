#!/usr/bin/env python3
"""Every signature regex against adversarial text, 1 KiB to 1 MiB: RE2 (what the agent runs)
beside Python's backtracking ``re``.

For each pattern of cmdline_patterns.txt and wallet_patterns.txt the inputs are:
  - repeats of literal prefixes of the pattern (of a string it would match, cut short: the
    first word of "modprobe msr .* allow_writes=on" without the second, and so on);
  - near-misses: a whole matching string with its last character changed, repeated;
  - repeats of every literal word of the pattern, space-separated;
  - random printable text and random bytes (decoded as Latin-1).
Each input is searched at every size; the worst time per KiB over all patterns and inputs is
printed per size (and the pattern it came from). Linear matching keeps that column flat.

Python ``re`` runs in a helper subprocess with a per-search cap (--timeout, default 2 s): a
search over the cap prints "timed out" (and that input is not tried at larger sizes).

    .venv/bin/python bench/regex_fuzz.py [--bundle DIR] [--max-kib 1024] [--timeout 2] [--no-re]

--bundle reads the two pattern files of another bundle without validating it, for example an
older revision's (git archive REV signatures | tar -x -C /tmp/old): its patterns that RE2
cannot compile are listed and skipped on the RE2 side.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

try:  # Python 3.11+: the parser behind re
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PATTERN_FILES = ("cmdline_patterns.txt", "wallet_patterns.txt")
SEPARATOR = re.compile(r"(?:^|\s+)\|(?:\s+|$)")
SIZES_KIB = (1, 4, 16, 64, 256, 1024)


def read_patterns(bundle: Path) -> list[tuple[str, str]]:
    """(file:name, regex text) of every entry line of the pattern files, unvalidated."""
    out = []
    for rel in PATTERN_FILES:
        for line in (bundle / rel).read_text(encoding="utf-8").split("\n"):
            line = line.strip()
            if line and not line.startswith("#"):
                cols = [c.strip() for c in SEPARATOR.split(line)]
                if len(cols) == 4:
                    out.append((f"{rel.split('_')[0]}:{cols[0]}", cols[2]))
    return out


# --- adversarial inputs ---------------------------------------------------------------------


def _witness(items) -> str:
    """A short string the parsed pattern ``items`` matches (first branch, minimum repeats)."""
    out = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "IN":
            out.append(_class_char(arg))
        elif name == "ANY":
            out.append(" ")  # a space keeps the word boundaries around it
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, sub = arg
            out.append(_witness(sub) * max(low, 1))
        elif name == "SUBPATTERN":
            out.append(_witness(arg[-1]))
        elif name == "BRANCH":
            out.append(_witness(arg[1][-1]))  # the last branch: the first is often "^"
        elif name == "ATOMIC_GROUP":
            out.append(_witness(arg))
        # AT (anchors, \b), ASSERT / ASSERT_NOT (look-around), GROUPREF: nothing to add
    return "".join(out)


def _class_char(items) -> str:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "1", "CATEGORY_SPACE": " "}.get(str(arg), "a")
    return "a"


def _words(pattern: str) -> list[str]:
    return sorted(set(re.findall(r"[A-Za-z][A-Za-z0-9_=+-]{2,}", re.sub(r"\\.", " ", pattern))))


def inputs(pattern: str, size: int, seed: int = 7) -> list[tuple[str, str]]:
    """(kind, text of ``size`` characters) adversarial to ``pattern``."""
    def fill(unit: str) -> str:
        return (unit * (size // max(len(unit), 1) + 1))[:size] if unit else ""

    out: list[tuple[str, str]] = []
    try:
        items = list(sre_parse.parse(pattern))
    except (re.error, RecursionError):
        items = []
    # Literal prefixes: the witness of the first items, cut where a run of literals ends
    # ("modprobe", "modprobe ", "modprobe msr", "modprobe msr " ... for the MSR pattern).
    prefixes: list[str] = []
    acc = ""
    for i, item in enumerate(items):
        acc += _witness([item])
        following = str(items[i + 1][0]) if i + 1 < len(items) else ""
        if acc and following != "LITERAL" and acc not in prefixes:
            prefixes.append(acc)
    witness, prefixes = (prefixes[-1], prefixes[:-1]) if prefixes else ("", [])
    if len(prefixes) > 8:
        prefixes = [prefixes[i * (len(prefixes) - 1) // 7] for i in range(8)]
    for prefix in dict.fromkeys(prefixes):
        out.append((f"prefix {prefix[:16]!r}", fill(prefix)))
        out.append((f"prefix {prefix[:16]!r}+space", fill(prefix + " ")))
    if witness:
        near = witness[:-1] + ("x" if witness[-1] != "x" else "y")
        out.append(("near-miss", fill(near + " ")))
        out.append(("near-miss-glued", fill(near)))
    words = _words(pattern)
    if words:
        out.append(("words", fill(" ".join(words) + " ")))
        out.append(("first-word", fill(words[0] + " ")))
    rng = random.Random(seed + size)
    out.append(("random-printable", "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789 -=:/.+", k=size))))
    out.append(("random-bytes", rng.randbytes(size).decode("latin-1")))
    return out


# --- the re side, in a killable subprocess ------------------------------------------------------


def worker() -> int:
    """Read {"pattern", "size", "kind"} lines; answer with the seconds one re.search took."""
    compiled: dict[str, re.Pattern[str] | None] = {}
    texts: dict[tuple[str, int], dict[str, str]] = {}
    for line in sys.stdin:
        job = json.loads(line)
        pattern = job["pattern"]
        if pattern not in compiled:
            try:
                compiled[pattern] = re.compile(pattern)
            except re.error:
                compiled[pattern] = None
        regex = compiled[pattern]
        if regex is None:
            print(json.dumps({"error": "does not compile"}), flush=True)
            continue
        key = (pattern, job["size"])
        if key not in texts:
            texts.clear()
            texts[key] = dict(inputs(pattern, job["size"]))
        text = texts[key][job["kind"]]
        regex.search(text[:64])
        started = time.perf_counter()
        regex.search(text)
        print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
    return 0


class ReRunner:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, bufsize=1)
        return self.proc

    def time(self, pattern: str, size: int, kind: str) -> float | str:
        """Seconds, "timed out" or "does not compile"."""
        import selectors

        proc = self._start()
        proc.stdin.write(json.dumps({"pattern": pattern, "size": size, "kind": kind}) + "\n")
        proc.stdin.flush()
        # The worker builds the input first (up to 1 MiB): allow for that beside the cap.
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.timeout + 5.0):
                self.close()
                return "timed out"
        answer = json.loads(proc.stdout.readline() or '{"error": "worker died"}')
        if "seconds" not in answer:
            return answer["error"]
        return answer["seconds"] if answer["seconds"] <= self.timeout else "timed out"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --- the benchmark ------------------------------------------------------------------------------


def bench_re2(patterns: list[tuple[str, object, str]], sizes: list[int]) -> dict[int, tuple[float, str]]:
    worst: dict[int, tuple[float, str]] = {}
    for size_kib in sizes:
        size = size_kib * 1024
        for name, regex, text_pattern in patterns:
            for kind, text in inputs(text_pattern, size):
                regex.search(text[:64])
                best = min(_timed(regex.search, text) for _ in range(3))
                per_kib = best / size_kib * 1e6
                if per_kib > worst.get(size_kib, (-1.0, ""))[0]:
                    worst[size_kib] = (per_kib, f"{name} {kind}")
    return worst


def _timed(fn, arg) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def bench_re(patterns: list[tuple[str, str]], sizes: list[int], timeout: float) -> dict[int, tuple[object, str]]:
    runner = ReRunner(timeout)
    worst: dict[int, tuple[object, str]] = {}
    given_up: list[tuple[str, str]] = []  # (pattern, input) that timed out: not tried at larger sizes
    try:
        for size_kib in sizes:
            for name, text_pattern in patterns:
                for kind, _ in inputs(text_pattern, 1024):  # the kinds only; the worker builds the text
                    if (name, kind) in given_up:
                        continue
                    result = runner.time(text_pattern, size_kib * 1024, kind)
                    if result == "does not compile":
                        break
                    if result == "timed out":
                        given_up.append((name, kind))
                        continue
                    per_kib = result / size_kib * 1e6
                    if per_kib > worst.get(size_kib, (-1.0, ""))[0]:
                        worst[size_kib] = (per_kib, f"{name} {kind}")
            if given_up:  # a search over the cap is the worst there is, at this size and above
                first = f"{given_up[0][0]} {given_up[0][1]}"
                more = f" (+{len(given_up) - 1} more)" if len(given_up) > 1 else ""
                worst[size_kib] = ("timed out", first + more)
    finally:
        runner.close()
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "signatures")
    parser.add_argument("--max-kib", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=2.0, help="cap on one Python re search, seconds")
    parser.add_argument("--no-re", action="store_true", help="RE2 only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()

    from agent.signatures import compile_signature_regex

    sizes = [s for s in SIZES_KIB if s <= args.max_kib]
    texts = read_patterns(args.bundle)
    compiled = []
    for name, text in texts:
        try:
            compiled.append((name, compile_signature_regex(text), text))
        except ValueError as exc:
            print(f"RE2 cannot compile {name}: {exc}")
    print(f"{len(texts)} patterns from {args.bundle}; inputs per pattern and size: "
          f"{len(inputs(texts[0][1], 1024))}-ish; sizes {sizes} KiB")
    re2_worst = bench_re2(compiled, sizes)
    re_worst = {} if args.no_re else bench_re(texts, sizes, args.timeout)
    print(f"\n{'size':>8}  {'RE2 worst us/KiB':>17}  {'re worst us/KiB':>17}  worst pattern and input (RE2 | re)")
    for size_kib in sizes:
        r2, r2_where = re2_worst.get(size_kib, (0.0, "-"))
        rv, rv_where = re_worst.get(size_kib, ("-", "-"))
        rv_text = f"{rv:17.2f}" if isinstance(rv, float) else f"{rv:>17}"
        print(f"{size_kib:>6}Ki  {r2:17.2f}  {rv_text}  {r2_where} | {rv_where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
