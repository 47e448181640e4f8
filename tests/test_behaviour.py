"""BehaviourModel on synthetic samples (injected clock), the behaviour detector, and the memory-scan path end to end."""

from __future__ import annotations

import dataclasses
import weakref

import pytest

from agent.daemon.behaviour import BehaviourModel, is_msr_modprobe
from agent.detectors import behaviour as det
from agent.detectors.base import Context
from agent.engine import severity_of
from agent.model import (
    HUGEPAGES_RAISED, MSR_LOADED, MSR_MODPROBE_CHILD, CgroupCpuSample, CgroupVerdict, ContainerInfo, CpuStats, Evidence,
    HostArtefacts, ProcessCpuSample, ProcessSnapshot, Severity,
)

from tests.sigfixtures import SIGS


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


_LAST: weakref.WeakKeyDictionary[BehaviourModel, dict[int, ProcessCpuSample]] = weakref.WeakKeyDictionary()


def see(model: BehaviourModel, s: ProcessCpuSample) -> None:
    """Feed ``s`` as the sampler hands it over: with its previous reading of the same process (``since``)."""
    last = _LAST.setdefault(model, {}).get(s.pid)
    if s.since is None and last is not None and last.start_ticks == s.start_ticks:
        s = dataclasses.replace(s, since=(last.t, last.cpu_seconds_total))
    _LAST[model][s.pid] = s
    model.observe(s)


def feed(model: BehaviourModel, pid: int, rates: list[float], *, start: float = 1000.0, step: float = 5.0,
         start_ticks: int = 111, threads: tuple[float, ...] = (), **kw) -> float:
    """Feed readings whose per-interval CPU rates are ``rates``; returns the last t."""
    t, total = start, 50.0
    see(model, ProcessCpuSample(pid, start_ticks, t, total, **kw))
    for r in rates:
        t += step
        total += r * step
        see(model, ProcessCpuSample(pid, start_ticks, t, total, threads or (r,), len(threads) or 1, **kw))
    return t


def model(clock: Clock | None = None, **kw) -> BehaviourModel:
    return BehaviourModel(window_s=60, min_samples=4, clock=clock or Clock(), **kw)


# ------------------------------------------------------------------------------ model


def test_sustained_flat_single_thread_is_sustained():
    """One thread at 99% for 30 s is sustained, flat, with one busy thread."""
    m = model()
    feed(m, 10, [0.99, 0.98, 0.99, 1.0, 0.99, 0.99])
    v = m.verdict(10)
    assert v.sustained and v.busy_threads == 1
    assert v.stats.samples == 6 and v.stats.span_s == 30
    assert v.mean_cpu == pytest.approx(0.99, abs=0.01) and v.stats.flatness < 0.05


def test_bursty_compile_like_load_is_not_flat():
    """A compile-like load that alternates bursts and pauses is not flat, hence not sustained."""
    m = model()
    feed(m, 11, [1.9, 0.1, 1.7, 0.0, 1.8, 0.3, 1.9, 0.2])
    v = m.verdict(11)
    assert v.stats.flatness > 0.25 and not v.sustained


def test_short_spike_is_not_sustained():
    """Two busy samples are a spike, not sustained use."""
    m = model()
    feed(m, 12, [1.0, 1.0])
    assert not m.verdict(12).sustained


def test_many_samples_over_too_short_a_span_are_not_sustained():
    """Enough samples squeezed into 8 s do not make 20 s of sustained use."""
    m = model()
    feed(m, 13, [1.0] * 8, step=1.0)
    v = m.verdict(13)
    assert v.stats.samples == 8 and not v.sustained


def test_idle_process_is_not_sustained_and_not_a_candidate():
    """A sleeping process takes no entry (no verdict, never scanned); one that barely moves is not sustained."""
    m = model()
    feed(m, 14, [0.0] * 8)
    assert m.verdict(14) is None and len(m) == 0 and m.candidates() == []
    feed(m, 13, [0.001] * 8)
    assert not m.verdict(13).sustained and m.candidates() == []


