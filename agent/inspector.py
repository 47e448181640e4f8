"""Turn one process, file or container into a finding: collect, scan, detect.

Shared by the sweep and the daemon so both judge the same way. The inspector owns the
collectors' caches (hashes, YARA verdicts); callers own the container map they pass in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from agent.collectors.hashing import HashCache
from agent.collectors.procfs import ProcfsCollector
from agent.collectors.yarascan import YARA_FILE_BYTES, YaraScanner
from agent.config import Config
from agent.detectors.base import Context
from agent.engine import Engine
from agent.model import ContainerInfo, Evidence, FileSnapshot, Finding, ProcessSnapshot
from agent.signatures import Signatures


class Inspector:
    def __init__(self, config: Config, signatures: Signatures, *, hash_cache: HashCache | None = None) -> None:
        self.config = config
        self.signatures = signatures
        self.hash_cache = hash_cache or HashCache()
        self.max_bytes = config.watch.max_file_mb << 20
        self.procfs = ProcfsCollector(
            proc_root=Path(config.agent.proc_root), hash_cache=self.hash_cache, max_exe_bytes=self.max_bytes,
            env_names=frozenset(n for n in signatures.env_vars if not n.endswith("*")),
        )
        # YARA reads a file into memory: its first YARA_FILE_BYTES (the agent's memory budget), all of it
        # for ordinary miners (a static xmrig is under 10 MB); hashes still cover the whole file.
        self.yara = YaraScanner(signatures.yara, max_bytes=min(self.max_bytes, YARA_FILE_BYTES),
                                proc_root=config.agent.proc_root)
        self.engine = Engine()
        self.context = Context(signatures=signatures, image_allow=config.images.allow)

    def with_signatures(self, config: Config, signatures: Signatures) -> "Inspector":
        """A new inspector on new config/signatures that keeps the hash cache (hashes do not change)."""
        return Inspector(config, signatures, hash_cache=self.hash_cache)

    def scan_exe(self, proc: ProcessSnapshot) -> ProcessSnapshot:
        """Attach YARA hits on the process's executable (read through /proc/PID/exe, cached by SHA-256)."""
        if proc.hashes is None or proc.is_kernel_thread:
            return proc
        hits = self.yara.scan_process_exe(self.config.agent.proc_root, proc.pid)
        return dataclasses.replace(proc, yara=proc.yara + hits) if hits else proc

    def scan_memory(self, proc: ProcessSnapshot) -> ProcessSnapshot:
        hits = self.yara.scan_memory(proc.pid)
        return dataclasses.replace(proc, yara=proc.yara + hits) if hits else proc

    def container_context(self, container: ContainerInfo | None) -> Context:
        return dataclasses.replace(self.context, container=container)

    def container_evidence(self, container: ContainerInfo) -> list[Evidence]:
        return self.engine.container_evidence(container, self.container_context(container))

    def judge_process(self, proc: ProcessSnapshot, container: ContainerInfo | None,
                      image_evidence: Iterable[Evidence] = (), observed: Iterable[Evidence] = ()) -> Finding | None:
        """Evaluate an already-collected (and scanned) snapshot in its container's context."""
        if container is None and proc.container_id:
            container = ContainerInfo(id=proc.container_id, runtime=proc.container_runtime or "unknown")
        return self.engine.evaluate_process(proc, self.container_context(container), extra=image_evidence,
                                            observed=observed)

    def scan_host_file(self, snap: FileSnapshot) -> FileSnapshot:
        """Attach YARA hits for a file on the host's own file system (``snap.path`` is a host path)."""
        hits = self.yara.scan_file(snap.path)
        return dataclasses.replace(snap, yara=hits) if hits else snap

    def judge_file(self, snap: FileSnapshot, container: ContainerInfo | None = None) -> Finding | None:
        """Evaluate a collected (and already scanned) file snapshot."""
        return self.engine.evaluate_file(snap, self.container_context(container))

    def judge_container(self, container: ContainerInfo, evidence: list[Evidence]) -> Finding | None:
        return self.engine.evaluate_container(container, self.container_context(container), evidence)
