#!/usr/bin/env bash
# Install everything the test suite needs, idempotently and quickly when already done:
#   - Debian packages: python3, python3-venv and file (a fresh Debian 12 has none of them;
#     file is used by tests/test_infra.py), docker.io (engine), busybox-static (test image), gcc + libc6-dev
#     (static test helpers), openssl (self-signed certs), ca-certificates, debootstrap and
#     debian-archive-keyring (the Debian 12 image of the systemd and rsyslog tests, built
#     once per machine from the apt sources' mirror: tests/helpers/debian_image.py),
#     librandomx-dev (the RandomX reference library the throttled fake miner computes with);
#   - a virtualenv at .venv with `pip install -e '.[test]'`, redone only when
#     pyproject.toml (or the python) changed (stamp file .venv/.minerwatch-deps).
# Environment: PYTHON (interpreter to build the venv from; default: python3 on PATH, >= 3.11),
#              MINERWATCH_VENV (default: <repo>/.venv).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MINERWATCH_VENV:-$ROOT/.venv}"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (or have sudo)"
    SUDO="sudo -E"
fi

# One installer at a time (several shells of the same tree may run the suite at once).
LOCK="${TMPDIR:-/tmp}/minerwatch-install-test-deps.lock"
exec 9>"$LOCK"
flock -w 900 9 || die "timed out waiting for $LOCK"

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

APT_UPDATED=0
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        local i
        for i in 1 2 3; do
            if $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq; then break; fi
            [ "$i" = 3 ] && die "apt-get update failed"
            sleep 5
        done
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    local i
    for i in 1 2 3; do
        if $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null; then
            return 0
        fi
        [ "$i" = 3 ] && die "apt-get install $* failed"
        sleep 5
    done
}

# --- Debian packages -------------------------------------------------------------------
WANT=(python3 python3-venv file docker.io busybox-static gcc libc6-dev openssl ca-certificates procps systemd binutils
      debootstrap debian-archive-keyring librandomx-dev)
MISSING=()
for p in "${WANT[@]}"; do pkg_installed "$p" || MISSING+=("$p"); done
if [ "${#MISSING[@]}" -gt 0 ]; then
    apt_install "${MISSING[@]}"
fi
[ -x /bin/busybox ] || die "/bin/busybox missing after installing busybox-static"
command -v dockerd >/dev/null 2>&1 || die "dockerd missing after installing docker.io"

# --- Python virtualenv -----------------------------------------------------------------
pick_python() {
    local c
    for c in "${PYTHON:-}" python3.11 python3 /usr/bin/python3; do
        [ -n "$c" ] || continue
        command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}
PY="$(pick_python)" || die "no python >= 3.11 found (set PYTHON=...)"

venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/pip" ] \
        && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

if ! venv_ok; then
    if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        # Debian's system python needs python3-venv for ensurepip.
        pkg_installed python3-venv || apt_install python3-venv
    fi
    log "creating virtualenv $VENV with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "python -m venv failed"
fi

STAMP="$VENV/.minerwatch-deps"
KEY="$( { sha256sum pyproject.toml; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
    log "venv up to date ($VENV)"
else
    log "pip install -e '.[test]' into $VENV"
    rm -f "$STAMP"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    # (filter the noise of this machine's pip config about missing local indexes)
    if ! "$VENV/bin/python" -m pip install -q -e '.[test]' 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); then
        die "pip install -e '.[test]' failed"
    fi
    echo "$KEY" > "$STAMP"
fi