def test_an_entry_starts_from_the_reading_before_the_cpu_moved():
    """The first reading that shows CPU creates the entry with the previous one: its first rate is there at once."""
    m = model()
    see(m, ProcessCpuSample(12, 7, 1000.0, 3.0))
    see(m, ProcessCpuSample(12, 7, 1005.0, 3.0))
    assert m.verdict(12) is None
    see(m, ProcessCpuSample(12, 7, 1010.0, 8.0))
    v = m.verdict(12)
    assert v.stats.samples == 1 and v.mean_cpu == pytest.approx(1.0) and v.stats.span_s == 5.0
    see(m, ProcessCpuSample(12, 8, 1015.0, 9.0))  # a reused PID: the seed is the old process's, not used
    assert m.verdict(12) is None and m.verdict(12, start_ticks=7) is None


def test_window_forgets_old_busy_samples():
    """Busy samples older than the window no longer count once the process went idle."""
    m = model()
    t = feed(m, 15, [1.0] * 12)
    feed(m, 15, [0.0] * 14, start=t)
    v = m.verdict(15)
    assert v.mean_cpu < 0.01 and v.stats.span_s <= 60


def test_pid_reuse_resets_history():
    """A sample with another start time is a new process: the old history is dropped."""
    m = model()
    t = feed(m, 16, [1.0] * 6, start_ticks=1)
    see(m, ProcessCpuSample(16, 2, t + 5, 0.5))
    assert m.verdict(16, start_ticks=1) is None and m.verdict(16) is None, "the new one has no history (yet)"
    see(m, ProcessCpuSample(16, 2, t + 10, 5.5))
    v = m.verdict(16)
    assert v.start_ticks == 2 and v.stats.samples == 1 and not v.sustained


def test_out_of_order_samples_are_ignored():
    """A reading older than the last one changes nothing."""
    m = model()
    t = feed(m, 17, [1.0] * 5)
    before = m.verdict(17)
    see(m, ProcessCpuSample(17, 111, t - 7, 9999.0))
    assert m.verdict(17) == before


def test_busy_threads_is_the_median_over_detailed_samples():
    """Busy threads counts threads above 0.8 core, as the median over the detailed reads."""
    m = model()
    feed(m, 18, [2.0] * 5, threads=(0.99, 0.97, 0.01, 0.0))
    see(m, ProcessCpuSample(18, 111, 1030, 50 + 2.0 * 30, (0.5, 0.5, 0.0, 0.0), 4))
    assert m.verdict(18).busy_threads == 2


def test_processes_not_seen_for_two_windows_are_forgotten():
    """A process or cgroup that stopped being sampled is forgotten after two windows."""
    m = model()
    feed(m, 19, [1.0] * 3)
    m.observe_cgroup(CgroupCpuSample("gone", 1000, 1.0))
    feed(m, 20, [0.001] * 40, start=1000)
    assert m.verdict(19) is None and m.verdict(20) is not None and m.forgotten == 1
    assert m.cgroup_verdict("gone") is None


def test_tracked_processes_are_capped():
    """Beyond max_pids an entry is evicted (counted): a known-idle one first, else the newest single reading,
    else the least recently seen."""
    m = model(max_pids=3)
    for pid in (1, 2, 3):  # three that moved once, then went idle
        see(m, ProcessCpuSample(pid, 1, 1000 + pid, 0.0))
        see(m, ProcessCpuSample(pid, 1, 1005 + pid, 1.0))
        see(m, ProcessCpuSample(pid, 1, 1010 + pid, 1.0))
    m.note_artefact(4, 1, MSR_MODPROBE_CHILD, 1020)  # no reading yet, but noted
    assert len(m) == 3 and m.evicted == 1 and m.verdict(1) is None, "the least recently seen idle one went"
    see(m, ProcessCpuSample(5, 1, 1021, 0.0, hugetlb_kb=0))  # a detailed reading: an entry at once
    assert len(m) == 3 and m.evicted == 2 and m.verdict(5) is not None and m.verdict(2) is None
    for pid in (6, 7):  # busy ones: the idle 3 goes, then (nothing idle left) the newest single reading, 5
        see(m, ProcessCpuSample(pid, 1, 1030, 0.0))
        see(m, ProcessCpuSample(pid, 1, 1035, 5.0))
    assert m.evicted == 4 and m.verdict(3) is None and m.verdict(5) is None and m.verdict(4) is not None


