"""Fuzz the signature loader: mutated bundles in temp dirs give issues with file and line, never an exception."""
from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SignatureError, SignatureIssue
from agent.signatures import MANIFEST, bundle_files, bundled_directory, check_bundle, load_bundle
from tests.fuzz.fuzzing import CORPUS, FUZZ, mutated

FUZZ_SMALL = settings(FUZZ, max_examples=60)

OVERLAYS = sorted(p for p in (CORPUS / "signatures").iterdir() if p.is_dir())
BUNDLED = bundled_directory()
REPO_BAD_BUNDLE = Path(__file__).resolve().parents[1] / "data" / "bad_bundle"


def write_manifest(root: Path) -> None:
    lines = [f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}\n" for rel in bundle_files(root)]
    (root / MANIFEST).write_text("".join(lines))


def overlay_files(overlay: Path) -> dict[str, bytes]:
    return {p.relative_to(overlay).as_posix(): p.read_bytes() for p in sorted(overlay.rglob("*")) if p.is_file()}


def contents_by_file() -> dict[str, list[bytes]]:
    """Every bundle file with its seeds: the bundled content plus each overlay's version of it."""
    out = {rel: [(BUNDLED / rel).read_bytes()] for rel in [*bundle_files(BUNDLED), MANIFEST]}
    for overlay in OVERLAYS:
        for rel, data in overlay_files(overlay).items():
            out.setdefault(rel, []).append(data)
    return out


SEEDS = contents_by_file()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory reused by every fuzz example (a fresh bundle copy is made in it each time)."""
    return tmp_path_factory.mktemp("sigfuzz")


def check(root: Path) -> tuple[object, list[SignatureIssue]]:
    """check_bundle's contract on any directory: it returns, issues are located, load_bundle agrees."""
    started = time.monotonic()
    sig, issues = check_bundle(root)
    assert time.monotonic() - started < 20, "a bundle check must not hang"
    assert isinstance(issues, list)
    for issue in issues:
        assert isinstance(issue, SignatureIssue) and isinstance(issue.file, str) and issue.file
        assert isinstance(issue.line, int) and issue.line >= 0 and str(issue)
        assert ".." not in Path(issue.file).parts or issue.file == str(root), issue
    if not issues:
        assert sig is not None and sig.version
        assert load_bundle(root).version == sig.version
    return sig, issues


def check_load_raises(root: Path, issues: list[SignatureIssue]) -> None:
    """load_bundle raises SignatureError, exit code 2, carrying the same issues."""
    with pytest.raises(SignatureError) as info:
        load_bundle(root)
    assert info.value.exit_code == 2 and [str(i) for i in info.value.issues] == [str(i) for i in issues]


_TOUCHED: dict[Path, set[str]] = {}


def build(tmp: Path, files: dict[str, bytes], *, manifest: bool) -> Path:
    """A copy of the bundled signatures at ``tmp/bundle`` with ``files`` written over it.

    The copy is made once per directory; later calls put back only what the previous call
    changed (a full copy per example would dominate the fuzzing time).
    """
    root = tmp / "bundle"
    if not root.exists():
        shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in _TOUCHED.pop(root, set()) | {MANIFEST}:
        if (BUNDLED / rel).is_file():
            shutil.copyfile(BUNDLED / rel, root / rel)
        else:
            (root / rel).unlink(missing_ok=True)
    _TOUCHED[root] = set(files)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if manifest and MANIFEST not in files:
        write_manifest(root)
    return root


def test_bundled_copy_is_clean(tmp_path):
    """Sanity for the harness: an unmodified copy of the bundled signatures has no issues."""
    sig, issues = check(build(tmp_path, {}, manifest=False))
    assert issues == [] and sig.yara_rule_count > 0


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_corpus_overlays_replay(overlay, tmp_path):
    """Each seed overlay: good-* loads clean, bad-* reports located issues and never raises."""
    _sig, issues = check(build(tmp_path, overlay_files(overlay), manifest=True))
    if overlay.name.startswith("good-"):
        assert issues == [], issues
    else:
        assert issues, f"{overlay.name} should have issues"
        check_load_raises(tmp_path / "bundle", issues)
        touched = set(overlay_files(overlay)) - {MANIFEST}
        assert any(i.file in touched or i.file.startswith("yara") for i in issues) or not touched, issues


def test_repository_bad_bundle_replays():
    """tests/data/bad_bundle (a whole broken bundle) reports its issues without raising."""
    _sig, issues = check(REPO_BAD_BUNDLE)
    assert len(issues) >= 7
    check_load_raises(REPO_BAD_BUNDLE, issues)


def test_bundled_patterns_are_linear_time_matchers():
    """Every bundled command-line and wallet regex is an RE2 pattern (linear in its input whatever the
    input: bench/regex_fuzz.py measures it) and matches what it should on hostile-length input."""
    import re2

    sig = load_bundle(None)
    nasty = ["a" * 65536, "stratum+tcp://" + "a." * 32000, "-o " * 21000, "4" * 65536, "--url=" + "x:" * 32000,
             "".join(chr(0x400 + i % 200) for i in range(65536)), ("44AFFq5kSiGBoZ4NMDwYtN18obc8Ae" * 2200)[:65536]]
    for pattern in (*sig.cmdline_patterns, *sig.wallet_patterns):
        assert type(pattern.regex).__module__.startswith("re2"), f"{pattern.file}:{pattern.line} is not RE2"
        for text in nasty:
            pattern.regex.search(text)  # returns (RE2 has no backtracking to get lost in)
    assert re2.compile(r"(a+)+$").search("a" * 65536 + "b") is None


@st.composite
def bundle_edits(draw) -> tuple[dict[str, bytes], bool]:
    """One to three files of the bundle replaced by mutated seeds; the manifest refreshed or not."""
    files = {}
    for rel in draw(st.lists(st.sampled_from(sorted(SEEDS)), min_size=1, max_size=3, unique=True)):
        files[rel] = draw(mutated(SEEDS[rel]))
    if draw(st.integers(0, 5)) == 0:
        files[draw(st.sampled_from(["yara/extra.yar", "notes.txt", "yara/x.yar.bak"]))] = draw(st.binary(max_size=64))
    return files, draw(st.booleans())


@FUZZ
@given(edit=bundle_edits())
def test_mutated_bundles_report_issues_never_raise(edit, workdir):
    """A bundle with mutated files: check_bundle returns located issues; nothing raises, nothing hangs."""
    files, manifest = edit
    check(build(workdir, files, manifest=manifest))


@FUZZ_SMALL
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300), rel=st.sampled_from(
    ["cmdline_patterns.txt", "wallet_patterns.txt", "pool_domains.txt", "bundle.toml", "yara/xmrig.yar"]))
def test_free_text_in_one_file_reports_issues_with_lines(text, rel, workdir):
    """Free text in a parsed file: issues carry line numbers that exist in that file (counted by newlines)."""
    root = build(workdir, {rel: text.encode()}, manifest=True)
    _sig, issues = check(root)
    n_lines = text.count("\n") + 1
    for issue in issues:
        if issue.file == rel:
            assert issue.line <= n_lines, (issue, n_lines)
    assert all(re.fullmatch(r"[\w./-]+|" + re.escape(str(root)), i.file) for i in issues), issues
