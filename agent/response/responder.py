"""The response: apply the policy to a finding, verify identity, pause or freeze, keep evidence.

    responder = Responder(config, docker, state_dir=..., clock=time.monotonic)   # docker: a DockerHandle
    finding = responder.respond(finding)      # finding.response = ResponseRecord(action, result, reason)
    responder.reconfigure(new_config)         # a reload: new policy, same memory of what was done

Containers are paused through Docker (the ``collectors.docker_api.DockerHandle`` it is given); containers of other runtimes (containerd, CRI-O, podman, from
the cgroup path) and Docker containers while Docker is unreachable are frozen through their
cgroup. Host processes get SIGSTOP (opt-in). Pause first, then keep the evidence: a frozen
process's executable is still readable, and it cannot change anything meanwhile.

Results: ``done`` (also "already paused"), ``failed`` (a follow-up alert goes out: the
response changed), ``refused`` (identity changed: a reused PID or a replaced container is
never hit; nor a container whose ``State.Pid`` the process shares neither pid namespace nor
cgroup with, whatever its cgroup path names), ``skipped`` and ``dry-run`` (policy). One owner: the daemon's worker, or a sweep.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone

import structlog

from agent import alert
from agent.collectors import cgroups, docker_inventory
from agent.collectors.docker_api import ContainerGone, DockerDown, DockerHandle, DockerRefused
from agent.config import Config
from agent.model import ContainerInfo, Finding, ResponseRecord
from agent.response import identity
from agent.response.freezer import CgroupFreezer, FreezeError
from agent.response.policy import Decision, decide
from agent.response.quarantine import Limits, Quarantine, QuarantineError
from agent.response.records import ResponseRecords

log = structlog.get_logger("minerwatch.response")

DOCKER_RUNTIMES = ("docker", "", "unknown")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Responder:
    def __init__(self, config: Config, docker: DockerHandle, *, state_dir: str,
                 clock: Callable[[], float] = time.monotonic, freezer: CgroupFreezer | None = None,
                 own_pid: int | None = None, actor: str = "minerwatch daemon") -> None:
        self.config = config
        self.docker = docker
        self.clock = clock
        self.actor = actor
        self.proc_root = config.agent.proc_root
        self.records = ResponseRecords(state_dir)
        self.quarantine = Quarantine(state_dir, config.watch.max_file_mb << 20, proc_root=self.proc_root,
                                     limits=Limits.of(config.response))
        self._freezer = freezer
        self.own_pid = own_pid or os.getpid()
        self.own_pids = frozenset({self.own_pid, *identity.ancestors(self.proc_root, self.own_pid)})
        try:
            self.own_cgroup = identity.read_identity(self.proc_root, self.own_pid).cgroup_text
        except (identity.Gone, OSError, ValueError):  # /proc of another pid namespace: no own cgroup known
            self.own_cgroup = ""
        self.own_container = cgroups.parse_cgroup(self.own_cgroup)[0] if self.own_cgroup else ""
        self._kept: collections.OrderedDict[tuple, str] = collections.OrderedDict()  # evidence already kept
        self._logged: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self.last_action_s = 0.0  # seconds the last pause/freeze/stop took (policy decided to done)
        self.last_action_at = 0.0  # clock() when it was done (before the evidence copy)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config (policy, evidence size limit); what was paused, released or logged is kept."""
        self.config = config
        self.quarantine.max_bytes = config.watch.max_file_mb << 20
        self.quarantine.limits = Limits.of(config.response)

    @property
    def freezer(self) -> CgroupFreezer:
        if self._freezer is None:
            self._freezer = CgroupFreezer()
        return self._freezer

    # ------------------------------------------------------------------ entry point

    def respond(self, finding: Finding) -> Finding:
        """``finding`` with its ``response`` set; never raises."""
        try:
            record, container = self._respond(finding)
        except Exception as exc:  # crash barrier: a response bug must not stop the alert that reports it
            log.exception("response_crashed", finding=finding.finding_id)
            record, container = ResponseRecord("pause", "failed", f"internal error: {exc!r}"), None
        if container is not None and (finding.container is None or not finding.container.name):
            finding = dataclasses.replace(finding, container=container)
        return dataclasses.replace(finding, response=record)

    def _decide(self, finding: Finding) -> Decision:
        return decide(finding, self.config, self.own_container, own_pids=self.own_pids,
                      released=self.records.released())

    def _respond(self, finding: Finding) -> tuple[ResponseRecord, ContainerInfo | None]:
        decision = self._decide(finding)
        if not decision.act:
            return ResponseRecord(decision.action, decision.result, decision.reason), None
        started = self.clock()
        if decision.action == "stop":
            record, container = self._stop_host(finding, decision), None
        else:
            record, container = self._pause(finding, decision)
        if record.result in ("done", "failed"):
            self.last_action_at = self.clock()
            self.last_action_s = self.last_action_at - started
            record = self._keep_evidence(dataclasses.replace(finding, container=container or finding.container), record)
        self._log(finding, decision, record)
        return record, container

    def _log(self, finding: Finding, decision: Decision, record: ResponseRecord) -> None:
        """Log an action once per change of its outcome (the daemon repeats "already paused" every interval)."""
        outcome = (record.action, record.result)
        if self._logged.get(finding.finding_id) == outcome:
            return
        self._logged[finding.finding_id] = outcome
        self._logged.move_to_end(finding.finding_id)
        while len(self._logged) > 4096:
            self._logged.popitem(last=False)
        level = {"done": "warning", "failed": "error", "refused": "error"}.get(record.result, "info")
        getattr(log, level)("response", action=record.action, result=record.result, reason=record.reason,
                            container=decision.container_id[:12],
                            pid=finding.process.pid if finding.process is not None else 0, finding=finding.finding_id)

    # ------------------------------------------------------------------ containers

    def _pause(self, finding: Finding, decision: Decision) -> tuple[ResponseRecord, ContainerInfo | None]:
        cid, proc = decision.container_id, finding.process
        ident = None
        if proc is not None:
            ident, why = identity.verify(self.proc_root, proc)
            if ident is None:
                return ResponseRecord("pause", "refused", f"identity changed: {why}"), None
            if ident.container_id != cid:
                return ResponseRecord("pause", "refused", f"identity changed: PID {proc.pid} is not in container {cid[:12]}"), None
        runtime = (proc.container_runtime if proc is not None and proc.container_runtime
                   else finding.container.runtime if finding.container is not None else "")
        docker_note = ""
        if runtime in DOCKER_RUNTIMES:
            outcome = self._docker_pause(finding, decision, ident)
            if outcome is not None:
                return outcome
            docker_note = " (docker unreachable)"
            known = finding.container
            if known is None or not known.name:
                return ResponseRecord("pause", "failed", f"{decision.reason}: docker unreachable and the container's "
                                      "name and labels are unknown, so response.protect cannot be checked"), None
        return self._freeze(finding, decision, ident, docker_note), None

    def _docker_pause(self, finding: Finding, decision: Decision,
                      ident: identity.Identity | None) -> tuple[ResponseRecord, ContainerInfo] | None:
        """Pause through Docker; None when Docker cannot be reached (the caller freezes instead)."""
        cid = decision.container_id
        try:
            data = self.docker.inspect_raw(cid)
        except ContainerGone:
            return ResponseRecord("pause", "refused", f"identity changed: container {cid[:12]} no longer exists"), None
        except DockerRefused as exc:
            return ResponseRecord("pause", "failed", f"{decision.reason}: docker inspect failed: {exc}"), None
        except DockerDown as exc:
            log.warning("docker_unreachable_for_pause", container=cid[:12], error=str(exc))
            return None
        try:
            image_labels = self.docker.image_labels(str(data.get("Image") or ""))
        except DockerDown:
            image_labels = None  # unknown: no label the image could carry protects it
        info = docker_inventory.container_from_inspect(data, image_labels)
        if info.id != cid:
            return ResponseRecord("pause", "refused", f"identity changed: {cid[:12]} is now container {info.id[:12]}"), info
        fresh = self._decide(dataclasses.replace(finding, container=info))  # labels and name as they are now
        if not fresh.act:
            return ResponseRecord(fresh.action, fresh.result, fresh.reason), info
        if info.paused:
            return ResponseRecord("pause", "done", f"{decision.reason}: already paused"), info
        if not (data.get("State") or {}).get("Running"):
            return ResponseRecord("pause", "skipped", f"{decision.reason}: container is not running"), info
        if ident is not None and (why := identity.outside_container(
                self.proc_root, ident.pid, ident.cgroup_text, int((data.get("State") or {}).get("Pid") or 0), cid)):
            return ResponseRecord("pause", "refused", f"not paused: {why}"), info
        try:
            self.docker.pause(cid)
        except DockerRefused as exc:
            if "already paused" in str(exc):
                return ResponseRecord("pause", "done", f"{decision.reason}: already paused"), info
            if not self._still_running(cid):  # it stopped meanwhile: nothing left to pause
                return ResponseRecord("pause", "skipped", f"{decision.reason}: container stopped"), info
            return ResponseRecord("pause", "failed", f"{decision.reason}: docker pause failed: {exc}"), info
        except (ContainerGone, DockerDown) as exc:
            return ResponseRecord("pause", "failed", f"{decision.reason}: docker pause failed: {exc}"), info
        self._record(cid, finding, info, method="docker", cgroup="")
        return ResponseRecord("pause", "done", f"{decision.reason}: paused"), info

    def _still_running(self, cid: str) -> bool:
        try:
            return bool((self.docker.inspect_raw(cid).get("State") or {}).get("Running"))
        except ContainerGone:
            return False
        except (DockerDown, DockerRefused):  # unknown: count it as running
            return True

    def _freeze(self, finding: Finding, decision: Decision, ident: identity.Identity | None, note: str) -> ResponseRecord:
        cid = decision.container_id
        init_pid = finding.container.pid if finding.container is not None else 0
        if ident is not None and init_pid and (why := identity.outside_container(
                self.proc_root, ident.pid, ident.cgroup_text, init_pid, cid)):
            return ResponseRecord("freeze", "refused", f"not frozen: {why}")
        if ident is None:  # a container finding without a process: its init process locates the cgroup
            pid = init_pid
            try:
                ident = identity.read_identity(self.proc_root, pid) if pid else None
            except (identity.Gone, OSError, ValueError):
                ident = None
            if ident is None or ident.container_id != cid:
                return ResponseRecord("freeze", "failed", f"{decision.reason}{note}: no process of the container to find its cgroup")
        try:
            target = self.freezer.target_for(ident.cgroup_text)
        except FreezeError as exc:
            return ResponseRecord("freeze", "failed", f"{decision.reason}{note}: {exc}")
        if cid not in target.path:
            return ResponseRecord("freeze", "refused", f"cgroup {target.path} does not name container {cid[:12]}")
        if self.own_cgroup and self.freezer.contains(target, self.own_cgroup):
            return ResponseRecord("freeze", "refused", f"cgroup {target.path} holds the agent itself")
        try:
            if self.freezer.state(target) == "FROZEN":
                return ResponseRecord("freeze", "done", f"{decision.reason}{note}: already frozen ({target.method})")
            self.freezer.freeze(target)
        except (FreezeError, OSError) as exc:
            return ResponseRecord("freeze", "failed", f"{decision.reason}{note}: {exc}")
        self._record(cid, finding, finding.container, method=target.method, cgroup=target.directory)
        return ResponseRecord("freeze", "done", f"{decision.reason}{note}: froze {target.method} cgroup {target.path}")

    # ------------------------------------------------------------------ host processes

    def _stop_host(self, finding: Finding, decision: Decision) -> ResponseRecord:
        proc = finding.process
        try:
            pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            return ResponseRecord("stop", "refused", f"identity changed: PID {proc.pid} exited")
        except OSError as exc:
            return ResponseRecord("stop", "failed", f"{decision.reason}: pidfd_open failed: {exc.strerror or exc}")
        try:
            ident, why = identity.verify(self.proc_root, proc)  # after pidfd_open: the process checked is the one signalled
            if ident is None:
                return ResponseRecord("stop", "refused", f"identity changed: {why}")
            if ident.state == "T":
                return ResponseRecord("stop", "done", f"{decision.reason}: already stopped")
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        except OSError as exc:
            return ResponseRecord("stop", "failed", f"{decision.reason}: SIGSTOP failed: {exc.strerror or exc}")
        finally:
            os.close(pidfd)
        self._record(f"pid:{proc.pid}", finding, None, method="sigstop", cgroup="")
        return ResponseRecord("stop", "done", f"{decision.reason}: stopped (SIGSTOP)")

    # ------------------------------------------------------------------ records and evidence

    def _record(self, key: str, finding: Finding, info: ContainerInfo | None, *, method: str, cgroup: str) -> None:
        proc = finding.process
        self.records.add_paused(key, {
            "id": key, "name": info.name if info else "", "image": info.image if info else "",
            "method": method, "cgroup": cgroup, "at": now_iso(), "by": self.actor,
            "finding_id": finding.finding_id, "severity": finding.severity.word, "rule": finding.rule_name,
            "pid": proc.pid if proc else 0, "start_ticks": proc.start_ticks if proc else 0,
        })

    def _keep_evidence(self, finding: Finding, record: ResponseRecord) -> ResponseRecord:
        proc, file = finding.process, finding.file
        key = (proc.pid, proc.start_ticks) if proc is not None else (file.path, file.container_id) if file else None
        if key is None:
            return record
        if key in self._kept:
            return record
        try:
            kept = self.quarantine.keep(finding, alert.build(dataclasses.replace(finding, response=record)))
        except QuarantineError as exc:
            log.warning("evidence_not_kept", finding=finding.finding_id, error=str(exc))
            what = "executable" if proc is not None else "file"
            return dataclasses.replace(record, reason=f"{record.reason}; {what} not kept: {exc}")
        if kept is None:
            return record
        self._kept[key] = kept.sha256
        while len(self._kept) > 4096:
            self._kept.popitem(last=False)
        log.info("evidence_kept", finding=finding.finding_id, sha256=kept.sha256, path=kept.path, size=kept.size)
        return dataclasses.replace(record, reason=f"{record.reason}; executable kept as quarantine/{kept.sha256}")
