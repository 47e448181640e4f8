"""A process put into minerwatch's own container from outside it.

The worker exempts only the agent's own process tree and judges its container like any other.
A process there whose parent (or an ancestor) is not in that container came in from outside
(``docker exec``, ``kubectl exec``, nsenter): hiding in the watcher's own container is a way to
be skipped, so that is evidence of its own. Processes the container's own init started (an
agent installed as a service in a system container, under its systemd) are judged on their
own evidence only. Unknown (``entered_from_outside`` not asked) counts as entered.
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import Evidence, ProcessSnapshot

ID = "agent_container"
VERSION = 1
TITLE = "Foreign process in minerwatch's own container"

_RULE = f"{ID}@{VERSION}"


def detect(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    if not ctx.agent_container or proc.container_id != ctx.agent_container or proc.is_kernel_thread:
        return []
    if proc.entered_from_outside is False:
        return []
    what = proc.exe or proc.name or f"PID {proc.pid}"
    return [Evidence("integrity", f"{what} runs inside minerwatch's own container ({ctx.agent_container[:12]}), "
                                  "put there from outside it (docker exec or the like), not started by minerwatch",
                     35, _RULE)]
