"""What an image's layers reveal: known miner launcher scripts, and files a later layer hides.

scan-image reads every layer of an export; the facts it found there travel on the subjects:
``ContainerInfo.launchers`` (paths of known launcher scripts, with their layer) and
``FileSnapshot.hidden_note`` (a flagged file deleted or replaced by a later layer, which
``docker run`` never shows but ``docker save`` still ships).
"""

from __future__ import annotations

from agent.detectors.base import Context
from agent.model import ContainerInfo, Evidence, FileSnapshot

ID = "image_layers"
VERSION = 1
TITLE = "Cryptominer hidden in image layers"

_RULE = f"{ID}@{VERSION}"


def detect(subject: ContainerInfo | FileSnapshot, ctx: Context) -> list[Evidence]:
    if isinstance(subject, FileSnapshot):
        if not subject.hidden_note:
            return []
        # Weak: layers hide files for ordinary reasons too; it only adds to what the file itself shows.
        return [Evidence("location", subject.hidden_note, 10, _RULE, strong=False)]
    if subject.launchers:
        shown = ", ".join(subject.launchers[:3])
        return [Evidence("image", f"the image contains the known miner launcher script(s) {shown}", 25, _RULE)]
    return []
