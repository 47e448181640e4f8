#!/usr/bin/env bash
# Build the minerwatch .deb from a PyInstaller build.
#
#   packaging/deb/build.sh [DIST_DIR]     (default DIST_DIR: <repo>/dist)
#
# Needs DIST_DIR/minerwatch-dir/ (packaging/pyinstaller/build.sh) and dpkg-deb; writes
# DIST_DIR/minerwatch_<version>_<arch>.deb and prints its path on stdout.
#
# What the package installs:
#   /usr/lib/minerwatch/                  the one-directory build (minerwatch + _internal/)
#   /usr/bin/minerwatch                   -> ../lib/minerwatch/minerwatch
#   /lib/systemd/system/minerwatch.service   systemd/minerwatch.service
#   /etc/minerwatch/config.toml           conffile: every key commented, defaults embedded
#   /etc/logrotate.d/minerwatch           conffile: rotation of /var/log/minerwatch/alerts.jsonl
#   /usr/share/doc/minerwatch/            README.md, copyright
# Maintainer scripts (maintscripts/): create /var/lib/minerwatch (0700) and
# /var/log/minerwatch (0750), enable but never start the service, stop it before removal.
#
# Environment: DEB_COMPRESSION (dpkg-deb -Z: xz by default; gzip is faster), DEB_REVISION
# (Debian revision appended to the agent's version, default 1).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIST="$(realpath -m "${1:-$ROOT/dist}")"
BUNDLE="$DIST/minerwatch-dir"
COMPRESSION="${DEB_COMPRESSION:-xz}"

log() { printf '[deb-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$BUNDLE/minerwatch" ] || die "$BUNDLE/minerwatch missing: run packaging/pyinstaller/build.sh first"
BUNDLE="$(realpath "$BUNDLE")"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (apt-get install dpkg)"

VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/agent/__init__.py")"
[ -n "$VERSION" ] || die "no __version__ in agent/__init__.py"
DEB_VERSION="$VERSION-${DEB_REVISION:-1}"
ARCH="$(dpkg --print-architecture)"

STAGE="$(mktemp -d "${TMPDIR:-/tmp}/minerwatch-deb.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/pkg"

install -d -m 0755 "$PKG/usr/lib/minerwatch" "$PKG/usr/bin" "$PKG/lib/systemd/system" \
    "$PKG/etc/minerwatch" "$PKG/etc/logrotate.d" "$PKG/usr/share/doc/minerwatch" "$PKG/DEBIAN"
cp -a "$BUNDLE/." "$PKG/usr/lib/minerwatch/"
ln -s ../lib/minerwatch/minerwatch "$PKG/usr/bin/minerwatch"
install -m 0644 "$ROOT/systemd/minerwatch.service" "$PKG/lib/systemd/system/minerwatch.service"
install -m 0644 "$HERE/config.toml" "$PKG/etc/minerwatch/config.toml"
install -m 0644 "$HERE/logrotate" "$PKG/etc/logrotate.d/minerwatch"
install -m 0644 "$ROOT/README.md" "$PKG/usr/share/doc/minerwatch/README.md"
install -m 0644 "$HERE/copyright" "$PKG/usr/share/doc/minerwatch/copyright"
# Files as the package wants them, whatever the umask of the checkout.
find "$PKG/usr/lib/minerwatch" -type d -exec chmod 0755 {} +
find "$PKG/usr/lib/minerwatch" -type f -exec chmod go-w,a+r {} +
find "$PKG/usr/lib/minerwatch/_internal" -type f -name '*.so*' -exec chmod 0644 {} +
printf '%s\n' "minerwatch ($DEB_VERSION) unstable; urgency=medium" "" \
    "  * minerwatch $VERSION, built with PyInstaller from this checkout." "" \
    " -- minerwatch developers <minerwatch@example.org>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")" \
    | gzip -9n > "$PKG/usr/share/doc/minerwatch/changelog.Debian.gz"
chmod 0644 "$PKG/usr/share/doc/minerwatch/changelog.Debian.gz"

# --- Depends: the system libraries the build loads from outside itself --------------------
SYSLIBS="$("$ROOT/packaging/system-libs.sh" "$BUNDLE")"
mapfile -t ELVES < <(find "$BUNDLE" -type f -print0 | while IFS= read -r -d '' f; do
    [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] && printf '%s\n' "$f"; done)
declare -A PKGS=()
for lib in $SYSLIBS; do
    owner="$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(realpath "$lib")" 2>/dev/null || true)"
    owner="${owner%%:*}"
    [ -n "$owner" ] && PKGS["$owner"]=1
done
# The newest glibc symbol version any ELF of the bundle asks for.
GLIBC_MIN=""
if command -v objdump >/dev/null 2>&1; then
    GLIBC_MIN="$(for f in "${ELVES[@]}"; do objdump -T "$f" 2>/dev/null || true; done \
        | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
fi
[ -n "$GLIBC_MIN" ] || GLIBC_MIN="$(dpkg-query -W -f='${Version}' libc6 | sed 's/-.*//')"
DEPENDS="libc6 (>= $GLIBC_MIN)"
for p in $(printf '%s\n' "${!PKGS[@]}" | sort); do
    [ "$p" = libc6 ] || DEPENDS="$DEPENDS, $p"
done
# /bin/kill for ExecReload=.
DEPENDS="$DEPENDS, procps"

INSTALLED_SIZE="$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)"
sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$INSTALLED_SIZE/" \
    -e "s/@DEPENDS@/$DEPENDS/" "$HERE/control.in" > "$PKG/DEBIAN/control"
printf '%s\n' /etc/minerwatch/config.toml /etc/logrotate.d/minerwatch > "$PKG/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$HERE/maintscripts/$script" "$PKG/DEBIAN/$script"
done
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    > "$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/control" "$PKG/DEBIAN/conffiles" "$PKG/DEBIAN/md5sums"

OUT="$DIST/minerwatch_${DEB_VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"$COMPRESSION" --build "$PKG" "$OUT" >/dev/null
log "built $OUT (Depends: $DEPENDS)"
printf '%s\n' "$OUT"
