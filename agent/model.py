"""Plain data shared by collectors, detectors, the engine and the sinks.

Collectors produce frozen snapshots; detectors read them and return evidence;
the engine turns evidence into findings. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(enum.IntEnum):
    """Finding severity; the int value is the ECS ``event.severity`` number."""

    NONE = 0
    LOW = 21
    MEDIUM = 47
    HIGH = 73
    CRITICAL = 99

    @property
    def word(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, word: str) -> "Severity":
        """Turn ``low|medium|high|critical`` into a Severity; ValueError otherwise."""
        try:
            sev = cls[word.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {word!r} (low, medium, high, critical)") from None
        if sev is cls.NONE:
            raise ValueError("severity 'none' is not a level")
        return sev


@dataclass(frozen=True, slots=True)
class Hashes:
    """Digests of one file, all computed from the same read."""

    sha256: str
    sha1: str
    md5: str
    size: int


@dataclass(frozen=True, slots=True)
class Connection:
    """One TCP socket of a process, as read in the process's own network namespace."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: str  # "ESTABLISHED", "SYN_SENT", ...
    inode: int = 0


@dataclass(frozen=True, slots=True)
class MinerConfig:
    """A miner configuration file found for a process (xmrig-style ``config.json``)."""

    path: str
    pools: tuple[str, ...] = ()  # pool URLs found in it
    users: tuple[str, ...] = ()  # wallet / user strings found in it
    keys: tuple[str, ...] = ()  # miner-specific top-level keys seen (randomx, cpu, donate-level...)
    # Where it was found: "explicit" (named by -c/--config...), "exe-dir" (beside the executable or the
    # program), "cwd" (the working directory), "home" ($HOME/.xmrig.json, $HOME/.config/xmrig.json); "": unknown.
    origin: str = ""
    # False: nothing in it but bare host:port pools with user/pass (what a database connection pool has too):
    # no stratum URL, no mining key, no wallet-length login, no miner key at its top level.
    shaped: bool = True


