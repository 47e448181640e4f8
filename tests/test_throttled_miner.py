"""A packed RandomX miner held to 0.25 CPUs by its container's quota is caught (issue 13, acceptance 3);
a benign hashing loop at the same quota stays quiet.

The miner really computes RandomX hashes (light mode: the real 256 MiB cache, the JIT, the rounding
mode changes of every RandomX program) with the reference library (Debian's librandomx-dev), keeps
one connection to a listener on 127.0.0.1:443 (its own loopback: --network none) and carries no
text of its own. It is packed by tests/helpers/rxpack.py: on disk only the stub and noise; the
library and the miner are decrypted into memfds and dlopen()ed. Nothing in its file, name, command
line or peer says miner, and it never gets near 0.5 cores: what finds it is its CPU judged against its
quota, the RandomX-sized allocation read on a process that uses any CPU, and the memory scan these
earn it. Real daemon, real containers, two of them at once for 120 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import images
from tests.helpers.build import build_dynamic
from tests.helpers.rxpack import pack

RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
DEADLINE_S = 120.0
QUOTA = 250_000_000  # nano CPUs: 0.25 of a core
LIBRANDOMX = Path("/usr/lib/x86_64-linux-gnu/librandomx.so.0")


def _libraries(*binaries: Path) -> dict[str, tuple[bytes, int]]:
    """The shared libraries ``binaries`` need (ldd), at their paths, for the busybox image."""
    files: dict[str, tuple[bytes, int]] = {}
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts and parts[0].startswith("/") else ""
            if path.startswith("/") and "librandomx" not in path:
                files[path] = (Path(path).resolve().read_bytes(), 0o755)
    return files


@pytest.fixture(scope="module")
def miner_image(docker_client) -> str:
    if not LIBRANDOMX.exists():
        pytest.skip("librandomx-dev is not installed (scripts/install-test-deps.sh installs it)")
    stub, payload = build_dynamic("rxpack-stub"), build_dynamic("randomx-miner.so")
    packed = pack(stub.read_bytes(), [LIBRANDOMX.read_bytes(), payload.read_bytes()])
    for needle in (b"RandomX", b"randomx", b"librandomx"):
        assert needle not in packed, f"the packed file shows {needle!r}"
    files = {"/usr/local/bin/svcd": (packed, 0o755), **_libraries(stub, LIBRANDOMX)}
    return images.import_image(docker_client, "minerwatch-test/rxsvc:1", files)


def _top(alerts: list[dict], container_id: str) -> int:
    return max((RANK[a["minerwatch"]["severity"]] for a in alerts
                if a.get("container", {}).get("id") == container_id), default=0)


def test_quota_capped_packed_randomx_miner_is_high_and_a_hashing_loop_stays_quiet(agent, docker_run, miner_image,
                                                                                base_image):
    started = time.monotonic()
    miner = docker_run(miner_image, ["sh", "-c", "nc -l -p 443 >/dev/null & sleep 0.3; exec /usr/local/bin/svcd"],
                       name_prefix="mwtest-rxsvc", nano_cpus=QUOTA)
    benign = docker_run(base_image, ["sh", "-c", "exec sha256sum /dev/zero"], name_prefix="mwtest-hashloop",
                        nano_cpus=QUOTA)
    try:
        while time.monotonic() - started < DEADLINE_S and _top(agent.alerts(), miner.id) < RANK["high"]:
            miner.reload()
            assert miner.status == "running", miner.logs()[-2000:]
            time.sleep(1.0)
        caught = time.monotonic() - started
        alerts = agent.alerts()
        assert _top(alerts, miner.id) >= RANK["high"], \
            f"not high within {DEADLINE_S:.0f} s: {json.dumps([a for a in alerts if a.get('container', {}).get('id') == miner.id])[:4000]}" \
            f"\n{agent.log()[-3000:]}"
        hit = next(a for a in alerts if a.get("container", {}).get("id") == miner.id
                   and RANK[a["minerwatch"]["severity"]] >= RANK["high"])
        details = " | ".join(e["detail"] for e in hit["minerwatch"]["evidence"])
        assert "quota" in details and "RandomX" in details, details
        print(f"\nthrottled miner high after {caught:.0f} s: {details}")
        # The benign loop had the same time at the same quota (and keeps it until the deadline).
        while time.monotonic() - started < DEADLINE_S:
            time.sleep(1.0)
        assert _top(agent.alerts(), benign.id) < RANK["medium"], \
            json.dumps([a for a in agent.alerts() if a.get("container", {}).get("id") == benign.id])[:3000]
        benign.reload()
        assert benign.status == "running"
    finally:
        for c in (miner, benign):
            try:
                c.remove(force=True)
            except Exception:  # already gone; the tracking scope removes it otherwise
                pass
