"""Listing a directory with the raw ``getdents64`` system call, not libc's ``readdir``.

A library in ``/etc/ld.so.preload`` that filters ``readdir()``/``readdir64()`` (libprocesshider,
used by mining campaigns) hides a process from ``os.listdir("/proc")`` in every dynamically linked
program, the agent included. ``getdents64`` is called through ``syscall(2)`` (ctypes) on a
descriptor from ``os.open``, and the ``linux_dirent64`` records are parsed here, so a hook on
``readdir``/``opendir`` changes nothing. (A preload that hooks ``syscall`` itself is still seen:
``/etc/ld.so.preload`` and the other cross-views, ``collectors/crossview.py``.)

``parse_dirents`` is pure (the bytes the kernel gave); ``entries``/``names``/``pids`` do the I/O.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterator

# __NR_getdents64 by machine (the generic table is 61: arm64, riscv64, loongarch64).
_SYS_GETDENTS64 = {"x86_64": 217, "amd64": 217, "i386": 220, "i686": 220, "aarch64": 61, "arm64": 61,
                   "armv7l": 217, "riscv64": 61, "ppc64le": 202, "ppc64": 202, "s390x": 220, "loongarch64": 61}
SYS_GETDENTS64 = _SYS_GETDENTS64.get(platform.machine(), 61)
BUF_SIZE = 64 << 10
_HEADER = struct.Struct("=QqHB")  # d_ino, d_off, d_reclen, d_type; d_name follows, NUL-terminated
DT_DIR = 4
DT_UNKNOWN = 0
MAX_ENTRIES = 1 << 22  # a directory of more entries than pid_max can hold is not one we list whole

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def parse_dirents(buf: bytes | memoryview, size: int) -> Iterator[tuple[int, int, bytes]]:
    """``(inode, d_type, name)`` for each ``linux_dirent64`` in the first ``size`` bytes of ``buf``.

    Stops at a record whose length is impossible (shorter than its header or past the end):
    what the kernel gave is never read out of bounds."""
    at = 0
    view = memoryview(buf)
    while at + _HEADER.size <= size:
        ino, _off, reclen, dtype = _HEADER.unpack_from(view, at)
        if reclen < _HEADER.size or at + reclen > size:
            return
        raw = bytes(view[at + _HEADER.size:at + reclen])
        end = raw.find(b"\x00")
        yield ino, dtype, raw if end < 0 else raw[:end]
        at += reclen


def getdents(fd: int, buf_size: int = BUF_SIZE) -> Iterator[tuple[int, int, bytes]]:
    """Every entry of the open directory ``fd`` (``.`` and ``..`` left out), read with ``getdents64``."""
    buf = ctypes.create_string_buffer(buf_size)
    count = 0
    while True:
        n = _syscall(SYS_GETDENTS64, ctypes.c_int(fd), buf, ctypes.c_uint(buf_size))
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if n == 0:
            return
        for entry in parse_dirents(buf.raw, n):
            if entry[2] in (b".", b".."):
                continue
            count += 1
            if count > MAX_ENTRIES:
                return
            yield entry


def entries(path: str | os.PathLike | None = None, *, dir_fd: int | None = None,
            follow: bool = True) -> list[tuple[int, int, bytes]]:
    """The entries of a directory by path (``dir_fd``: relative to it; ``follow=False``: not through a
    symlink), or of ``dir_fd`` itself when ``path`` is None."""
    if path is None:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    else:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        return list(getdents(fd))
    finally:
        os.close(fd)


def names(path: str | os.PathLike) -> list[str]:
    """The names in a directory, as ``os.listdir`` would give them, without libc's ``readdir``."""
    return [os.fsdecode(name) for _ino, _t, name in entries(path)]


def pids(proc_root: str | os.PathLike = "/proc") -> list[int]:
    """PIDs (thread-group leaders) listed in ``proc_root``, ascending, from a raw ``getdents64``."""
    return sorted(int(name) for _ino, _t, name in entries(proc_root) if name.isdigit())
