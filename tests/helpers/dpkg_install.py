"""Install and remove a .deb for real on this machine, for the packaging tests.

    with dpkg_install.exclusive("minerwatch"):     # one test at a time on this machine
        dpkg_install.dpkg("-i", deb)
        ...
    # leaves the package purged, also on failure

``exclusive`` skips the test when the package, or one of the paths it owns at run time
(``/etc/minerwatch``, ``/var/lib/minerwatch``, ``/var/log/minerwatch``), is already there:
a test never removes an installation or data it did not make. ``dpkg`` retries while
another dpkg or apt holds the lock (other shells install packages on this machine too).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

LOCK = "/tmp/minerwatch-test-dpkg.lock"
RUNTIME_PATHS = ("/etc/minerwatch", "/var/lib/minerwatch", "/var/log/minerwatch")


def status(package: str) -> str:
    """dpkg's status of ``package`` ("install ok installed", "deinstall ok config-files"), or ""."""
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


def dpkg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run dpkg with ``args``, waiting while its lock is held elsewhere; raises on failure."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(["dpkg", *args], capture_output=True, text=True, env=env, timeout=timeout)
        locked = res.returncode != 0 and "lock" in res.stderr.lower()
        if not locked or time.monotonic() > deadline:
            break
        time.sleep(2)
    if res.returncode != 0:
        raise AssertionError(f"dpkg {' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res


@contextlib.contextmanager
def exclusive(package: str) -> Iterator[None]:
    """Hold the machine-wide test lock; skip when ``package`` or its data exist already;
    purge ``package`` on the way out, pass or fail."""
    if os.geteuid() != 0 or not shutil.which("dpkg"):
        pytest.skip("installing a .deb needs dpkg and root")
    Path(LOCK).touch(exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if status(package):
            pytest.skip(f"a {package} package is already known to dpkg here ({status(package)}): not touching it")
        present = [p for p in RUNTIME_PATHS if os.path.lexists(p)]
        if present:
            pytest.skip(f"{', '.join(present)} exist already: not touching data this test did not make")
        try:
            yield
        finally:
            if status(package):
                dpkg("--purge", package)
