"""Evidence about the agent itself: it is being stopped, or it started (and how the last run ended).

Not registered: nothing judges a process with it. The daemon's lifecycle (``daemon/lifecycle.py``)
makes its start and stop alerts from it, so a SOC sees an agent stopped quietly (a ``kill``, a
privileged container with ``--pid host``) as an alert of its own, delivered through the spool.
"""

from __future__ import annotations

from agent.model import Evidence, Severity

ID = "agent_health"
VERSION = 1
TITLE = "minerwatch agent stopping or started"

_RULE = f"{ID}@{VERSION}"


def stopping(signal_name: str, sender: str, by_init: bool) -> Evidence:
    """The agent received ``signal_name`` from ``sender``; a stop by PID 1 (systemd) is routine."""
    why = "a routine stop by the service manager" if by_init else "not the service manager: find out who stopped it"
    return Evidence("agent", f"minerwatch received {signal_name} from {sender} and is stopping ({why})",
                    0 if by_init else 60, _RULE, floor=Severity.LOW if by_init else Severity.HIGH)


def started(previous: str, clean: bool) -> Evidence:
    """The agent started; ``previous`` says how the last run ended."""
    return Evidence("agent", f"minerwatch started; {previous}", 0 if clean else 30, _RULE,
                    floor=Severity.LOW if clean else Severity.MEDIUM)