def test_candidates_are_rate_limited_per_process():
    """A sustained process is handed out for a memory scan once, then not again until rescan_s has passed."""
    clock = Clock()
    m = model(clock, rescan_s=600)
    feed(m, 21, [1.0] * 6)
    assert m.candidates() == [21]
    clock.t += 300
    assert m.candidates() == []
    clock.t += 301
    assert m.candidates() == [21]


def test_a_contended_miner_is_a_candidate_before_it_counts_as_sustained():
    """Flat use of 0.6 core is not sustained evidence but is enough for a memory scan."""
    m = model()
    feed(m, 31, [0.6] * 6)
    assert not m.verdict(31).sustained and m.candidates() == [31]


def test_candidates_respect_the_limit_and_put_requests_first():
    """Requested scans come first, then the busiest; at most ``limit`` per call."""
    m = model()
    feed(m, 22, [1.0] * 6)
    feed(m, 23, [2.0] * 6)
    see(m, ProcessCpuSample(24, 5, 1000, 0.0))
    m.request_scan(24, 5, 1000)
    assert m.candidates(limit=2) == [24, 23]
    assert m.candidates(limit=2) == [22]


def test_a_reused_pid_is_scanned_again():
    """The rate limit belongs to the process, so a new process on the same pid is a fresh candidate."""
    m = model()
    feed(m, 25, [1.0] * 6, start_ticks=1)
    assert m.candidates() == [25]
    feed(m, 25, [1.0] * 6, start=1100, start_ticks=2)
    assert m.candidates() == [25]


def test_a_process_using_all_of_its_quota_is_sustained_at_a_quarter_core():
    """0.25 cores flat under a 0.25-core quota is sustained (at its limit); the same without a limit is not,
    nor is a process using a third of its quota, nor one under a quota too small to judge."""
    m = model()
    feed(m, 40, [0.25, 0.24, 0.25, 0.25, 0.25, 0.24], cpu_limit=0.25)
    feed(m, 41, [0.25, 0.24, 0.25, 0.25, 0.25, 0.24])
    feed(m, 42, [0.1] * 6, cpu_limit=0.3)
    feed(m, 43, [0.02] * 6, cpu_limit=0.02)
    v = m.verdict(40)
    assert v.sustained and v.cpu_limit == 0.25
    assert not any(m.verdict(p).sustained for p in (41, 42, 43))
    feed(m, 44, [1.0] * 6, cpu_limit=1.5)  # busy in absolute terms: sustained (0.8 cores is enough)
    assert m.verdict(44).sustained


def test_a_bursty_process_at_its_quota_on_average_is_not_sustained():
    m = model()
    feed(m, 45, [0.5, 0.0, 0.5, 0.0, 0.5, 0.0], cpu_limit=0.5)
    assert not m.verdict(45).sustained


def test_a_randomx_sized_process_using_any_cpu_is_a_candidate_and_scanned_again_once_sustained():
    """A 258 MiB anonymous mapping at 0.05 cores makes a memory-scan candidate at once; when the same
    process turns sustained (at its quota) it is scanned once more, then rate-limited as before."""
    clock = Clock()
    m = model(clock, rescan_s=600)
    t = feed(m, 46, [0.25, 0.25], cpu_limit=0.25, hugetlb_kb=0, anon_big_mappings_mb=(258,))
    feed(m, 47, [0.05, 0.05], anon_big_mappings_mb=(258,), hugetlb_kb=0)
    feed(m, 48, [0.0, 0.0], anon_big_mappings_mb=(258,), hugetlb_kb=0)  # idle: not a candidate
    assert not m.verdict(46).sustained
    assert sorted(m.candidates(limit=5)) == [46, 47]
    assert m.candidates(limit=5) == []
    total = 50.0 + 2 * 1.25
    for _ in range(4):
        t += 5
        total += 1.25
        see(m, ProcessCpuSample(46, 111, t, total, (0.25,), 1, 0, (258,), cpu_limit=0.25))
    assert m.verdict(46).sustained
    assert m.candidates(limit=5) == [46]
    assert m.candidates(limit=5) == []


