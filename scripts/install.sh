#!/usr/bin/env bash
# Install minerwatch from this checkout into /opt/minerwatch (a venv), link
# /usr/local/bin/minerwatch, and install /etc/minerwatch/config.toml (every key commented out at
# its default, from `minerwatch config defaults`) when there is none. Run as root on Debian 12
# (installs python3 and python3-venv when missing). Idempotent: an existing config is kept.
# Environment: MINERWATCH_PREFIX (default /opt/minerwatch), MINERWATCH_ETC (default
# /etc/minerwatch), MINERWATCH_LINK (default /usr/local/bin/minerwatch).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${MINERWATCH_PREFIX:-/opt/minerwatch}
etc=${MINERWATCH_ETC:-/etc/minerwatch}
link=${MINERWATCH_LINK:-/usr/local/bin/minerwatch}
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    # Only what a venv needs: no compiler on a production host (every dependency has wheels for
    # amd64 and arm64; python3-pip's recommends would bring build-essential).
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
[ -x "$prefix/bin/python" ] || python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --upgrade pip >/dev/null
if ! "$prefix/bin/pip" install -q .; then
    echo "install.sh: pip install failed; if a dependency had to be built from source here, install" \
         "build-essential and python3-dev and run it again" >&2
    exit 1
fi
ln -sf "$prefix/bin/minerwatch" "$link"
if [ -e "$etc/config.toml" ]; then
    echo "kept $etc/config.toml (check it with: minerwatch config check --config $etc/config.toml)"
else
    install -d -m 0755 "$etc"
    tmp="$(mktemp "$etc/.config.toml.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    "$prefix/bin/minerwatch" config defaults --path "$etc/config.toml" > "$tmp"
    chmod 0644 "$tmp"
    [ "$(id -u)" != 0 ] || chown root:root "$tmp"
    mv "$tmp" "$etc/config.toml"
    trap - EXIT
    echo "installed $etc/config.toml (every key commented out: the defaults apply)"
fi
echo "installed: $("$prefix/bin/minerwatch" version | head -n 1) -> $link"
