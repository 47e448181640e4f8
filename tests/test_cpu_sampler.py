"""CpuSampler: parsing on fake /proc and /sys trees, and real processes and containers on this host."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.collectors import cgroups
from agent.collectors.cpu_sampler import (
    CLK_TCK, CpuSampler, parse_big_anon_mappings, parse_cpu_cgroup, parse_quota, parse_status,
)
from agent.collectors.procread import parse_stat, stat_counters
from agent.daemon.behaviour import BehaviourModel

from tests.helpers import procs


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def stat_line(pid: int, ticks: int, threads: int = 1, start: int = 4242, comm: str = "miner") -> str:
    # fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    #              cutime cstime priority nice num_threads itrealvalue starttime ...
    rest = ["R", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(ticks - ticks // 4), str(ticks // 4),
            "0", "0", "20", "0", str(threads), "0", str(start), "1000", "100"]
    return f"{pid} ({comm}) {' '.join(rest)}\n"


def fake_process(root: Path, pid: int, ticks: int, thread_ticks: dict[int, int], *, start: int = 4242,
                 hugetlb_kb: int | None = 266240, maps: str = "", msr: bool = False, rss_kb: int = 14000,
                 cgroup: str | None = None) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(stat_line(pid, ticks, len(thread_ticks), start))
    for tid, n in thread_ticks.items():
        (d / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        (d / "task" / str(tid) / "stat").write_text(stat_line(tid, n, len(thread_ticks), start))
    status = f"Name:\tminer\nVmRSS:\t{rss_kb:>8} kB\nThreads:\t{len(thread_ticks)}\n"
    if cgroup is not None:
        (d / "cgroup").write_text(cgroup)
    if hugetlb_kb is not None:
        status += f"HugetlbPages:\t{hugetlb_kb:>8} kB\n"
    (d / "status").write_text(status)
    (d / "maps").write_text(maps)
    if msr and not (d / "fd" / "5").is_symlink():
        os.symlink("/dev/cpu/0/msr", d / "fd" / "5")
    if not (d / "fd" / "0").is_symlink():
        os.symlink("/dev/null", d / "fd" / "0")


MAPS = (
    "00400000-00500000 r-xp 00000000 08:01 123 /usr/local/bin/miner\n"
    "7f0000000000-7f0010400000 rw-p 00000000 00:00 0 \n"  # 260 MiB anonymous
    "7f1000000000-7f1090000000 rw-p 00000000 00:0f 99 /anon_hugepage (deleted)\n"  # 2304 MiB hugetlb
    "7f2000000000-7f2020000000 rw-s 00000000 08:01 77 /var/lib/db/data.bin\n"  # 512 MiB file-backed
    "7f3000000000-7f3010000000 ---p 00000000 00:00 0 \n"  # 256 MiB reserved, not writable
    "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
)


# ------------------------------------------------------------------------ parsing


def test_parse_stat_survives_parentheses_and_spaces_in_comm():
    """utime+stime, threads and start time are read after the last ')' of the comm."""
    st = parse_stat(stat_line(7, 400, 3, 999, comm="a) (b c").encode())
    assert (st.comm, st.cpu_ticks, st.num_threads, st.start_ticks) == ("a) (b c", 400, 3, 999)


def test_big_anonymous_mappings_skip_files_stacks_and_reservations():
    """Writable anonymous and hugetlb mappings count; file-backed, stack and PROT_NONE ones do not."""
    assert parse_big_anon_mappings(MAPS.encode()) == (2304, 260)


def test_first_sample_is_cheap_and_a_busy_one_is_detailed(tmp_path):
    """A first sample reads only stat; once busy, threads, huge pages, mappings and msr fds are read."""
    clock = Clock()
    fake_process(tmp_path, 50, 1000, {50: 10, 51: 500, 52: 490}, maps=MAPS, msr=True)
    s = CpuSampler(tmp_path, tmp_path / "sys", clock=clock)
    first, = s.sample([50])
    assert first.hugetlb_kb is None and first.per_thread_busy == () and first.cpu_seconds_total == 1000 / CLK_TCK
    clock.t += 5
    fake_process(tmp_path, 50, 1000 + 10 * CLK_TCK, {50: 10, 51: 500 + 5 * CLK_TCK, 52: 490 + 5 * CLK_TCK},
                 maps=MAPS, msr=True)
    second, = s.sample([50])
    assert second.hugetlb_kb == 266240 and second.anon_big_mappings_mb == (2304, 260) and second.msr_open
    assert second.per_thread_busy == () and second.threads == 3  # no detailed baseline yet
    clock.t += 5
    fake_process(tmp_path, 50, 1000 + 20 * CLK_TCK, {50: 10, 51: 500 + 10 * CLK_TCK, 52: 490 + 10 * CLK_TCK},
                 maps=MAPS, msr=True)
    third, = s.sample([50])
    assert third.per_thread_busy == (0.0, 1.0, 1.0)


def test_idle_process_stays_cheap_unless_asked_for_detail(tmp_path):
    """An idle process is never read in detail, unless the caller names it in ``detail``."""
    clock = Clock()
    fake_process(tmp_path, 60, 100, {60: 100}, hugetlb_kb=0)
    s = CpuSampler(tmp_path, tmp_path / "sys", clock=clock)
    s.sample([60])
    clock.t += 5
    idle, = s.sample([60])
    assert idle.hugetlb_kb is None
    forced, = s.sample([60], detail={60})
    assert forced.hugetlb_kb == 0 and not forced.msr_open


def test_missing_hugetlb_line_leaves_the_field_empty(tmp_path):
    """A kernel without HugetlbPages in status gives None (unknown), not 0."""
    fake_process(tmp_path, 61, 100, {61: 100}, hugetlb_kb=None)
    sample, = CpuSampler(tmp_path, tmp_path / "sys").sample([61], detail={61})
    assert sample.hugetlb_kb is None


def test_vanished_pids_are_skipped_and_counted(tmp_path):
    """A pid with no /proc entry is skipped quietly and counted."""
    fake_process(tmp_path, 70, 100, {70: 100})
    s = CpuSampler(tmp_path, tmp_path / "sys")
    assert [x.pid for x in s.sample([70, 71, 72])] == [70]
    assert s.vanished == 2


def test_stat_counters_agree_with_parse_stat():
    """The sampler's cheap parse reads the same CPU ticks, threads and start time as parse_stat, comm or not."""
    for comm in ("miner", "a) (b c", ") 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"):
        raw = stat_line(7, 4001, 9, 123456, comm=comm).encode()
        st = parse_stat(raw)
        assert stat_counters(raw) == (st.cpu_ticks, st.num_threads, st.start_ticks) == (4001, 9, 123456)
    for bad in (b"", b"7 miner R 1", b"7 (miner) R 1 1"):
        try:
            stat_counters(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")


def test_a_pass_reports_only_what_moved_or_is_kept_and_names_the_new(tmp_path):
    """``sample_pass`` with ``report``: a sleeping process is read but not reported unless it is in
    ``report``; one that moved is, with its previous reading; ``new`` holds the first seen, the reused
    and the unreadable pids; ``threads`` counts every process read."""
    clock = Clock()
    fake_process(tmp_path, 40, 100, {40: 100, 41: 0})
    fake_process(tmp_path, 42, 200, {42: 200})
    fake_process(tmp_path, 43, 300, {43: 300}, start=1)
    s = CpuSampler(tmp_path, tmp_path / "sys", clock=clock)
    first = s.sample_pass([40, 42, 43, 44], report=())
    assert first.samples == [] and first.new == {40, 42, 43, 44} and first.threads == 4
    clock.t += 5
    fake_process(tmp_path, 40, 100 + 5 * CLK_TCK, {40: 100 + 5 * CLK_TCK, 41: 0})  # one core
    fake_process(tmp_path, 43, 300, {43: 300}, start=2)  # PID 43 reused
    second = s.sample_pass([40, 42, 43, 44], report={42})
    by_pid = {x.pid: x for x in second.samples}
    assert set(by_pid) == {40, 42} and second.new == {43, 44}
    assert by_pid[40].since == (100.0, 100 / CLK_TCK) and by_pid[40].hugetlb_kb == 266240
    assert by_pid[42].since == (100.0, 200 / CLK_TCK) and by_pid[42].hugetlb_kb is None
    clock.t += 5
    third = s.sample_pass([40, 42, 43], report=())
    assert third.new == set() and [x.pid for x in third.samples] == []  # 40 stopped moving: not reported


def test_a_process_that_goes_idle_keeps_its_readings_in_the_model(tmp_path):
    """Sampler and model together as the worker drives them: once a process has an entry its idle
    readings still reach the model, so a miner that stops is not judged on its busy minutes forever."""
    clock = Clock()
    m = BehaviourModel(window_s=60, min_samples=2, min_span_s=5, busy_core=0.5, clock=clock)
    s = CpuSampler(tmp_path, tmp_path / "sys", clock=clock)
    ticks = 100
    for n in range(8):
        busy = n < 4
        fake_process(tmp_path, 45, ticks, {45: ticks})
        for sample in s.sample_pass([45], report=m.tracked()).samples:
            m.observe(sample)
        if n == 3:
            v = m.verdict(45)
            assert v is not None and v.stats.samples == 3 and v.mean_cpu > 0.9  # seeded by the idle first reading
        clock.t += 5
        ticks += 5 * CLK_TCK if busy else 0
    v = m.verdict(45)
    assert v is not None and v.stats.samples == 7 and m._procs[45].series.last_rate() == 0.0 and not v.sustained


def test_pid_reuse_drops_the_previous_reading(tmp_path):
    """A new start time on the same pid is not compared with the old process's CPU time."""
    clock = Clock()
    fake_process(tmp_path, 80, 100, {80: 100}, start=1)
    s = CpuSampler(tmp_path, tmp_path / "sys", clock=clock)
    s.sample([80])
    clock.t += 1
    fake_process(tmp_path, 80, 100_000, {80: 100_000}, start=2)
    again, = s.sample([80])
    assert again.start_ticks == 2 and again.hugetlb_kb is None  # not mistaken for a busy process


def test_cgroup_v1_cpuacct_layouts_are_read(tmp_path):
    """cgroup v1 usage is read from cpuacct/ or cpu,cpuacct/ (ns -> seconds)."""
    a = tmp_path / "fs/cgroup/cpuacct/docker/aaa"
    b = tmp_path / "fs/cgroup/cpu,cpuacct/system.slice/docker-bbb.scope"
    for d, ns in ((a, 2_500_000_000), (b, 7_000_000_000)):
        d.mkdir(parents=True)
        (d / "cpuacct.usage").write_text(f"{ns}\n")
    s = CpuSampler(tmp_path / "proc", tmp_path)
    got = {x.container_id: x.usage_seconds for x in s.sample_cgroups(
        {"aaa": "/docker/aaa", "bbb": "/system.slice/docker-bbb.scope", "ccc": "/docker/ccc"})}
    assert got == {"aaa": 2.5, "bbb": 7.0} and s.cgroup_missing == 1


def test_cgroup_v2_cpu_stat_is_read(tmp_path):
    """cgroup v2 usage is usage_usec of cpu.stat under the unified root."""
    (tmp_path / "fs/cgroup").mkdir(parents=True)
    (tmp_path / "fs/cgroup/cgroup.controllers").write_text("cpu memory pids\n")
    d = tmp_path / "fs/cgroup/system.slice/docker-ccc.scope"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text("usage_usec 3250000\nuser_usec 3000000\nsystem_usec 250000\n")
    got = CpuSampler(tmp_path / "proc", tmp_path).sample_cgroups({"ccc": "/system.slice/docker-ccc.scope"})
    assert [(x.container_id, x.usage_seconds) for x in got] == [("ccc", 3.25)]


def test_cgroup_paths_cannot_climb_out(tmp_path):
    """A path with '..' is refused, not followed."""
    s = CpuSampler(tmp_path / "proc", tmp_path)
    assert s.sample_cgroups({"x": "/docker/../../etc"}) == [] and s.cgroup_missing == 1


def test_host_artefacts_from_a_fake_sys(tmp_path):
    """Reserved huge pages (all sizes) and the msr module with allow_writes are read."""
    mm = tmp_path / "kernel/mm/hugepages"
    for size, n in (("2048", 1280), ("1048576", 1)):
        (mm / f"hugepages-{size}kB").mkdir(parents=True)
        (mm / f"hugepages-{size}kB/nr_hugepages").write_text(f"{n}\n")
    (tmp_path / "module/msr/parameters").mkdir(parents=True)
    (tmp_path / "module/msr/parameters/allow_writes").write_text("on\n")
    h = CpuSampler(tmp_path / "proc", tmp_path).host_artefacts()
    assert (h.nr_hugepages_total, h.hugepages_kb_total, h.msr_loaded, h.msr_allow_writes) == (
        1281, 1280 * 2048 + 1048576, True, "on")


def test_host_artefacts_fall_back_to_numa_nodes_and_no_msr(tmp_path):
    """Without the global directory, per-node huge pages are summed; no msr module reads as not loaded."""
    for node, n in (("node0", 600), ("node1", 568)):
        d = tmp_path / f"devices/system/node/{node}/hugepages/hugepages-2048kB"
        d.mkdir(parents=True)
        (d / "nr_hugepages").write_text(f"{n}\n")
    h = CpuSampler(tmp_path / "proc", tmp_path).host_artefacts()
    assert (h.nr_hugepages_total, h.msr_loaded, h.msr_allow_writes) == (1168, False, "")


# -------------------------------------------------------------------- real processes


def sample_for(sampler: CpuSampler, pid: int, seconds: float, **kw) -> list:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.extend(sampler.sample([pid], **kw))
        time.sleep(1.0)
    return out


def test_real_burner_shows_busy_threads(spawn, helper_bins):
    """burner -t 2 keeps the CPU busy and its hashing threads show as busy (thresholds generous: 2 shared, loaded cores)."""
    p = spawn([helper_bins.burner, "-t", "2", "--seconds", "60"])
    samples = sample_for(CpuSampler(detail_core=0.2), p.pid, 6)
    assert (samples[-1].cpu_seconds_total - samples[1].cpu_seconds_total) / (samples[-1].t - samples[1].t) > 0.25
    detailed = [s for s in samples if s.per_thread_busy]
    assert detailed and max(sum(1 for b in s.per_thread_busy if b > 0.1) for s in detailed) >= 1
    assert detailed[-1].threads == 3 and detailed[-1].hugetlb_kb == 0


def test_real_sleep_is_idle(spawn):
    """An idle sleep uses about no CPU and is never read in detail."""
    p = spawn(["sleep", "60"])
    samples = sample_for(CpuSampler(), p.pid, 3)
    assert samples[-1].cpu_seconds_total - samples[0].cpu_seconds_total < 0.05
    assert all(s.hugetlb_kb is None for s in samples)


def test_real_randomx_sized_allocation_is_seen(spawn, helper_bins):
    """A process that allocates 260 MiB of anonymous memory shows a ~260 MiB big mapping."""
    p = spawn([helper_bins.fakeminer, "-t", "0", "--alloc-mb", "260", "--seconds", "60", "-o", "127.0.0.1:9"],
              stderr=open(os.devnull, "wb"))
    sampler = CpuSampler()

    def seen():
        s = sampler.sample([p.pid], detail={p.pid})
        return s and any(255 <= mb <= 270 for mb in s[0].anon_big_mappings_mb)

    procs.wait_until(seen, timeout=20, interval=0.5, message="260 MiB mapping")


def test_status_cgroup_and_quota_parsing():
    assert parse_status(b"Name:\tx\nVmRSS:\t  268276 kB\nThreads:\t3\nHugetlbPages:\t  0 kB\n") == (0, 268276, 3)
    assert parse_status(b"Name:\tx\n") == (None, None, None)
    hybrid = b"4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n0::/\n"
    assert parse_cpu_cgroup(hybrid) == ("v1", "/docker/abc")
    assert parse_cpu_cgroup(b"3:cpu,cpuacct:/x\n") == ("v1", "/x")
    assert parse_cpu_cgroup(b"0::/system.slice/docker-abc.scope\n") == ("v2", "/system.slice/docker-abc.scope")
    assert parse_quota("v1", b"25000\n", b"100000\n") == 0.25 and parse_quota("v1", b"-1\n", b"100000\n") is None
    assert parse_quota("v2", b"50000 100000\n") == 0.5 and parse_quota("v2", b"max 100000\n") is None


def _quota_v1(sys_root, path: str, quota: int, period: int = 100_000) -> None:
    d = sys_root / "fs/cgroup/cpu" / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (d / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_a_moving_process_gets_status_and_its_limit_read_and_a_busy_one_at_its_quota_the_full_read(tmp_path):
    """Below detail_core but moving: HugetlbPages, VmRSS, Threads and the cgroup's quota (the tightest of
    it and its ancestors); maps only with a RandomX-sized RSS; threads and fds once near its quota."""
    clock, proc, sys_root = Clock(), tmp_path / "proc", tmp_path / "sys"
    cg = "1:cpu:/docker/abc\n0::/\n"
    _quota_v1(sys_root, "/docker", 150_000)
    _quota_v1(sys_root, "/docker/abc", 40_000)  # 0.4 cores
    fake_process(proc, 90, 100, {90: 100}, hugetlb_kb=0, maps=MAPS, cgroup=cg)
    s = CpuSampler(proc, sys_root, clock=clock)
    s.sample([90])
    clock.t += 10
    fake_process(proc, 90, 100 + CLK_TCK, {90: 100 + CLK_TCK}, hugetlb_kb=0, maps=MAPS, cgroup=cg)  # 0.1 cores
    light, = s.sample([90])
    assert (light.hugetlb_kb, light.threads, light.cpu_limit) == (0, 1, 0.4)
    assert light.anon_big_mappings_mb == () and light.per_thread_busy == ()  # small RSS: maps not read
    clock.t += 10
    fake_process(proc, 90, 100 + 5 * CLK_TCK, {90: 100 + 5 * CLK_TCK}, hugetlb_kb=0, maps=MAPS, cgroup=cg,
                 rss_kb=268_276)  # 0.4 cores: all of its quota
    busy, = s.sample([90])
    assert busy.anon_big_mappings_mb == (2304, 260) and busy.cpu_limit == 0.4
    clock.t += 10
    fake_process(proc, 90, 100 + 9 * CLK_TCK, {90: 100 + 9 * CLK_TCK}, hugetlb_kb=0, maps=MAPS, cgroup=cg)
    again, = s.sample([90])
    assert again.per_thread_busy == (0.4,)  # the full read: thread deltas since the previous full one
    clock.t += 10
    still, = s.sample([90])  # did not move: the cheap path
    assert still.cpu_limit is None and still.hugetlb_kb is None


def test_cgroup_samples_carry_the_quota(tmp_path):
    d = tmp_path / "fs/cgroup/cpuacct/docker/aaa"
    d.mkdir(parents=True)
    (d / "cpuacct.usage").write_text("2500000000\n")
    _quota_v1(tmp_path, "/docker/aaa", 25_000)
    (tmp_path / "fs/cgroup/cpuacct/docker/bbb").mkdir(parents=True)
    (tmp_path / "fs/cgroup/cpuacct/docker/bbb/cpuacct.usage").write_text("1\n")
    got = CpuSampler(tmp_path / "proc", tmp_path).sample_cgroups({"aaa": "/docker/aaa", "bbb": "/docker/bbb"})
    assert [(x.container_id, x.cpu_limit) for x in got] == [("aaa", 0.25), ("bbb", None)]


def test_real_container_quota_is_the_limit_of_it_and_its_processes(docker_run, base_image):
    """This host's layout: a container run with 0.25 CPUs has cpu_limit 0.25, and so has its process."""
    c = docker_run(base_image, ["sleep", "120"], nano_cpus=250_000_000)
    pid = procs.wait_until(lambda: procs.pids_in_cgroup_of(c.id), timeout=30, message="container pid")[0]
    cid, _runtime, path = cgroups.parse_cgroup(procs.cgroup(pid))
    sampler = CpuSampler()
    sample, = sampler.sample([pid], detail={pid})
    assert sample.cpu_limit == 0.25
    cg, = sampler.sample_cgroups({cid: path})
    assert cg.cpu_limit == 0.25
    own, = sampler.sample([os.getpid()], detail={os.getpid()})
    assert own.cpu_limit is None or own.cpu_limit < os.cpu_count()


def test_real_container_cgroup_usage_grows(docker_run, base_image):
    """A burner container's cgroup CPU counter (this host's layout) grows by what its process used meanwhile
    (its own utime + stime: the comparison holds however loaded the host is)."""
    c = docker_run(base_image, ["burner", "-t", "2", "--seconds", "120"])
    pid = procs.wait_until(lambda: procs.pids_in_cgroup_of(c.id), timeout=30, message="container pid")[0]
    cid, _runtime, path = cgroups.parse_cgroup(procs.cgroup(pid))
    assert cid == c.id
    sampler = CpuSampler()

    def process_seconds() -> float:
        return parse_stat(Path(f"/proc/{pid}/stat").read_bytes()).cpu_ticks / CLK_TCK

    first, p0 = sampler.sample_cgroups({cid: path})[0], process_seconds()
    procs.wait_until(lambda: process_seconds() - p0 >= 0.5, timeout=60, message="the burner used 0.5 s of CPU")
    p1, (second,) = process_seconds(), sampler.sample_cgroups({cid: path})
    assert second.usage_seconds - first.usage_seconds >= 0.9 * (p1 - p0) >= 0.45


def test_sampling_many_idle_processes_takes_the_cheap_path(spawn):
    """A few hundred idle processes cost one stat read each: on the second pass none of them carries what
    only the detailed read fills (status, cgroup limit). The cost in CPU is bench/fingerprint.py's."""
    sleepers = {spawn(["sleep", "120"]).pid for _ in range(200)}
    sampler = CpuSampler()
    sampler.sample(sorted(sleepers))
    samples = [x for x in sampler.sample(sorted(sleepers)) if x.pid in sleepers]
    assert len(samples) == 200
    assert all(x.hugetlb_kb is None and x.cpu_limit is None and x.per_thread_busy == () for x in samples)


def test_a_shared_ancestor_quota_is_read_once_per_limit_epoch(tmp_path):
    """Containers under one parent cgroup: each limit is the tightest of it and the parent, the parent's
    quota read once per LIMIT_PASSES passes (not once per container), and a change seen after that."""
    from agent.collectors.cpu_sampler import LIMIT_PASSES

    sys_root = tmp_path / "sys"
    _quota_v1(sys_root, "/docker", 150_000)  # 1.5 cores for all of docker
    _quota_v1(sys_root, "/docker/a", 40_000)
    _quota_v1(sys_root, "/docker/b", -1)
    s = CpuSampler(tmp_path / "proc", sys_root)
    assert s.cgroup_limit("v1", "/docker/a") == 0.4
    _quota_v1(sys_root, "/docker", 100_000)  # docker update of the parent: counts from the next epoch
    assert s.cgroup_limit("v1", "/docker/b") == (1.5 if os.cpu_count() > 1.5 else None)
    for _ in range(LIMIT_PASSES):
        s.sample_pass([])
    assert s.cgroup_limit("v1", "/docker/b") == (1.0 if os.cpu_count() > 1 else None)
    assert s.cgroup_limit("v1", "/docker/a") == 0.4
