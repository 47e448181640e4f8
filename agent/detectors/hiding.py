"""A process hidden from the /proc listings, a system-wide preload library, a library preloaded from elsewhere.

libprocesshider and its kin (used by mining campaigns) go in ``/etc/ld.so.preload`` and filter
``readdir()``, so ``ps``, ``top`` and every dynamically linked agent stop seeing the miner; host
root can also mount an empty directory over ``/proc/PID``. The cross-view
(``collectors/crossview.py``) compares libc's listing of ``/proc``, a raw ``getdents64`` one, every
cgroup's ``cgroup.procs`` and a probe of ``/proc/N``, and reads the preload files; what it finds is
attached to the snapshots this detector judges:

* a process missing from a listing another view has, or with a mount on ``/proc/PID``: strong
  (medium alone, high with anything else): nothing benign hides a process;
* ``/etc/ld.so.preload`` naming a library, in the host's root or a container's (a file subject):
  medium on its own (a few legitimate tools use it; every process of that root loads it);
* ``LD_PRELOAD`` naming a library outside the system library directories: weak.
"""

from __future__ import annotations

import posixpath
import re

from agent.detectors.base import Context
from agent.model import Evidence, FileSnapshot, ProcessSnapshot

ID = "hiding"
VERSION = 1
TITLE = "Hidden process or preloaded library"

_RULE = f"{ID}@{VERSION}"
HIDDEN_WEIGHT = 45  # medium alone; high with one more piece of evidence
PRELOAD_FILE_WEIGHT = 35  # medium
LD_PRELOAD_WEIGHT = 10  # weak
SYSTEM_LIB_DIRS = ("/lib/", "/lib32/", "/lib64/", "/libx32/", "/usr/lib/", "/usr/lib32/", "/usr/lib64/", "/usr/libx32/")
_SPLIT = re.compile(r"[\s:]+")
_MAX_LIBS = 8
_MAX_DETAIL = 200
_VIEWS = {"readdir": "libc's readdir() of /proc", "getdents": "the raw getdents64 listing of /proc"}


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def libraries(text: str) -> list[str]:
    """The libraries a preload list names (``#`` starts a comment; whitespace or ``:`` separates them)."""
    out = []
    for line in text.splitlines():
        out.extend(p for p in _SPLIT.split(line.split("#", 1)[0]) if p)
    return out


def outside_system_dirs(lib: str) -> bool:
    """A path (not a bare name, which ld.so looks up in the library path) outside the system library dirs."""
    if "/" not in lib:
        return False
    path = posixpath.normpath(lib.replace("${LIB}", "lib").replace("$LIB", "lib"))
    return not path.startswith(SYSTEM_LIB_DIRS)


def is_preload_file(path: str) -> bool:
    return path == "/etc/ld.so.preload" or path.endswith("/etc/ld.so.preload")


def _process(proc: ProcessSnapshot) -> list[Evidence]:
    out = []
    what = f"PID {proc.pid} ({proc.exe or proc.name or 'unreadable'})"
    if proc.hidden_from:
        views = " and ".join(_VIEWS.get(v, v) for v in proc.hidden_from)
        out.append(Evidence("hiding", _clip(f"{what} is hidden from {views}, though other views of the process "
                                            "table show it (a readdir-filtering preload library or a rootkit)"),
                            HIDDEN_WEIGHT, _RULE))
    if proc.proc_mounted:
        out.append(Evidence("hiding", _clip(f"something is mounted over /proc/{proc.pid}, hiding {what} from "
                                            "every tool that reads /proc"), HIDDEN_WEIGHT, _RULE))
    outside = [lib for lib in libraries(proc.ld_preload) if outside_system_dirs(lib)][:_MAX_LIBS]
    if outside:
        out.append(Evidence("hiding", _clip(f"{what} preloads {', '.join(outside)} (LD_PRELOAD), outside the system "
                                            "library directories"), LD_PRELOAD_WEIGHT, _RULE, strong=False))
    return out


def _file(file: FileSnapshot) -> list[Evidence]:
    if not is_preload_file(file.path):
        return []
    where = f"in container {file.container_id[:12]}" if file.container_id else "on the host"
    libs = libraries(file.text)
    if libs:
        detail = f"{file.path} {where} preloads {', '.join(libs[:_MAX_LIBS])} into every dynamically linked program"
    elif file.partial:
        detail = f"{file.path} {where} exists but was not read ({', '.join(file.partial)}): ld.so would load what it names"
    else:
        return []  # empty, or comments only: preloads nothing
    return [Evidence("hiding", _clip(detail), PRELOAD_FILE_WEIGHT, _RULE)]


def detect(subject, ctx: Context) -> list[Evidence]:
    if isinstance(subject, ProcessSnapshot):
        return [] if subject.is_kernel_thread and not (subject.hidden_from or subject.proc_mounted) else _process(subject)
    if isinstance(subject, FileSnapshot):
        return _file(subject)
    return []
