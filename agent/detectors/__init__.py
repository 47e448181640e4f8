"""The detectors, registered in one place (no file-system discovery: it breaks under PyInstaller)."""

from agent.detectors import cmdline, hash_ioc, image_policy, location, network, yara_match

PROCESS_DETECTORS = (hash_ioc, yara_match, cmdline, network, location)
FILE_DETECTORS = (hash_ioc, yara_match)
CONTAINER_DETECTORS = (image_policy,)
ALL = (hash_ioc, yara_match, cmdline, network, location, image_policy)
