"""A process inside minerwatch's own container that minerwatch did not start.

The agent's container holds the agent and nothing else; the worker exempts only the agent's
own process tree, so any other process judged there was put in from outside (``docker exec``,
a compromised entrypoint): hiding in the watcher's own container is a way to be skipped.
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
    what = proc.exe or proc.name or f"PID {proc.pid}"
    return [Evidence("integrity", f"{what} runs inside minerwatch's own container ({ctx.agent_container[:12]}) "
                                  "but minerwatch did not start it", 35, _RULE)]
