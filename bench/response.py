"""Response benchmark: time from verdict to paused container (PRODUCT.md target: at most 0.5 s).

    python3 bench/response.py [--runs 10]

For each run: a fakeminer container (fakepool + fakeminer, --network none, test image built
offline), a real verdict (procfs snapshot, YARA, detectors: critical), then ``respond`` with
one Docker client reused across runs, and polling ``docker inspect`` until ``State.Paused``.
Prints, over the runs, p50/p95/max of:

* verdict -> paused (what the target is about; pause first, evidence after);
* the evidence copy alone (quarantine of the executable, its hash and record), i.e. what
  keeping the evidence *before* pausing would add to the time a miner keeps mining;
* the whole ``respond`` call.

Containers are removed at the end (unpaused first). Exit code 0 when p95 <= 0.5 s, else 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.collectors.docker_api import DockerHandle  # noqa: E402
from agent import logging_setup  # noqa: E402
from agent.collectors import docker_inventory  # noqa: E402
from agent.config import from_dict  # noqa: E402
from agent.collectors.snapshots import SnapshotCollector  # noqa: E402
from agent.judge import Judge  # noqa: E402
from agent.response import Responder  # noqa: E402
from agent.response.quarantine import Quarantine  # noqa: E402
from agent.signatures import load_bundle  # noqa: E402
from tests.helpers import build, containers, images  # noqa: E402

TARGET_S = 0.5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{name:<34} p50 {pct(ms, 0.5):7.1f} ms   p95 {pct(ms, 0.95):7.1f} ms   max {max(ms):7.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    logging_setup.configure("error")
    client = containers.connect_docker()
    image = images.build_base_image(client, build.build_helpers())
    to_paused, evidence, respond_s = [], [], []
    with tempfile.TemporaryDirectory(prefix="mw-bench-response-") as tmp, containers.tracking_scope("bench-response"):
        cfg = from_dict({"agent": {"state_dir": f"{tmp}/state"}})
        collect, judge = SnapshotCollector(cfg, load_bundle()), Judge.from_config(cfg, load_bundle())
        responder = Responder(cfg, DockerHandle.of(client), state_dir=cfg.agent.state_dir, clock=time.perf_counter, actor="bench")
        quarantine = Quarantine(f"{tmp}/evidence-first", cfg.watch.max_file_mb << 20)
        for i in range(args.runs):
            m = containers.start_miner_container(client, image, name_prefix="mwbench-resp")
            info = docker_inventory.container_from_inspect(client.api.inspect_container(m.id))
            finding = judge.process(collect.snapshot(m.pid), info, judge.container_evidence(info))
            q0 = time.perf_counter()
            quarantine.keep(finding, {"bench": True})  # what evidence-first would add before the pause
            evidence.append(time.perf_counter() - q0)
            t0 = time.perf_counter()  # the verdict exists
            out = responder.respond(finding)
            respond_s.append(time.perf_counter() - t0)
            if out.response.result != "done" or not client.api.inspect_container(m.id)["State"]["Paused"]:
                raise SystemExit(f"run {i}: not paused: {out.response}")
            to_paused.append(responder.last_action_at - t0)  # docker pause returned: the container is frozen
            containers.remove_container(client, m.id)
    print(f"response benchmark: {args.runs} runs, fakeminer container, Docker pause, one client reused")
    print(line("verdict -> paused (pause first)", to_paused))
    print(line("evidence copy (quarantine) alone", evidence))
    print(line("respond() total (pause + evidence)", respond_s))
    print(f"evidence first would make verdict -> paused about {statistics.median(evidence) * 1000:.1f} ms slower (median)")
    ok = pct(to_paused, 0.95) <= TARGET_S
    print(f"target verdict -> paused <= {TARGET_S} s at p95: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
