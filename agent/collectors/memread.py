"""Read the string-bearing regions of a process's memory: the plan, and the helper process that reads.

Imports nothing of ours (standard library only): ``YaraScanner.scan_memory`` runs this file as
a separate process (``python -I -S memread.py ...``) and reads its output with a deadline, so
a read of ``/proc/PID/mem`` that never returns (a page of a file on a FUSE mount whose server
never answers READ, an NFS server gone away) stalls only this helper, which is killed, never
the worker. A thread would not do: a thread stuck in the kernel can be neither killed nor
abandoned without leaking it for good; a process is reaped once the kernel lets it go.

Before anything is read, each file mapping's filesystem is looked up by its device number in
the process's own ``/proc/PID/mountinfo`` (text from procfs: it touches no file system), and
mappings on FUSE and network file systems are skipped; the remaining file mappings are
``stat``-ed through ``/proc/PID/map_files`` (in the helper, so even that cannot stall the
worker) and anything that is not a regular file (a device) is skipped.

Output on stdout: a JSON header line (``size`` and the plan's counts), ``size`` bytes (the
regions, each after ``GAP`` zero bytes), a JSON trailer line (bytes read, unreadable pages).
With ``--yara YARA_DIR EXTERNAL TIMEOUT`` the helper also matches: it reads saved YARA rules (the
agent's own, ``Rules.save`` bytes) from stdin, imports ``yara`` from ``YARA_DIR``, joins the regions
into one buffer here and matches it once with ``EXTERNAL`` set true, and writes one JSON line of
matches (rule, namespace, meta, each string's first ``MAX_INSTANCES`` offsets) in place of the bytes:
the buffer (up to ``total_bytes``) lives only in this short-lived process, never in the daemon.
Exit status 3: the PID names no process (or another one); 4: another error (on stderr).

Why this module is long: it runs alone, as a script with the standard library only, so the plan, the
mount and device checks, the reads and the helper's matching cannot be split into modules of ours.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass

# File systems whose pages may never arrive: a mapping on one of these (by type prefix) is not read.
UNSAFE_FS = ("fuse", "nfs", "cifs", "smb", "9p", "ceph", "glusterfs", "afs", "virtiofs", "lustre", "gfs2",
             "ocfs2", "orangefs", "coda", "ncp", "devtmpfs")
GAP = 16  # zero bytes before each region, so a string never spans two regions
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CHUNK = 4 << 20
_MAX_BAD_PAGES = 64  # unreadable pages in one region before the rest of it is given up
_SKIP_NAMES = ("[vvar", "[vsyscall]", "[vdso]", "[uprobes]")
# Read-only mappings of these files are the installed packages' bytes: not read.
_SYSTEM_DIRS = ("/lib/", "/lib32/", "/lib64/", "/usr/lib/", "/usr/lib32/", "/usr/lib64/", "/usr/share/")
_DEV_ZERO = os.makedev(1, 5)  # a private /dev/zero mapping is anonymous memory
MAX_INSTANCES = 64  # offsets kept per matched string (where a hit lies: yarascan.region_of)


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """How much of a process's memory one scan may read, and how long it may take."""

    region_bytes: int = 64 << 20  # a mapping up to this size is read whole (a larger exe/heap: this much)
    head_bytes: int = 1 << 20  # of any other larger mapping only this head is read
    total_bytes: int = 256 << 20  # all regions of one scan together
    deadline_s: float = 20.0  # the helper reading them is killed after this long
    unsafe_fs: tuple[str, ...] = UNSAFE_FS  # mappings on file systems of these types are not read


@dataclass(frozen=True, slots=True)
class Region:
    start: int
    length: int  # bytes to read from start (already capped)
    rank: int  # 0 is read first
    kind: str = ""  # KINDS: what the bytes are, for judging a YARA hit that lies in them


# What a region holds: the image of a program or library that is executed here (its code and its
# read-only data: where a miner's own strings are), anonymous executable memory (unpacked or JIT code),
# the heap, the stack, or other data (anonymous buffers, mapped data files).
KINDS = ("code", "anon-exec", "heap", "stack", "data")