def test_quota_bound_verdict_makes_evidence_that_names_the_quota():
    m_verdict = model()
    feed(m_verdict, 49, [0.25] * 6, cpu_limit=0.25, hugetlb_kb=0, anon_big_mappings_mb=(258,))
    v = m_verdict.verdict(49)
    ev = det.process_evidence(v)
    details = " | ".join(e.detail for e in ev)
    assert "0.25-core CPU quota" in details and "RandomX light-mode cache" in details
    assert severity_of(ev)[0] is Severity.LOW  # still weak alone


def test_cgroup_at_its_quota_is_sustained():
    m = model()
    for i in range(7):
        m.observe_cgroup(CgroupCpuSample("c2", 1000 + 5 * i, 100 + 1.25 * i, 0.25))
    v = m.cgroup_verdict("c2")
    assert v.sustained and "0.25-core quota" in det.container_evidence(v)[0].detail


def test_cgroup_verdict_is_sustained_for_a_flat_busy_container():
    """A container cgroup at 1.9 cores for 30 s is sustained; a counter reset restarts its history."""
    m = model()
    for i in range(7):
        m.observe_cgroup(CgroupCpuSample("c1", 1000 + 5 * i, 100 + 9.5 * i))
    v = m.cgroup_verdict("c1")
    assert v.sustained and v.stats.mean_cpu == pytest.approx(1.9)
    m.observe_cgroup(CgroupCpuSample("c1", 1040, 1.0))
    assert m.cgroup_verdict("c1").stats.samples == 0 and m.cgroup_verdict("nope") is None


def test_hugepages_raised_is_attributed_to_the_process_that_began_using_them():
    """nr_hugepages raised is attributed to a process whose huge pages appeared around then, not to others."""
    m = model()
    assert m.observe_host(HostArtefacts(0, False, t=1000)) == ()
    assert m.observe_host(HostArtefacts(1280, False, t=1005)) == (HUGEPAGES_RAISED,)
    feed(m, 26, [1.0] * 6, hugetlb_kb=266240)
    feed(m, 27, [1.0] * 6, hugetlb_kb=0)
    assert HUGEPAGES_RAISED in m.verdict(26).artefacts
    assert m.verdict(27).artefacts == ()


def test_msr_loaded_is_attributed_only_to_a_busy_process_that_started_then():
    """The msr module appearing is attributed to a sustained process first seen around then, not to an old one."""
    m = model()
    feed(m, 28, [1.0] * 30, start=800)
    m.observe_host(HostArtefacts(0, False, t=1000))
    assert m.observe_host(HostArtefacts(0, True, "on", t=1005)) == (MSR_LOADED, "msr-writes-on")
    feed(m, 29, [1.0] * 6, start=1002)
    assert MSR_LOADED in m.verdict(29).artefacts
    assert m.verdict(28).artefacts == ()


def test_noted_artefacts_show_in_the_verdict_and_make_a_candidate():
    """An artefact noted by the daemon (a modprobe msr child) is in the verdict and makes the process a candidate."""
    m = model()
    see(m, ProcessCpuSample(30, 9, 1000, 0.0))
    m.note_artefact(30, 9, MSR_MODPROBE_CHILD, 1000)
    assert m.verdict(30).artefacts == (MSR_MODPROBE_CHILD,)
    assert m.candidates() == [30]


def test_msr_modprobe_command_lines_are_recognised():
    """XMRig's shell-wrapped modprobe and a direct modprobe msr are recognised; other modprobes are not."""
    assert is_msr_modprobe(("sh", "-c", "/sbin/modprobe msr allow_writes=on > /dev/null 2>&1"))
    assert is_msr_modprobe(("modprobe", "msr"))
    assert not is_msr_modprobe(("modprobe", "overlay"))
    assert not is_msr_modprobe(("cat", "msr"))


# --------------------------------------------------------------------------- detector


def verdict(rates=(1.0,) * 6, threads=(), **kw):
    m = model()
    feed(m, 40, list(rates), threads=threads, **kw)
    return m.verdict(40)


def strong(weight: int) -> Evidence:
    return Evidence("config", "miner config names a pool", weight)


def test_cpu_alone_is_weak_and_stays_low():
    """Sustained CPU gives weak behaviour evidence: alone it is never above low."""
    ev = det.detect(ProcessSnapshot(pid=1, behaviour=verdict(threads=(0.99, 0.99))), Context(SIGS))
    assert ev and all(e.signal == "behaviour" and not e.strong for e in ev)
    assert severity_of(ev)[0] is Severity.LOW