@dataclass(frozen=True, slots=True)
class YaraHit:
    """One YARA rule that matched a file or a process's memory."""

    rule: str
    namespace: str = ""
    source: str = "file"  # "file" or "memory"
    category: str = "miner"  # from the rule's meta: "miner", "packer", ...
    weight: int = 0  # from the rule's meta
    description: str = ""
    # Memory hits: the kind of region most of its matched strings lie in (memread.KINDS: "code" for the
    # image of a file executed in the process, "anon-exec", "heap", "stack", "data"); "" for files.
    region: str = ""


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """Everything the detectors may know about one process at one moment.

    Fields that could not be read stay empty and their names go to ``partial``;
    a missing field never means "clean".
    """

    pid: int
    ppid: int = 0
    name: str = ""  # comm
    exe: str = ""  # readlink of /proc/PID/exe, " (deleted)" stripped
    exe_deleted: bool = False
    cmdline: tuple[str, ...] = ()
    cwd: str = ""
    uid: int | None = None
    user: str = ""
    start_ticks: int = 0  # field 22 of /proc/PID/stat: identity guard against PID reuse
    num_threads: int = 0
    is_kernel_thread: bool = False
    environ: tuple[tuple[str, str], ...] = ()  # only miner-relevant variables
    hashes: Hashes | None = None
    container_id: str = ""  # 64-hex id from the cgroup path, "" on the host
    container_runtime: str = ""  # docker, containerd, cri-o, podman
    cgroup_path: str = ""
    # A container id the cgroup path names although no runtime made that cgroup (a hand-made
    # ``docker-<id>.scope`` in a user slice): never the container, kept for the detectors.
    cgroup_claim: str = ""
    # In the agent's own container only: did the process come in from outside it (``docker exec``,
    # nsenter: its parent, or an ancestor that came in so, is not in that container)? None: not asked.
    entered_from_outside: bool | None = None
    net_ns: int = 0  # inode of /proc/PID/ns/net
    connections: tuple[Connection, ...] = ()
    miner_config: MinerConfig | None = None
    # When ``exe`` is the dynamic loader (``ld-linux-x86-64.so.2 PROGRAM ...``): the program it runs, as
    # its mapping's path reads in /proc/PID/maps, that file's hashes, and its first mapping ("lo-hi", the
    # name in /proc/PID/map_files). Hash, YARA, name and config checks apply to it as to ``exe``.
    program: str = ""
    program_hashes: Hashes | None = None
    program_mapping: str = ""
    partial: tuple[str, ...] = ()  # names of fields that could not be read
    yara: tuple[YaraHit, ...] = ()  # filled in by the YARA scanner after collection
    behaviour: BehaviourVerdict | None = None  # filled in by the daemon from its behaviour model
    ld_preload: str = ""  # LD_PRELOAD of its environment (capped; apart from ``environ``: miner variables only)
    # From the cross-view (collectors/crossview.py): the /proc listings it is missing from ("readdir", "getdents").
    hidden_from: tuple[str, ...] = ()
    proc_mounted: bool = False  # something is mounted on /proc/PID (the cross-view)

    @property
    def command_line(self) -> str:
        return " ".join(self.cmdline)

    @property
    def exe_name(self) -> str:
        return self.exe.rsplit("/", 1)[-1] if self.exe else ""

    @property
    def program_name(self) -> str:
        """Base name of the program a loader runs ("" when there is none)."""
        return self.program.rsplit("/", 1)[-1] if self.program else ""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as the runtime describes it."""

    id: str
    name: str = ""
    image: str = ""  # image reference as the container was created with (e.g. "thanhtudo/openjdk:latest")
    image_id: str = ""
    runtime: str = "docker"
    labels: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "KEY=VALUE" strings from the container config
    pid: int = 0  # host PID of the init process
    upper_dir: str = ""  # writable layer on the host, when known
    paused: bool = False
    # Labels of the container's image (``docker image inspect``); None: unknown. Docker copies
    # image labels into the container's, so only a label the image lacks was set by the operator.
    image_labels: tuple[tuple[str, str], ...] | None = None
    launchers: tuple[str, ...] = ()  # known miner launcher scripts in the image's layers (scan-image)
    behaviour: CgroupVerdict | None = None  # the container cgroup's CPU behaviour (daemon)

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None

    def operator_label(self, key: str) -> str | None:
        """A label set on the container itself (``docker run --label``), not inherited from its image;
        None also when the image's labels are unknown (nothing the image could carry is trusted)."""
        value = self.label(key)
        if value is None or self.image_labels is None:
            return None
        inherited = next((v for k, v in self.image_labels if k == key), None)
        return None if inherited == value else value


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """A file seen on disk (watched path, writable layer, image layer)."""

    path: str
    size: int
    mode: int
    hashes: Hashes | None = None
    is_elf: bool = False
    is_script: bool = False
    container_id: str = ""
    layer: str = ""  # image layer id for scan-image; "" otherwise
    hidden: bool = False  # deleted by a later image layer
    hidden_note: str = ""  # where and by which layer it was hidden (scan-image)
    head: bytes = b""  # first bytes, for cheap checks
    partial: tuple[str, ...] = ()
    yara: tuple[YaraHit, ...] = ()
    # A script's or config file's text (its first bytes, bounded by the collector), for the
    # command-line, wallet and pool patterns (detectors.file_text); "" for anything else.
    text: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """One observation pointing at mining.

    ``signal`` is the detector family (``hash``, ``yara``, ``cmdline``, ``config``,
    ``environment``, ``network``, ``behaviour``, ``location``, ``masquerade``, ``image``),
    ``detail`` says what was seen, ``weight`` is its contribution to the score.
    ``floor`` lifts the finding to at least that severity (a known-bad hash is critical
    on its own); ``strong=False`` marks weak evidence, which alone never makes a finding
    above LOW (see ``engine.severity_of``).
    """

    signal: str
    detail: str
    weight: int
    rule: str = ""  # detector id@version that produced it
    floor: Severity = Severity.NONE
    strong: bool = True  # False: weak signal; weak signals alone never exceed LOW
    destination: tuple[str, int, str] | None = None  # (ip, port, domain)

    def as_dict(self) -> dict:
        return {"signal": self.signal, "detail": self.detail, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """What the agent did (or would do) about a finding."""

    action: str = "none"  # none, pause, freeze, stop, would-pause, ...
    result: str = "skipped"  # done, failed, skipped, dry-run
    reason: str = ""

    def as_dict(self) -> dict:
        return {"action": self.action, "result": self.result, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Finding:
    """Evidence about one subject (a process, a file or a container), scored."""

    finding_id: str
    severity: Severity
    score: int
    rule_name: str
    evidence: tuple[Evidence, ...]
    process: ProcessSnapshot | None = None
    container: ContainerInfo | None = None
    file: FileSnapshot | None = None
    response: ResponseRecord = field(default_factory=ResponseRecord)
    category: tuple[str, ...] = ("malware",)  # ECS event.category; the engine adds the subject's kind


# --------------------------------------------------------------------------- behaviour
# collectors.cpu_sampler's samples feed the daemon's BehaviourModel; its verdicts reach detectors.behaviour.

HUGEPAGES_RAISED = "hugepages-raised"
MSR_LOADED = "msr-loaded"
MSR_WRITES_ON = "msr-writes-on"
MSR_MODPROBE_CHILD = "modprobe-msr-child"


@dataclass(frozen=True, slots=True)
class ProcessCpuSample:
    """One reading of a process; artefact fields are only filled for busy (detailed) reads."""

    pid: int
    start_ticks: int
    t: float  # monotonic seconds when read
    cpu_seconds_total: float  # utime + stime of all its threads
    per_thread_busy: tuple[float, ...] = ()  # cores per thread since the previous detailed read
    threads: int = 0
    hugetlb_kb: int | None = None  # HugetlbPages from /proc/PID/status; None: not read
    anon_big_mappings_mb: tuple[int, ...] = ()  # sizes of large anonymous mappings
    msr_open: bool = False  # an fd points at /dev/cpu/N/msr
    cpu_limit: float | None = None  # cores its cgroup may use (quota, at most the host's cores); None: unlimited/unread
    since: tuple[float, float] | None = None  # (t, cpu seconds) of the sampler's previous reading of the same process


@dataclass(frozen=True, slots=True)
class CgroupCpuSample:
    """Cumulative CPU time of one container's cgroup."""

    container_id: str
    t: float
    usage_seconds: float
    cpu_limit: float | None = None  # cores its quota allows (at most the host's cores); None: unlimited


@dataclass(frozen=True, slots=True)
class HostArtefacts:
    """Host-wide RandomX tamper marks; the model compares consecutive readings."""

    nr_hugepages_total: int  # reserved huge pages, all sizes
    msr_loaded: bool
    msr_allow_writes: str = ""  # "on", "off", "default"; "" when unknown or not loaded
    hugepages_kb_total: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class CpuStats:
    """Rates between consecutive readings in the window (cores: 1.0 is one core)."""

    samples: int = 0  # rate intervals
    span_s: float = 0.0
    mean_cpu: float = 0.0
    flatness: float = 0.0  # coefficient of variation of the rates: low is flat


@dataclass(frozen=True, slots=True)
class BehaviourVerdict:
    """What a process's recent behaviour says."""

    pid: int
    start_ticks: int
    stats: CpuStats
    sustained: bool  # enough samples over enough time, busy and flat
    busy_threads: int  # threads each above ``busy_core`` (median over detailed reads)
    threads: int
    hugetlb_kb: int = 0
    anon_big_mappings_mb: tuple[int, ...] = ()
    msr_open: bool = False  # seen at least once
    artefacts: tuple[str, ...] = ()  # HUGEPAGES_RAISED, MSR_*: attributed host changes and noted children
    cpu_limit: float | None = None  # cores its cgroup may use, when limited below the host (sustained near it counts)

    @property
    def mean_cpu(self) -> float:
        return self.stats.mean_cpu


@dataclass(frozen=True, slots=True)
class CgroupVerdict:
    """What a container cgroup's recent CPU use says."""

    container_id: str
    stats: CpuStats
    sustained: bool
    cpu_limit: float | None = None
