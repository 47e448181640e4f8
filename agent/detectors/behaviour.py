"""Sustained flat CPU and RandomX artefacts, from a ``BehaviourVerdict`` (or a container's ``CgroupVerdict``).

All of it is weak evidence (``strong=False``): on its own the engine keeps it at ``low``
whatever the weights, because compilers, encoders and batch jobs are busy and flat too,
databases and DPDK use huge pages, JVM heaps are big, and tuning tools (turbostat,
undervolt) open ``/dev/cpu/*/msr``. Beside any strong signal the weights raise the finding:
the RandomX-specific artefacts weigh more than bare CPU, and the behaviour total is capped
(``MAX_TOTAL``) so behaviour plus one moderate signal reaches ``high``, not ``critical``.

CPU is judged against what the process may use: one that keeps using nearly all of its cgroup's
quota (``cpu_limit``) is sustained at a fraction of a core, and the size artefacts count on it.
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import (
    HUGEPAGES_RAISED, MSR_LOADED, MSR_MODPROBE_CHILD, MSR_WRITES_ON, BehaviourVerdict, CgroupVerdict, ContainerInfo,
    Evidence, ProcessSnapshot,
)

ID = "behaviour"
VERSION = 2
TITLE = "Cryptomining behaviour"

_RULE = f"{ID}@{VERSION}"
MAX_TOTAL = 45
AT_LIMIT = 0.85  # this share of its CPU quota is "all of it"
BUSY_CPU = 0.5  # size artefacts count only on a process using at least this much CPU
# (low MiB, high MiB, what): RandomX light-mode cache (256 MiB + JIT/scratchpads; XMRig shows
# HugetlbPages 266240 kB) and fast-mode dataset (2080 MiB, with the cache 2396160 kB).
RANDOMX_SIZES_MB = ((252, 300, "RandomX light-mode cache"), (2070, 2420, "RandomX fast-mode dataset"))
_ARTEFACTS = {
    MSR_MODPROBE_CHILD: (25, "started `modprobe msr` as a child (XMRig's MSR tweak)"),
    MSR_WRITES_ON: (15, "msr allow_writes was switched on around when it started"),
    MSR_LOADED: (15, "the msr module was loaded around when it started"),
    HUGEPAGES_RAISED: (15, "nr_hugepages was raised when it began using huge pages"),
}


def randomx_size(mb: float) -> str:
    """What a RandomX allocation of this size would be, or ""."""
    return next((what for lo, hi, what in RANDOMX_SIZES_MB if lo <= mb <= hi), "")


def detect(subject: ProcessSnapshot | ContainerInfo, ctx: Context) -> list[Evidence]:
    """Evidence from the verdict the daemon attached to a process or a container (none: nothing)."""
    v = subject.behaviour
    if isinstance(v, CgroupVerdict):
        return container_evidence(v)
    return process_evidence(v) if isinstance(v, BehaviourVerdict) else []


def process_evidence(v: BehaviourVerdict) -> list[Evidence]:
    out: list[tuple[int, str]] = []
    s = v.stats
    if v.sustained:
        per_core = v.busy_threads >= 2
        threads = f", {v.busy_threads} busy thread(s) of {v.threads}" if v.busy_threads else ""
        quota = f" (all of its {v.cpu_limit:.2f}-core CPU quota)" if v.cpu_limit and s.mean_cpu >= AT_LIMIT * v.cpu_limit else ""
        out.append((20 if per_core else 15,
                    f"sustained flat CPU: {s.mean_cpu:.2f} cores{quota} over {s.span_s:.0f} s "
                    f"({s.samples} samples, variation {s.flatness:.2f}){threads}"))
    busy = v.sustained or s.mean_cpu >= BUSY_CPU
    if busy and v.hugetlb_kb > 0:
        mb = v.hugetlb_kb / 1024
        what = randomx_size(mb)
        out.append((25, f"{mb:.0f} MiB of huge pages, the size of a {what}") if what
                   else (10, f"{mb:.0f} MiB of huge pages on a busy process"))
    if busy and not (v.hugetlb_kb and randomx_size(v.hugetlb_kb / 1024)):
        sized = [(mb, randomx_size(mb)) for mb in v.anon_big_mappings_mb if randomx_size(mb)]
        if sized:
            out.append((10, f"{sized[0][0]} MiB anonymous mapping, the size of a {sized[0][1]}"))
    if v.msr_open:
        out.append((20, "has /dev/cpu/*/msr open (model-specific registers, XMRig's MSR tweak)"))
    for artefact in v.artefacts:
        if artefact in _ARTEFACTS:
            out.append(_ARTEFACTS[artefact])
    return _capped(out)


def container_evidence(v: CgroupVerdict) -> list[Evidence]:
    if not v.sustained:
        return []
    s = v.stats
    quota = f" (all of its {v.cpu_limit:.2f}-core quota)" if v.cpu_limit and s.mean_cpu >= AT_LIMIT * v.cpu_limit else ""
    return [Evidence("behaviour", f"container cgroup CPU sustained and flat: {s.mean_cpu:.2f} cores{quota} over "
                                  f"{s.span_s:.0f} s ({s.samples} samples, variation {s.flatness:.2f})",
                     15, _RULE, strong=False)]


def _capped(items: list[tuple[int, str]]) -> list[Evidence]:
    """Heaviest first; weights cut so that their sum never exceeds MAX_TOTAL (the details all stay)."""
    out, left = [], MAX_TOTAL
    for weight, detail in sorted(items, key=lambda wd: -wd[0]):
        out.append(Evidence("behaviour", detail, min(weight, left), _RULE, strong=False))
        left = max(0, left - weight)
    return out
