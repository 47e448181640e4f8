#!/usr/bin/env bash
# Build the minerwatch container image offline from the PyInstaller build.
#
#   packaging/container/build.sh [DIST_DIR] [TAG]     (defaults: <repo>/dist, minerwatch:<version>)
#
# Needs DIST_DIR/minerwatch (the single-file build) and DIST_DIR/minerwatch-dir/ (to work
# out which system libraries the build loads), both from packaging/pyinstaller/build.sh, and
# a Docker engine. The image is FROM scratch: nothing is pulled. Prints TAG on stdout.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIST="$(realpath -m "${1:-$ROOT/dist}")"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/agent/__init__.py")"
TAG="${2:-minerwatch:$VERSION}"

log() { printf '[container-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$DIST/minerwatch" ] || die "$DIST/minerwatch missing: run packaging/pyinstaller/build.sh first"
[ -x "$DIST/minerwatch-dir/minerwatch" ] || die "$DIST/minerwatch-dir missing: run packaging/pyinstaller/build.sh first"
command -v docker >/dev/null 2>&1 || die "docker CLI not found"

CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/minerwatch-image.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
FS="$CONTEXT/rootfs"
install -d -m 0755 "$FS/usr/bin" "$FS/etc/minerwatch" "$FS/etc/ssl/certs" "$FS/var/lib" "$FS/var/log"
install -d -m 1777 "$FS/tmp"
install -d -m 0700 "$FS/var/lib/minerwatch"
install -d -m 0750 "$FS/var/log/minerwatch"
install -m 0755 "$DIST/minerwatch" "$FS/usr/bin/minerwatch"
install -m 0644 "$HERE/config.toml" "$FS/etc/minerwatch/config.toml"
install -m 0644 "$HERE/Dockerfile" "$CONTEXT/Dockerfile"

# The system libraries, each at the path the dynamic loader looks for it (symlinks resolved).
mapfile -t LIBS < <("$ROOT/packaging/system-libs.sh" "$DIST/minerwatch-dir")
LIBC=""
for lib in "${LIBS[@]}"; do
    install -D -m 0755 "$(realpath "$lib")" "$FS$lib"
    case "$lib" in */libc.so.6) LIBC="$lib" ;; esac
done
[ -n "$LIBC" ] || die "system-libs.sh found no libc.so.6"
# glibc dlopens libgcc_s when a thread exits through pthread_exit/cancellation.
GCC_S="$(dirname "$LIBC")/libgcc_s.so.1"
[ -e "$GCC_S" ] && install -D -m 0755 "$(realpath "$GCC_S")" "$FS$GCC_S"

printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    > "$FS/etc/passwd"
printf '%s\n' 'root:x:0:' 'adm:x:4:' 'nogroup:x:65534:' > "$FS/etc/group"
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' > "$FS/etc/nsswitch.conf"
chmod 0644 "$FS/etc/passwd" "$FS/etc/group" "$FS/etc/nsswitch.conf"
# CA certificates for webhook TLS verification (Python's ssl; requests brings its own).
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$FS/etc/ssl/certs/ca-certificates.crt"
else
    log "WARNING: /etc/ssl/certs/ca-certificates.crt not found: the image has no CA bundle"
fi

log "image $TAG: $(du -sh "$FS" | cut -f1) ($(printf '%s ' "${LIBS[@]##*/}"))"
docker build --quiet --tag "$TAG" "$CONTEXT" >/dev/null 2> >(grep -v -e DEPRECATED -e 'legacy builder' \
    -e 'Install the buildx' -e 'BuildKit is currently disabled' -e 'docs.docker.com/go/buildx' -e '^ *$' >&2) \
    || die "docker build failed"
docker run --rm --network none "$TAG" version >&2 || die "the image does not run: $TAG version failed"
printf '%s\n' "$TAG"
