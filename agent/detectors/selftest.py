"""The evidence of ``minerwatch alerts test``: a marked synthetic observation, never a detection.

Not registered: nothing judges with it. It lives here so that every piece of evidence the
agent can emit is made under ``agent/detectors/``.
"""

from __future__ import annotations

from agent.model import Evidence

ID = "selftest"
VERSION = 1
TITLE = "minerwatch alert pipeline test"

DETAIL = "synthetic alert sent by 'minerwatch alerts test'; no miner was found"


def evidence() -> Evidence:
    """Signal ``test``, weight 0: it cannot raise any score."""
    return Evidence("test", DETAIL, 0, f"{ID}@{VERSION}")
