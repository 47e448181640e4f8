"""Opening files safely: regular files only, and never out of a root such as a container's file system.

The rules for everything that opens a file to read it:

* never open a FIFO, socket or device: resolve the path once with ``O_PATH|O_NOFOLLOW``
  (which opens nothing), ``fstat`` that descriptor, and only for a regular file reopen it
  through ``/proc/self/fd/N`` with ``O_RDONLY|O_NONBLOCK|O_NOCTTY`` (``open_regular``);
* never follow a symlink in a path we were handed (``O_NOFOLLOW``), and for a path that must
  stay inside a root, walk it one component at a time (``open_beneath``,
  ``open_dir_beneath``, ``open_parent_beneath``) so neither a symlink nor ``..`` leads out;
* try ``O_NOATIME`` first, so reading a file does not disturb its atime (evidence).

``/proc/PID/exe`` is the one link followed on purpose (``follow_symlinks=True``): the kernel
resolves it to the very file the process executes, also when that file was deleted or lives
in a container.
"""

from __future__ import annotations

import errno
import os
import stat

_NOATIME = getattr(os, "O_NOATIME", 0)
# Directories are only walked through, never listed: O_PATH needs no read permission on them.
DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC


class Refused(OSError):
    """A path was refused by policy; ``reason`` is ``symlink``, ``not_regular`` or ``outside_root``."""

    def __init__(self, reason: str, path) -> None:
        super().__init__(f"{reason}: {os.fsdecode(path)}")
        self.reason = reason


def _open_fd(path, flags: int, dir_fd: int | None = None) -> int:
    """os.open, trying O_NOATIME first (do not disturb atime evidence), which needs ownership or CAP_FOWNER."""
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME, dir_fd=dir_fd)
        except PermissionError:
            pass
    return os.open(path, flags, dir_fd=dir_fd)


def open_regular(path, *, follow_symlinks: bool = False, dir_fd: int | None = None) -> int:
    """Open a regular file read-only and return the descriptor; ``Refused`` for anything else.

    The path is resolved once, into an ``O_PATH`` descriptor (``O_NOFOLLOW`` unless
    ``follow_symlinks``): opening with ``O_PATH`` never runs a device's or FIFO's open. That
    descriptor is ``fstat``-ed, and only a regular file is opened for reading, through
    ``/proc/self/fd/N`` (the very inode checked: no path is resolved again), with
    ``O_NONBLOCK|O_NOCTTY``. Whatever is swapped in between, no device is ever opened.
    """
    flags = _PATH_FLAGS | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        pfd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused("symlink", path) from None
        raise
    try:
        mode = os.fstat(pfd).st_mode
        if stat.S_ISLNK(mode):  # O_PATH|O_NOFOLLOW on a symlink opens the link itself
            raise Refused("symlink", path)
        if not stat.S_ISREG(mode):
            raise Refused("not_regular", path)
        fd = _open_fd(f"/proc/self/fd/{pfd}", _OPEN_FLAGS)
    finally:
        os.close(pfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # cannot happen (same inode): the final word anyway
            raise Refused("not_regular", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _components(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused("outside_root", rel)
    return parts


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir_beneath(root_fd: int, rel: str) -> int:
    """Open directory ``rel`` under the directory descriptor ``root_fd`` without following any symlink.

    Each component is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous one,
    so neither a symlink (absolute or relative) nor ``..`` can lead out of the root.
    Returns a new descriptor (a duplicate of ``root_fd`` for an empty path).
    """
    fd = os.dup(root_fd)
    try:
        for part in _components(rel):
            try:
                nxt = os.open(part, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (or ELOOP): tell it from a file.
                if e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and _is_symlink(part, fd)):
                    raise Refused("symlink", rel) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_parent_beneath(path: str | os.PathLike, root: str | os.PathLike) -> int | None:
    """A descriptor (``DIR_FLAGS``) of the directory holding ``path``, which must resolve to ``root`` or below.

    Returns None when ``path``'s directory resolves (``realpath``) outside ``root``. The
    directory is then opened from ``root`` down without following any symlink, so a directory
    swapped for a symlink after the check raises ``Refused("symlink")`` instead of leading
    out. Other ``OSError`` (``FileNotFoundError``...) is left to the caller. The last
    component of ``path`` is not looked at: the caller opens it relative to the descriptor.

    Most paths (an inotify event's directory under its watched root) lie under ``root`` as
    written, with no symlink on the way: they are opened at once, component by component,
    and only a path with a symlink in it (or written outside ``root``) pays for ``realpath``
    (its lstat of every component was most of the cost of a file event on a busy /tmp).
    """
    real_root = os.path.realpath(root)
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    prefix = real_root.rstrip("/") + "/"
    if parent == real_root or parent.startswith(prefix):
        try:
            return _open_under(real_root, parent[len(prefix):] if parent != real_root else "")
        except Refused as e:
            if e.reason != "symlink":
                raise
    parent = os.path.realpath(parent)
    if not (parent == real_root or parent.startswith(prefix)):
        return None
    return _open_under(real_root, os.path.relpath(parent, real_root))


def _open_under(real_root: str, rel: str) -> int:
    root_fd = os.open(real_root, DIR_FLAGS)
    try:
        return open_dir_beneath(root_fd, "" if rel == "." else rel)
    finally:
        os.close(root_fd)


def open_beneath(root, rel: str) -> int:
    """Open regular file ``rel`` (absolute or relative, interpreted inside ``root``) without leaving ``root``.

    ``root`` is a directory path (followed: ``/proc/PID/root`` is meant to be) or a directory
    descriptor. Any symlink on the way, ``..``, or a non-regular target raises ``Refused``.
    """
    parts = _components(rel)
    if not parts:
        raise Refused("not_regular", rel)
    if isinstance(root, int):
        root_fd = os.dup(root)
    else:
        root_fd = os.open(root, DIR_FLAGS)
    try:
        dir_fd = open_dir_beneath(root_fd, "/".join(parts[:-1]))
    finally:
        os.close(root_fd)
    try:
        return open_regular(parts[-1], dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
