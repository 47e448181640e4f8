"""Keep the daemon's resident memory near what it uses: few malloc arenas, and freed memory returned.

glibc gives every thread that allocates its own arena (up to 8 per core), and keeps what Python
frees in them; after the first scan (which reads executables of up to 32 MiB for YARA) most of
the high-water mark stays resident. Two arenas are plenty for a worker, a bulk lane and a few
collector threads, and ``malloc_trim`` after the first scan and every few minutes gives the rest
back. A fixed mmap threshold keeps every buffer of ``MMAP_THRESHOLD`` or more (file heads for YARA,
read buffers, memory-scan buffers) in its own mapping, returned to the kernel when freed: glibc's
default threshold rises to the largest block freed (up to 32 MiB), after which such buffers come
from the heap and stay resident until a trim. On a libc without these calls (musl), all are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt(3)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 10

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _mallopt = _libc.mallopt
    _malloc_trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc
    _mallopt = _malloc_trim = None


def limit_arenas(n: int = 2, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Before any thread starts: at most ``n`` malloc arenas, and blocks of ``mmap_threshold`` bytes or
    more mapped apart (given back when freed). True when both took effect."""
    return bool(_mallopt is not None and _mallopt(M_ARENA_MAX, n) == 1
                and _mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1)


def trim() -> bool:
    """Return free heap memory to the kernel. True when some was returned."""
    return bool(_malloc_trim is not None and _malloc_trim(0) == 1)
