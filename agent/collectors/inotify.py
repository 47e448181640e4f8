"""Recursive inotify watches that never leave their tree (for ``fswatch``): ctypes, no watchdog.

A watch is added to the directory an ``O_PATH|O_NOFOLLOW|O_DIRECTORY`` descriptor names,
opened one component at a time from the tree's root descriptor (``confined.open_dir_beneath``):
``inotify_add_watch("/proc/self/fd/N", mask | IN_ONLYDIR)`` watches exactly the inode that was
checked (a directory, on the root's device), so a directory swapped for a symlink to ``/``
(``renameat2(RENAME_EXCHANGE)``) is refused, never walked, and host writes never arrive as the
tree's events. Watches are capped per tree and in all; what is refused is counted by reason
(``symlink``, ``device``, ``tree_cap``, ``total_cap``, ``error``).

One inotify instance serves every tree (``fs.inotify.max_user_instances`` is small); a watch
descriptor is shared when two trees hold the same directory. ``Reader`` is the one thread that
reads events; it calls back with the instance lock *not* held by anyone else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import threading
from collections.abc import Callable

from agent.collectors.confined import DIR_FLAGS, Refused, open_dir_beneath

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x08, 0x40, 0x80, 0x100
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x400, 0x800, 0x4000, 0x8000, 0x40000000
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_libc = ctypes.CDLL(None, use_errno=True)

Rel = tuple[str, ...]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class Inotify:
    """One inotify instance, its trees and the shared watch descriptors; thread-safe."""

    def __init__(self, max_watches: int) -> None:
        self.fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        self.max_watches = max_watches
        self.lock = threading.RLock()
        self.owners: dict[int, set[int]] = {}  # wd -> {id(tree)}
        self.trees: dict[int, Tree] = {}

    def close(self) -> None:
        with self.lock:
            for tree in list(self.trees.values()):
                tree.close()
            os.close(self.fd)

    def read(self) -> list[tuple[int, int, bytes]]:
        """Pending events as (wd, mask, name); [] when none."""
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out, at = [], 0
        while at + _EVENT.size <= len(buf):
            wd, mask, _, length = _EVENT.unpack_from(buf, at)
            out.append((wd, mask, buf[at + 16:at + 16 + length].rstrip(b"\0")))
            at += 16 + length
        return out


class Tree:
    """The watches of one root directory (a host path or a container's writable layer)."""

    def __init__(self, ino: Inotify, path: str, max_watches: int, count: Callable[[str], None]) -> None:
        self.ino, self.path, self.max_watches, self.count = ino, path, max_watches, count
        self.root_fd = os.open(path, DIR_FLAGS | os.O_NOFOLLOW)  # a symlink as the root: ELOOP/ENOTDIR
        try:
            st = os.fstat(self.root_fd)
            if not stat.S_ISDIR(st.st_mode):
                raise Refused("not_a_directory", path)
        except BaseException:
            os.close(self.root_fd)
            raise
        self.dev, self.identity = st.st_dev, (st.st_dev, st.st_ino)
        self.wds: dict[int, tuple[int, str]] = {}  # wd -> (parent wd, name); the root: (-1, "")
        self.children: dict[tuple[int, str], int] = {}  # the reverse of wds
        self.root_wd: int | None = None
        self.lost = False  # the root directory itself went away (IN_IGNORED of its watch)
        with ino.lock:
            ino.trees[id(self)] = self

    def refuse(self, reason: str) -> None:
        self.count(f"watch_refused_{reason}")

    def add(self, rel: Rel = (), depth: int = 0) -> list[Rel]:
        """Watch directory ``rel`` and everything below it; returns the directories newly watched.

        A directory already watched (moved, or exchanged back and forth) only gets its new name:
        its sub-directories follow it (paths are made from parent links), nothing is walked again.
        """
        added: list[Rel] = []
        parent = self.wd_of(rel[:-1]) if rel else -1
        stack = [(rel, parent)]
        while stack:
            rel, parent = stack.pop()
            try:
                fd = open_dir_beneath(self.root_fd, "/".join(rel))
            except Refused as exc:
                self.refuse(exc.reason)
                continue
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    self.refuse("symlink")  # raced into a symlink or a file: not entered
                continue  # ENOENT: gone meanwhile
            try:
                wd = self._watch(fd, rel, parent)
                if wd is None:
                    continue
                added.append(rel)
                stack.extend(((*rel, name), wd) for name in self._subdirs(fd))
            finally:
                os.close(fd)
        return added

    def _watch(self, fd: int, rel: Rel, parent: int | None) -> int | None:
        """The new watch of the checked directory ``fd``; None when refused or already watched (renamed)."""
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            self.refuse("symlink")
            return None
        if st.st_dev != self.dev:
            self.refuse("device")  # a mount point (or a swap) inside the tree: another file system
            return None
        if parent is None:  # its parent is not watched (refused or gone): neither is it
            return None
        ino = self.ino
        with ino.lock:
            if len(self.wds) >= self.max_watches:
                self.refuse("tree_cap")
                return None
            if len(ino.owners) >= ino.max_watches:
                self.refuse("total_cap")
                return None
            try:  # the magic link names the checked inode; IN_ONLYDIR: a directory or nothing
                wd = _check(_libc.inotify_add_watch(ino.fd, f"/proc/self/fd/{fd}".encode(), MASK | IN_ONLYDIR),
                            "inotify_add_watch")
            except OSError as exc:
                self.refuse("error")
                if exc.errno == errno.ENOSPC:
                    self.count("watch_errors")
                return None
            known = self.wds.get(wd)
            if known is not None and self.children.get(known) == wd:
                del self.children[known]
            ino.owners.setdefault(wd, set()).add(id(self))
            self.wds[wd] = link = (parent, rel[-1] if rel else "")
            self.children[link] = wd
            if not rel:
                self.root_wd = wd
        return None if known is not None else wd

    def wd_of(self, rel: Rel) -> int | None:
        """The watch of directory ``rel`` (by the names it has now), or None."""
        with self.ino.lock:
            wd = self.root_wd
            for name in rel:
                if wd is None:
                    return None
                wd = self.children.get((wd, name))
            return wd

    def rel_of(self, wd: int) -> Rel | None:
        """The path of watched directory ``wd`` under the root, from its parent links (None: detached)."""
        with self.ino.lock:
            parts: list[str] = []
            for _ in range(4096):
                if wd == self.root_wd:
                    return tuple(reversed(parts))
                link = self.wds.get(wd)
                if link is None:
                    return None
                wd, name = link
                parts.append(name)
        return None

    def files_in(self, rel: Rel) -> list[str]:
        """Names of the non-empty regular files directly in ``rel`` (reached from the root, never by a symlink)."""
        try:
            fd = open_dir_beneath(self.root_fd, "/".join(rel))
        except OSError:
            return []
        try:
            lfd = os.open(".", _LIST_FLAGS, dir_fd=fd)
        except OSError:
            return []
        finally:
            os.close(fd)
        out = []
        try:
            for name in os.listdir(lfd):
                try:
                    st = os.stat(name, dir_fd=lfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size:
                    out.append(name)
        finally:
            os.close(lfd)
        return out

    @staticmethod
    def _subdirs(fd: int) -> list[str]:
        try:
            lfd = os.open(".", _LIST_FLAGS, dir_fd=fd)
        except OSError:
            return []
        try:
            with os.scandir(lfd) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        finally:
            os.close(lfd)

    def forget(self, wd: int) -> None:
        """The kernel dropped ``wd`` (IN_IGNORED: its directory was deleted)."""
        with self.ino.lock:
            link = self.wds.pop(wd, None)
            if link is not None and self.children.get(link) == wd:
                del self.children[link]
            owners = self.ino.owners.get(wd)
            if owners is not None:
                owners.discard(id(self))
                if not owners:
                    del self.ino.owners[wd]
            if wd == self.root_wd:
                self.lost, self.root_wd = True, None

    def close(self) -> None:
        """Remove every watch only this tree holds, and the root descriptor."""
        ino = self.ino
        with ino.lock:
            for wd in list(self.wds):
                owners = ino.owners.get(wd, set())
                owners.discard(id(self))
                if not owners:
                    ino.owners.pop(wd, None)
                    _libc.inotify_rm_watch(ino.fd, wd)
            self.wds.clear()
            self.children.clear()
            ino.trees.pop(id(self), None)
            if self.root_fd >= 0:
                os.close(self.root_fd)
                self.root_fd = -1


class Reader(threading.Thread):
    """Reads the instance's events and hands each to ``dispatch(tree, rel, mask, name)`` (or ``overflow()``)."""

    def __init__(self, ino: Inotify, dispatch: Callable[[Tree, Rel, int, str], None],
                 overflow: Callable[[], None]) -> None:
        super().__init__(name="minerwatch-inotify", daemon=True)
        self.ino, self.dispatch, self.overflow = ino, dispatch, overflow
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        try:
            while not self._stopping:
                ready, _, _ = select.select([self.ino.fd, self._wake_r], [], [])
                if self.ino.fd in ready:
                    for wd, mask, name in self.ino.read():
                        self._one(wd, mask, os.fsdecode(name))
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _one(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.overflow()
            return
        with self.ino.lock:
            trees = [self.ino.trees[t] for t in self.ino.owners.get(wd, ()) if t in self.ino.trees]
        for tree in trees:
            if mask & IN_IGNORED:
                tree.forget(wd)
            elif (rel := tree.rel_of(wd)) is not None:
                self.dispatch(tree, rel, mask, name)
