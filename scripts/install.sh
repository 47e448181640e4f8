#!/usr/bin/env bash
# Install minerwatch from this checkout into /opt/minerwatch (a venv) and link
# /usr/local/bin/minerwatch. Run as root on Debian 12. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${MINERWATCH_PREFIX:-/opt/minerwatch}
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
[ -x "$prefix/bin/python" ] || python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --upgrade pip >/dev/null
"$prefix/bin/pip" install -q .
ln -sf "$prefix/bin/minerwatch" /usr/local/bin/minerwatch
echo "installed: $("$prefix/bin/minerwatch" version | head -n 1) -> /usr/local/bin/minerwatch"
