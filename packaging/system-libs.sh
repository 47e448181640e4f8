#!/usr/bin/env bash
# Print, one per line, the system shared libraries a PyInstaller build of minerwatch loads
# from outside itself (glibc's, and zlib for the bootloader).
#
#   packaging/system-libs.sh DIST_DIR/minerwatch-dir
#
# The bootloader starts with the system's search path and then re-executes itself (the
# single-file build: starts its child) with LD_LIBRARY_PATH pointing into the bundle, so it
# is resolved as it is and every other ELF of the bundle with _internal/ first. Used by
# packaging/deb/build.sh (Depends:) and packaging/container/build.sh (what the image holds).
set -euo pipefail
BUNDLE="$(realpath "${1:?usage: system-libs.sh DIST_DIR/minerwatch-dir}")"
[ -x "$BUNDLE/minerwatch" ] || { echo "system-libs.sh: $BUNDLE/minerwatch missing" >&2; exit 1; }

is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

{
    ldd "$BUNDLE/minerwatch"
    find "$BUNDLE/_internal" -type f -print0 | while IFS= read -r -d '' f; do
        if is_elf "$f"; then LD_LIBRARY_PATH="$BUNDLE/_internal" ldd "$f" 2>/dev/null || true; fi
    done
} | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' \
  | { grep -v "^$BUNDLE/" || true; } | sort -u
