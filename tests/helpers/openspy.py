"""Prove that a file was never opened: an inotify watch for IN_OPEN/IN_ACCESS on it.

    with OpenSpy(path) as spy:
        ...                     # code under test
        assert not spy.opened()

Works for regular files and FIFOs (the kernel reports opens of any inode it watches).
The watch is on the target inode itself (the path is followed once, when the watch is
added), so it catches an open through any symlink pointing at it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_ACCESS = 0x00000001
IN_OPEN = 0x00000020
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class OpenSpy:
    """Records opens and reads of one file (by inode) until closed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self._fd, os.fsencode(self.path), IN_OPEN | IN_ACCESS) < 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"inotify_add_watch {self.path}")
        self._seen = 0

    def opened(self) -> bool:
        """True once any open or read of the file happened since the spy was created."""
        while True:
            try:
                buf = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            i = 0
            while i + 16 <= len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
                if mask & (IN_OPEN | IN_ACCESS):
                    self._seen += 1
                i += 16 + length
        return self._seen > 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "OpenSpy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
