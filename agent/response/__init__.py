"""Stop the bleeding: pause (or freeze, or SIGSTOP) what a finding blames, by policy, with evidence kept.

* ``policy``: ``decide(finding, config, own_container_id) -> Decision``, pure;
* ``identity``: the guard against reused PIDs and replaced containers;
* ``freezer``: cgroup v1/v2 freezer; ``quarantine``: the evidence copy; ``records``: paused.json
  and released.json;
* ``responder``: ``Responder.respond(finding) -> Finding`` ties them together;
* ``release``: undo a pause for ``minerwatch release``.
"""

from agent.response.policy import Decision, decide
from agent.response.responder import Responder

__all__ = ["Decision", "Responder", "decide"]
