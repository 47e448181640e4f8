"""Sparse files: their data extents (``SEEK_DATA``/``SEEK_HOLE``), so a copy writes only the data,
its holes stay holes, and its cost is counted in blocks allocated, not in its apparent size."""

from __future__ import annotations

import errno
import os

CHUNK = 1 << 20


def allocated(fd: int) -> int:
    """Bytes a sparse copy of ``fd`` allocates: its data extents (blocks allocated on file systems
    without SEEK_DATA), rounded up to 4 KiB blocks."""
    total = 0
    for chunk, is_data in extents(fd, read=False):
        total += -(-chunk // 4096) * 4096 if is_data else 0
    return total


def extents(fd: int, *, read: bool = True):
    """``(bytes, True)`` for each piece of data and ``(length, False)`` for each hole, in order, from offset 0.
    With ``read=False`` data pieces are ``(length, True)``. No SEEK_DATA support: all of it is data."""
    end = os.fstat(fd).st_size
    pos = 0
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                start = end
            elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                start = pos
            else:
                raise
        if start > pos:
            yield min(start, end) - pos, False
            pos = min(start, end)
            if pos >= end:
                break
        try:
            stop = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            stop = end
        while pos < stop:
            n = min(CHUNK, stop - pos)
            if read:
                chunk = os.pread(fd, n, pos)
                if not chunk:  # shrank while copied
                    return
                yield chunk, True
                n = len(chunk)
            else:
                yield n, True
            pos += n


_ZEROS = bytes(CHUNK)


def hash_zeros(h, n: int) -> None:
    while n > 0:
        h.update(_ZEROS[:min(n, CHUNK)] if n < CHUNK else _ZEROS)
        n -= CHUNK
