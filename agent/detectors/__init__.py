"""The detectors, registered in one place (no file-system discovery: it breaks under PyInstaller).

Each tuple is what the engine runs on one kind of subject: a ``ProcessSnapshot``, a
``FileSnapshot`` or a ``ContainerInfo`` (a running container, or an image as scan-image sees it).
"""

from agent.detectors import (
    agent_container, attribution, behaviour, cmdline, file_text, hash_ioc, hiding, image_layers, image_policy, location,
    network, yara_match,
)
from agent.detectors.base import Detector

PROCESS_DETECTORS: tuple[Detector, ...] = (hash_ioc, yara_match, cmdline, network, location, behaviour, agent_container,
                                             attribution, hiding)
FILE_DETECTORS: tuple[Detector, ...] = (hash_ioc, yara_match, image_layers, file_text, hiding)
CONTAINER_DETECTORS: tuple[Detector, ...] = (image_policy, image_layers, behaviour)
ALL: tuple[Detector, ...] = (hash_ioc, yara_match, cmdline, network, location, behaviour, agent_container, image_policy,
                             image_layers, attribution, file_text, hiding)