def test_all_randomx_artefacts_together_still_stay_low():
    """Even every RandomX artefact at once is behaviour only, so it stays low."""
    v = verdict(hugetlb_kb=2396160, msr_open=True)
    ev = det.process_evidence(v)
    assert sum(e.weight for e in ev) == det.MAX_TOTAL
    assert severity_of(ev)[0] is Severity.LOW


def test_behaviour_raises_a_finding_with_another_signal():
    """Beside a moderate strong signal, behaviour lifts the finding by at least one level."""
    alone = severity_of([strong(35)])[0]
    ev = det.process_evidence(verdict(hugetlb_kb=266240))
    assert severity_of([strong(35), *ev])[0] > alone
    assert "RandomX light-mode cache" in " ".join(e.detail for e in ev)


def test_idle_process_without_artefacts_gives_no_evidence():
    """A quiet process with no artefacts gives nothing."""
    assert verdict(rates=(0.0,) * 6) is None, "a sleeping process has no entry: nothing to give evidence from"
    assert det.process_evidence(verdict(rates=(0.001,) * 6)) == []


def test_randomx_sized_anonymous_mapping_counts_on_a_busy_process_only():
    """A 260 MiB anonymous mapping counts on a busy process, not on an idle one."""
    assert any("anonymous mapping" in e.detail for e in det.process_evidence(verdict(anon_big_mappings_mb=(260,))))
    assert det.process_evidence(verdict(rates=(0.0,) * 6, anon_big_mappings_mb=(260,))) == []
    assert det.process_evidence(verdict(rates=(0.001,) * 6, anon_big_mappings_mb=(260,))) == []


def test_detect_reads_the_verdict_a_snapshot_carries():
    """A process or container snapshot carrying a behaviour verdict is evaluated; one without gives nothing."""
    assert det.detect(ProcessSnapshot(pid=1, behaviour=verdict()), Context(SIGS))
    assert det.detect(ProcessSnapshot(pid=1), Context(SIGS)) == []
    sustained = CgroupVerdict("c", CpuStats(6, 30, 1.9, 0.02), True)
    assert det.detect(ContainerInfo(id="c", behaviour=sustained), Context(SIGS))[0].strong is False
    assert det.detect(ContainerInfo(id="c"), Context(SIGS)) == []


def test_behaviour_is_a_registered_detector_for_processes_and_containers():
    """Behaviour evidence is made behind the engine's crash barrier like every other kind."""
    from agent import detectors

    assert det in detectors.PROCESS_DETECTORS and det in detectors.CONTAINER_DETECTORS


def test_container_evidence_only_when_sustained():
    """A container's cgroup verdict gives weak evidence only when sustained."""

    assert det.container_evidence(CgroupVerdict("c", CpuStats(6, 30, 1.9, 0.02), True))[0].strong is False
    assert det.container_evidence(CgroupVerdict("c", CpuStats(6, 30, 1.9, 0.9), False)) == []


# ------------------------------------------------- end to end: sampler -> model -> memory YARA


def fast_model() -> BehaviourModel:
    """Short window and generous thresholds: the test host has 2 shared cores and may be loaded."""
    return BehaviourModel(window_s=15, min_samples=4, min_span_s=5, busy_core=0.3, scan_core=0.2, max_cv=0.5)


def until_candidate(sampler, m: BehaviourModel, pid: int, timeout: float = 60, cgroup: dict | None = None) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in sampler.sample([pid]):
            m.observe(s)
        for s in sampler.sample_cgroups(cgroup or {}):
            m.observe_cgroup(s)
        if pid in m.candidates() and (not cgroup or all(m.cgroup_verdict(c).sustained for c in cgroup)):
            return
        time.sleep(1.0)
    raise AssertionError(f"pid {pid} never became a memory-scan candidate: {m.verdict(pid)}")


@pytest.fixture(scope="module")
def bundle():
    from agent.signatures import load_bundle

    return load_bundle()


