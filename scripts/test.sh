#!/usr/bin/env bash
# The one test command: ./scripts/test.sh [pytest args...]   (as root, or via sudo)
# Installs what the tests need (scripts/install-test-deps.sh), makes sure a Docker engine
# answers (scripts/start-dockerd.sh), then runs pytest from .venv with the given arguments.
# The exit code is pytest's.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$ROOT/scripts/test.sh" "$@"
    fi
    echo "scripts/test.sh: must run as root (Docker, /proc of other users' processes)" >&2
    exit 2
fi

bash "$ROOT/scripts/install-test-deps.sh"

if ! bash "$ROOT/scripts/start-dockerd.sh"; then
    if [ "${CI:-}" = true ] || [ "${MINERWATCH_REQUIRE_DOCKER:-}" = 1 ]; then
        echo "scripts/test.sh: Docker engine required (CI) but could not be started" >&2
        exit 1
    fi
    echo "scripts/test.sh: WARNING: no Docker engine; Docker tests will be skipped" >&2
fi

export PYTHONDONTWRITEBYTECODE=1
exec "${MINERWATCH_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
