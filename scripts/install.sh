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
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
[ -x "$prefix/bin/python" ] || python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --upgrade pip >/dev/null
"$prefix/bin/pip" install -q .
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