# --------------------------------------------------------------------------- the program behind a loader
# ``/lib64/ld-linux-x86-64.so.2 PROGRAM ARGS`` runs PROGRAM with /proc/PID/exe naming the loader.
_LOADER = re.compile(r"^ld(?:-linux(?:-[a-z0-9_-]+)?|64|-musl-[a-z0-9_]+|-uClibc)?\.so(?:\.[0-9]+)*$")
# ld.so options that take a value (glibc elf/rtld.c; musl ldso/dynlink.c: --library-path, --preload, --argv0)
_LOADER_VALUE_OPTIONS = frozenset({"--library-path", "--preload", "--argv0", "--audit", "--inhibit-rpath",
                                   "--glibc-hwcaps-prefix", "--glibc-hwcaps-mask"})


def is_loader(path: str) -> bool:
    """Is ``path`` a dynamic loader (ld-linux-x86-64.so.2, ld-linux-aarch64.so.1, ld-musl-x86_64.so.1, ld.so)?"""
    return bool(path) and bool(_LOADER.match(path.rsplit("/", 1)[-1]))


def loader_argument(argv: list[str] | tuple[str, ...]) -> str:
    """The program a loader command line names: its first argument that is not a loader option."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else ""
        if not arg.startswith("--"):
            return arg
        i += 2 if arg in _LOADER_VALUE_OPTIONS else 1
    return ""


def _strip_deleted(path: str) -> str:
    return path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path


def loader_program(maps: str, exe: str, argv, cwd: str = "") -> tuple[str, str] | None:
    """``(path, "lo-hi")`` of the program a dynamic loader runs, or None (``exe`` is no loader, or no program).

    The program is the executable file mapping that ``argv`` names (after the loader's options; by path,
    then by base name: ``/lib`` may be a symlink to ``/usr/lib``); failing that (argv rewritten, file
    renamed), the loader's first object: ld.so maps the program before its libraries, top-down, so it is
    the highest executable file mapping that is not the loader's. ``lo-hi`` names its first mapping in
    ``/proc/PID/map_files``."""
    if not is_loader(exe):
        return None
    firsts: dict[str, str] = {}  # path -> its first mapping ("lo-hi")
    executed: list[str] = []  # paths of files mapped executable
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
            continue
        path = _strip_deleted(fields[5])
        if path == exe or is_loader(path):
            continue
        firsts.setdefault(path, fields[0])
        if "x" in fields[1] and path not in executed:
            executed.append(path)
    mapped = {p: firsts[p] for p in executed}
    if not mapped:
        return None
    target = loader_argument(list(argv))
    if target:
        want = posixpath.normpath(posixpath.join(cwd or "/", target))
        if want in mapped:
            return want, mapped[want]
        same = [p for p in mapped if p.rsplit("/", 1)[-1] == want.rsplit("/", 1)[-1]]
        if len(same) == 1:
            return same[0], mapped[same[0]]
    path = max(mapped, key=lambda p: int(mapped[p].partition("-")[0], 16))
    return path, mapped[path]


def _rank(perms: str, path: str, exe: str | None, program: str = "") -> int | None:
    """Reading order of one mapping, or None to skip it (unreadable, shared, kernel, device, system)."""
    if perms[0] != "r" or perms[3] != "p" or path.startswith(_SKIP_NAMES):
        return None
    if (exe is not None and path == exe) or (program and _strip_deleted(path) == program):
        return 0
    if path == "[heap]":
        return 1
    if not path or path.startswith(("[stack", "[anon")):
        return 2
    if path.startswith("/dev/") and not path.startswith("/dev/zero"):
        return None
    if perms[1] == "w":
        return 3  # a library's data segment, a private writable file mapping
    return None if path.startswith(_SYSTEM_DIRS) else 4


# skip(lo, hi, dev, inode, path) -> True when this file mapping must not be read
Skip = Callable[[int, int, str, str, str], bool]


def _kind(perms: str, path: str, images: set[str], rank: int) -> str:
    """What a readable mapping holds (``KINDS``); ``images``: paths of files mapped executable here."""
    if rank == 0 or (path.startswith("/") and not path.startswith("/dev/zero") and _strip_deleted(path) in images):
        return "code"
    anonymous = not path or path.startswith(("[anon", "/dev/zero"))
    if anonymous and perms[2] == "x":
        return "anon-exec"
    if path == "[heap]":
        return "heap"
    if path.startswith("[stack"):
        return "stack"
    return "data"


def plan_regions(maps: str, exe: str | None, limits: MemoryLimits,
                 skip: Skip | None = None, program: str = "") -> tuple[list[Region], int, int]:
    """Choose what to read from a ``/proc/PID/maps`` text: (regions, skipped, truncated).

    ``exe`` is the ``/proc/PID/exe`` link text: mappings of that path are the program itself, and so
    are those of ``program`` (the program a dynamic loader runs: ``loader_program``), wherever it lies.
    ``skip`` is asked about every file mapping (inode not 0) that would otherwise be read.
    """
    candidates, skipped = [], 0
    lines = [line.split(maxsplit=5) for line in maps.splitlines()]
    images = {_strip_deleted(f[5]) for f in lines if len(f) > 5 and len(f[1]) > 2 and f[1][2] == "x"
              and f[5].startswith("/") and f[4] != "0"}
    for fields in lines:
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        lo, hi = int(start, 16), int(end, 16)
        path = fields[5] if len(fields) > 5 else ""
        rank = _rank(fields[1], path, exe, program)
        if rank is not None and skip is not None and fields[4] != "0" and skip(lo, hi, fields[3], fields[4], path):
            rank = None
        if rank is None or hi >= 1 << 63:
            skipped += fields[1][0] == "r"
            continue
        candidates.append((rank, hi - lo, lo, _kind(fields[1], path, images, rank)))
    regions, truncated, left = [], 0, limits.total_bytes
    for rank, size, lo, kind in sorted(candidates):
        # The program's own segments and its heap hold its strings: read up to region_bytes of
        # them; of any other large mapping (a dataset, a cache, a buffer) only the head.
        length = size if size <= limits.region_bytes else limits.region_bytes if rank <= 1 else limits.head_bytes
        length = min(length, left)
        if length <= 0:
            skipped += 1
            continue
        truncated += length < size
        regions.append(Region(lo, length, rank, kind))
        left -= length
    return regions, skipped, truncated


def read_region(fd: int, view: memoryview, address: int) -> tuple[int, int]:
    """Fill ``view`` from ``address`` of an open ``/proc/PID/mem``: (bytes read, unreadable pages).

    An unreadable page (EIO/EFAULT: a hole, a guard page, a file mapping past its end) stays
    zero and reading goes on past it; a process that has exited reads as empty.
    """
    done = got_total = bad = 0
    while done < len(view) and bad <= _MAX_BAD_PAGES:
        try:
            got = os.preadv(fd, [view[done:done + _CHUNK]], address + done)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EFAULT):
                raise
            bad += 1
            done += _PAGE - (address + done) % _PAGE
            continue
        if got == 0:
            break
        done += got
        got_total += got
    return got_total, bad


def mount_types(mountinfo: str) -> dict[tuple[int, int], str]:
    """(major, minor) -> file system type, from a ``/proc/PID/mountinfo`` text."""
    out = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 3 or not rest:
            continue
        major, _, minor = fields[2].partition(":")
        if major.isdigit() and minor.isdigit():
            out.setdefault((int(major), int(minor)), rest[0])
    return out


class FsCheck:
    """The ``skip`` of ``plan_regions`` in the helper: unsafe file systems by mountinfo, then non-regular files."""

    def __init__(self, base: str, types: dict[tuple[int, int], str], unsafe: tuple[str, ...]) -> None:
        self.base, self.types, self.unsafe = base, types, unsafe
        self.unsafe_fs = self.devices = 0

    def __call__(self, lo: int, hi: int, dev: str, inode: str, path: str) -> bool:
        major, _, minor = dev.partition(":")
        try:
            fstype = self.types.get((int(major, 16), int(minor, 16)), "")
        except ValueError:
            fstype = ""
        if fstype.startswith(self.unsafe):
            self.unsafe_fs += 1
            return True
        try:  # follows the mapping to its file; stat opens nothing (a device's open is never called)
            st = os.stat(f"{self.base}/map_files/{lo:x}-{hi:x}")
        except OSError:  # no CAP_SYS_ADMIN, or gone: the path rules of _rank stand
            return False
        if stat.S_ISREG(st.st_mode) or (stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_ZERO):
            return False
        self.devices += 1
        return True


def _start_ticks(base: str) -> int:
    with open(f"{base}/stat", "rb") as f:
        text = f.read()
    return int(text[text.rindex(b")") + 2:].split()[19])


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


FROZEN_COMMAND = "__memread"  # argv[1] of a frozen (PyInstaller) minerwatch that runs this helper


def helper_argv(args: list[str]) -> list[str]:
    """The command line of a helper process: ``python -I -S memread.py ARGS`` from a source install; in a
    frozen build (where ``sys.executable`` is minerwatch itself and there is no memread.py on disk)
    ``minerwatch __memread ARGS``, which its entry point hands to ``main`` before the CLI loads."""
    if getattr(sys, "frozen", False):
        return [sys.executable, FROZEN_COMMAND, *args]
    return [sys.executable, "-I", "-S", __file__, *args]


def _load_rules(yara_dir: str):
    """The rules the agent wrote on stdin, with ``yara`` imported from ``yara_dir`` (this runs with -I -S)."""
    import io

    data = sys.stdin.buffer.read()
    sys.path.insert(0, yara_dir)
    import yara

    return yara, yara.load(file=io.BytesIO(data))


def _match_json(match) -> dict:
    return {"rule": match.rule, "namespace": match.namespace, "meta": dict(match.meta),
            "strings": [[inst.offset for inst in list(s.instances)[:MAX_INSTANCES]] for s in match.strings]}


def main(argv: list[str]) -> int:
    """``memread.py PROC_ROOT PID REGION_BYTES HEAD_BYTES TOTAL_BYTES UNSAFE,FS,TYPES [--yara DIR EXTERNAL TIMEOUT]``"""
    matcher = None
    if len(argv) >= 10 and argv[6] == "--yara":
        yara, rules = _load_rules(argv[7])
        matcher = (yara, rules, argv[8], int(argv[9]))
    proc_root, pid = argv[0], int(argv[1])
    limits = MemoryLimits(int(argv[2]), int(argv[3]), int(argv[4]),
                          unsafe_fs=tuple(t for t in argv[5].split(",") if t))
    base = f"{proc_root}/{pid}"
    out = sys.stdout.buffer
    try:
        born = _start_ticks(base)
        fd = os.open(f"{base}/mem", os.O_RDONLY | os.O_CLOEXEC)
        maps = _read(f"{base}/maps")
        try:
            mountinfo = _read(f"{base}/mountinfo")
        except OSError:  # then only the stat through map_files (here, under the deadline) decides
            mountinfo = ""
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:  # a kernel thread or a zombie: no executable to recognise
            exe = None
        program = ""
        if exe is not None and is_loader(exe):
            with open(f"{base}/cmdline", "rb") as f:
                argv = [a.decode("utf-8", "surrogateescape") for a in f.read(1 << 16).split(b"\0")]
            try:
                cwd = os.readlink(f"{base}/cwd")
            except OSError:
                cwd = ""
            found = loader_program(maps, exe, argv, cwd)
            program = found[0] if found else ""
        if _start_ticks(base) != born:
            raise OSError(errno.ESRCH, f"pid {pid} was reused")
        check = FsCheck(base, mount_types(mountinfo), limits.unsafe_fs)
        regions, skipped, truncated = plan_regions(maps, exe, limits, check, program)
        size = sum(GAP + r.length for r in regions)
        # layout: [length, kind] of each region in buffer order (each after GAP zero bytes)
        out.write(json.dumps({"size": size, "regions": len(regions), "regions_skipped": skipped,
                              "regions_truncated": truncated, "regions_unsafe_fs": check.unsafe_fs,
                              "regions_device": check.devices,
                              "layout": [[r.length, r.kind] for r in regions]}).encode() + b"\n")
        read = bad = 0
        if matcher is not None:
            yara, rules, external, timeout = matcher
            whole = bytearray(size)  # zero-filled: each region after GAP zero bytes
            view, at = memoryview(whole), 0
            for region in regions:
                at += GAP
                got, unreadable = read_region(fd, view[at:at + region.length], region.start)
                read, bad, at = read + got, bad + unreadable, at + region.length
            try:
                matches = rules.match(data=whole, externals={external: True}, timeout=timeout)
            except yara.Error as exc:
                raise OSError(errno.EIO, f"yara: {exc}") from None
            out.write(json.dumps([_match_json(m) for m in matches]).encode() + b"\n")
        else:
            gap = bytes(GAP)
            for region in regions:
                buf = bytearray(region.length)
                got, unreadable = read_region(fd, memoryview(buf), region.start)
                read, bad = read + got, bad + unreadable
                out.write(gap)
                out.write(buf)
        out.write(json.dumps({"bytes": read, "unreadable_pages": bad}).encode() + b"\n")
        out.flush()
    except OSError as exc:
        sys.stderr.write(f"{exc.errno or 0}:{exc}\n")
        return 3 if exc.errno in (errno.ESRCH, errno.ENOENT) else 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
