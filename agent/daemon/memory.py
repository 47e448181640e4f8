"""Keep the daemon's resident memory near what it uses: few malloc arenas, and freed memory returned.

glibc gives every thread that allocates its own arena (up to 8 per core), and keeps what Python
frees in them; after the first scan (which reads executables of up to 32 MiB for YARA) most of
the high-water mark stays resident. Two arenas are plenty for a worker, a bulk lane and a few
collector threads, and ``malloc_trim`` after the first scan and every few minutes gives the rest
back. On a libc without these calls (musl), both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt(3)

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _mallopt = _libc.mallopt
    _malloc_trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc
    _mallopt = _malloc_trim = None


def limit_arenas(n: int = 2) -> bool:
    """Before any thread starts: at most ``n`` malloc arenas. True when it took effect."""
    return bool(_mallopt is not None and _mallopt(M_ARENA_MAX, n) == 1)


def trim() -> bool:
    """Return free heap memory to the kernel. True when some was returned."""
    return bool(_malloc_trim is not None and _malloc_trim(0) == 1)
