"""Response policy: what to do about a finding, and why. Pure: no I/O, no clock.

    decide(finding, config, own_container_id, own_pids=..., released=...) -> Decision

Rules, in order (the first that applies gives the reason the alert carries):

1. ``response.pause_severity = "off"`` or a severity below it: nothing.
2. The agent's own container, or a container an operator released (``minerwatch release``):
   never.
3. ``response.protect`` entries: container names (globs), image globs (also against the
   repository without its tag), ids and id prefixes of at least 12 hex digits; the label
   ``minerwatch.protect=true`` set on the container by the operator: never. The same label
   carried by the container's *image* protects nothing (Docker copies image labels into the
   container's, and an attacker's image can carry any label), nor does it when the image's
   labels are unknown.
4. Host processes (no container): only with ``response.stop_host_processes`` (SIGSTOP), and
   never PID 1, a kernel thread, the agent or one of its ancestors.
5. ``response.mode = "observe"``: the action it would take, result ``dry-run``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agent.config import Config
from agent.model import ContainerInfo, Finding, Severity

PROTECT_LABEL = "minerwatch.protect"
MIN_ID_PREFIX = 12  # a docker short id; shorter hex strings are treated as names only
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class Decision:
    """``act``: take ``action`` now; otherwise ``result`` (skipped, dry-run) and ``reason`` are final."""

    act: bool
    action: str  # "pause" (a container), "stop" (a host process) or "none"
    result: str  # what to record when not acting: "skipped" or "dry-run"
    reason: str
    container_id: str = ""
    pid: int = 0


def pause_threshold(config: Config) -> Severity | None:
    """The severity that triggers a response; None when ``pause_severity = "off"``."""
    word = config.response.pause_severity
    return None if word == "off" else Severity.parse(word)


def target_container(finding: Finding) -> str:
    """The container a finding is about ("" for the host)."""
    if finding.container is not None and finding.container.id:
        return finding.container.id
    if finding.process is not None and finding.process.container_id:
        return finding.process.container_id
    if finding.file is not None and finding.file.container_id:
        return finding.file.container_id
    return ""


def image_repository(image: str) -> str:
    """``registry:5000/ns/app:1.2@sha256:..`` -> ``registry:5000/ns/app``."""
    ref = image.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def protection(container: ContainerInfo, protect: Collection[str]) -> str:
    """Why ``container`` must not be touched ("" when nothing protects it)."""
    label = container.operator_label(PROTECT_LABEL)
    if label is not None and label.strip().lower() in ("true", "1", "yes"):
        return f"protected by label {PROTECT_LABEL}={label} (set on the container)"
    for entry in protect:
        if not entry:
            continue
        what = ""
        if container.name and fnmatch.fnmatchcase(container.name, entry.lstrip("/")):
            what = f"name {container.name}"
        elif container.image and (fnmatch.fnmatchcase(container.image, entry)
                                  or fnmatch.fnmatchcase(image_repository(container.image), entry)):
            what = f"image {container.image}"
        elif len(entry) >= MIN_ID_PREFIX and _HEX.match(entry) and container.id.startswith(entry):
            what = f"id {container.id[:12]}"
        if what:
            return f"protected by response.protect entry {entry!r} ({what})"
    return ""


def _host_process_refusal(finding: Finding, own_pids: Collection[int]) -> str:
    proc = finding.process
    if proc is None:
        return "host file finding: no process to stop"
    if proc.pid <= 1:
        return f"PID {proc.pid} is never stopped"
    if proc.is_kernel_thread:
        return f"PID {proc.pid} is a kernel thread: never stopped"
    if proc.pid in own_pids:
        return f"PID {proc.pid} is the agent or one of its ancestors: never stopped"
    return ""


def decide(finding: Finding, config: Config, own_container_id: str = "", *,
           own_pids: Collection[int] = (), released: Mapping[str, str] | None = None) -> Decision:
    """What the response policy says about ``finding``.

    ``own_pids``: the agent's PID and its ancestors; ``released``: container id -> who released
    it and when (operators' ``minerwatch release``).
    """
    threshold = pause_threshold(config)
    if threshold is None:
        return Decision(False, "none", "skipped", "response.pause_severity is off")
    sev = finding.severity
    if sev < threshold:
        return Decision(False, "none", "skipped", f"{sev.word} finding below pause_severity {threshold.word}")
    why = f"{sev.word} finding >= pause_severity {threshold.word}"
    cid = target_container(finding)
    if cid:
        if own_container_id and cid == own_container_id:
            return Decision(False, "none", "skipped", "the agent's own container is never paused", cid)
        if released and cid in released:
            return Decision(False, "none", "skipped", f"released by {released[cid]}: not paused again", cid)
        container = finding.container if finding.container is not None else ContainerInfo(id=cid)
        if not container.id:
            container = ContainerInfo(id=cid)
        if protected := protection(container, config.response.protect):
            return Decision(False, "none", "skipped", protected, cid)
        action, target = "pause", dict(container_id=cid)
    else:
        if not config.response.stop_host_processes:
            return Decision(False, "none", "skipped", "host process: response.stop_host_processes is off")
        if refusal := _host_process_refusal(finding, own_pids):
            return Decision(False, "none", "skipped", refusal)
        action, target = "stop", dict(pid=finding.process.pid)
    if config.response.mode == "observe":
        return Decision(False, action, "dry-run", f"observe mode: would {action} ({why})", **target)
    return Decision(True, action, "", why, **target)
