"""A process in a cgroup named like a container that no container runtime made.

Only root and the runtimes create cgroups where containers live; an unprivileged user can
create any name inside their own delegated subtree (``user.slice/.../user@UID.service``),
``docker-<id of a database>.scope`` included, to have another container blamed (and paused)
for what runs there, or to hide in the agent's own container's name. The collector never
attributes such a path to a container (``collectors/cgroups.py``); the claim itself is
evidence: nothing legitimate pretends to be a container.
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import Evidence, ProcessSnapshot, Severity

ID = "attribution"
VERSION = 1
TITLE = "Forged container attribution"

_RULE = f"{ID}@{VERSION}"


def detect(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    claim = proc.cgroup_claim
    if not claim or claim == proc.container_id:
        return []
    where = f"container {proc.container_id[:12]}" if proc.container_id else "the host"
    return [Evidence("attribution", f"cgroup {proc.cgroup_path[:200]!r} is named like container {claim[:12]} but no "
                                    f"container runtime made it: PID {proc.pid} runs on {where}, not in that container",
                     50, _RULE, floor=Severity.MEDIUM)]
