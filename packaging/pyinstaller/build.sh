#!/usr/bin/env bash
# Build the minerwatch executables with PyInstaller from this checkout.
#
#   packaging/pyinstaller/build.sh [DIST_DIR]          (default DIST_DIR: <repo>/dist)
#
# Produces
#   DIST_DIR/minerwatch         single-file executable (glibc >= the build machine's)
#   DIST_DIR/minerwatch-dir/    one-directory build: minerwatch + _internal/ (used by the .deb)
# and checks that both run `minerwatch version`.
#
# The build runs in its own virtualenv (PyInstaller + the agent's dependencies from
# pyproject.toml), created once and reused while requirements-build.txt, pyproject.toml and
# the interpreter stay the same. PyInstaller reads the agent from this checkout, so nothing is
# written into the source tree.
#
# Environment:
#   PYTHON                  interpreter for the build venv (default: python3 on PATH, >= 3.11,
#                           built with a shared libpython, as pyenv and Debian's python3 are)
#   MINERWATCH_BUILD_VENV   the build venv (default: <repo>/build/pyinstaller-venv)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIST="$(realpath -m "${1:-$ROOT/dist}")"
VENV="$(realpath -m "${MINERWATCH_BUILD_VENV:-$ROOT/build/pyinstaller-venv}")"

log() { printf '[pyinstaller-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "no interpreter $PY (set PYTHON=...)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PY is older than Python 3.11"

# One builder per venv at a time (the test suite and a person may build concurrently).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock -w 900 9 || die "timed out waiting for $VENV.lock"

deps() {  # the agent's runtime dependencies, one per line, from pyproject.toml
    "$PY" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
}

KEY="$( { cat "$HERE/requirements-build.txt"; deps; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.minerwatch-build"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
    log "build venv up to date ($VENV)"
else
    log "creating build venv $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "python -m venv failed"
    REQS="$(mktemp)"
    trap 'rm -f "$REQS"' EXIT
    { cat "$HERE/requirements-build.txt"; deps; } > "$REQS"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install -q -r "$REQS" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) \
        || die "pip install of the build requirements failed"
    echo "$KEY" > "$STAMP"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/minerwatch-pyinstaller.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "pyinstaller $("$VENV/bin/python" -m PyInstaller --version) -> $DIST"
(
    cd "$WORK"
    PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m PyInstaller --noconfirm --clean --log-level WARN \
        --distpath "$WORK/dist" --workpath "$WORK/build" "$HERE/minerwatch.spec"
) || die "pyinstaller failed"

mkdir -p "$DIST"
rm -rf "$DIST/minerwatch" "$DIST/minerwatch-dir"
mv "$WORK/dist/minerwatch-onefile" "$DIST/minerwatch"
mv "$WORK/dist/minerwatch-dir" "$DIST/minerwatch-dir"

for exe in "$DIST/minerwatch" "$DIST/minerwatch-dir/minerwatch"; do
    out="$(env -i PATH=/usr/bin:/bin "$exe" version)" || die "$exe version failed"
    log "$exe: $(printf '%s' "$out" | tr '\n' ' ')"
done