def snapshot_of(pid: int, yara_hits=(), container_id: str = "") -> ProcessSnapshot:
    from agent.model import Connection
    from tests.helpers import procs

    conns = tuple(Connection(c.local_ip, c.local_port, c.remote_ip, c.remote_port, c.state, c.inode)
                  for c in procs.tcp_connections(pid))
    return ProcessSnapshot(pid=pid, name=procs.comm(pid), exe=procs.exe(pid), cmdline=tuple(procs.cmdline(pid)),
                           connections=conns, yara=tuple(yara_hits), container_id=container_id)


def all_evidence(proc: ProcessSnapshot, ctx: Context, verdict) -> list[Evidence]:
    import dataclasses

    from agent import detectors

    proc = dataclasses.replace(proc, behaviour=verdict)
    return [e for d in detectors.PROCESS_DETECTORS for e in d.detect(proc, ctx)]


def test_obfuscated_miner_is_caught_by_memory_behaviour_and_network(spawn, helper_bins, fake_pool, bundle):
    """fakeminer-plain shows nothing on disk, but once busy it is a candidate whose memory matches MW_XMRig_Memory."""
    from agent.collectors.cpu_sampler import CpuSampler
    from agent.collectors.yarascan import YaraScanner

    p = spawn([helper_bins.fakeminer_plain, "-o", fake_pool.hostport, "-t", "2", "--seconds", "120"],
              stderr=open("/dev/null", "wb"))
    fake_pool.wait_for_login(timeout=15)
    m = fast_model()
    until_candidate(CpuSampler(), m, p.pid)
    scanner = YaraScanner(bundle.yara)
    assert scanner.scan_file(str(helper_bins.fakeminer_plain)) == ()
    hits = scanner.scan_memory(p.pid)
    assert "MW_XMRig_Memory" in {h.rule for h in hits}
    evidence = all_evidence(snapshot_of(p.pid, hits), Context(bundle), m.verdict(p.pid))
    assert {"yara", "network", "behaviour"} <= {e.signal for e in evidence}
    assert severity_of(evidence)[0] is Severity.CRITICAL


def test_benign_cpu_heavy_container_stays_below_medium(docker_run, base_image, bundle):
    """A burner container, busy and flat in its process and its cgroup, is memory-scanned and stays at low."""
    from agent.collectors import cgroups
    from agent.collectors.cpu_sampler import CpuSampler
    from agent.collectors.yarascan import YaraScanner
    from tests.helpers import procs

    c = docker_run(base_image, ["burner", "-t", "2", "--seconds", "150"])
    pid = procs.wait_until(lambda: procs.pids_in_cgroup_of(c.id), timeout=30, message="container pid")[0]
    cid, _runtime, path = cgroups.parse_cgroup(procs.cgroup(pid))
    m = fast_model()
    until_candidate(CpuSampler(), m, pid, cgroup={cid: path})
    hits = YaraScanner(bundle.yara).scan_memory(pid)
    assert hits == ()
    ctx = Context(bundle, container=ContainerInfo(id=cid, image=base_image))
    process = all_evidence(snapshot_of(pid, hits, cid), ctx, m.verdict(pid))
    container = det.detect(ContainerInfo(id=cid, image=base_image, behaviour=m.cgroup_verdict(cid)), ctx)
    assert process and container
    assert severity_of(process)[0] <= Severity.LOW and severity_of(container)[0] <= Severity.LOW


def test_a_flood_of_idle_processes_never_pushes_out_a_busy_one():
    """Sleeping processes take no entry; a flood of barely moving ones (4x the table) evicts idle entries:
    a busy process keeps its history and becomes sustained (before, the least recently seen went, in PID
    order, whatever it was)."""
    clock = Clock()
    for flood_cpu in (0.0, 0.001):  # cores each
        m = BehaviourModel(window_s=60, min_samples=4, min_span_s=20, max_pids=100, clock=clock)
        busy_pid, cpu = 50, 0.0
        for n in range(8):
            t = 1000.0 + 10 * n
            cpu += 10.0  # one core
            for pid in range(1, 400):
                total = cpu if pid == busy_pid else 1.0 + flood_cpu * 10 * n
                see(m, ProcessCpuSample(pid=pid, start_ticks=pid, t=t, cpu_seconds_total=total))
        v = m.verdict(busy_pid)
        assert v is not None and v.sustained and len(m) <= 100
        assert (m.evicted, len(m)) == (0, 1) if flood_cpu == 0 else m.evicted > 0
