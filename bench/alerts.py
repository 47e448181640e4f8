"""Alert pipeline benchmark: submit latency (dedupe + durable spool) and end-to-end delivery.

    python3 bench/alerts.py [--alerts 1000] [--no-fsync]

Measures, on a temporary state directory with a file sink and a signed webhook to a local
receiver (127.0.0.1): the time ``submit`` takes (median, p99, max), the time until every
alert reached both sinks, the spool's size on disk, and the agent's resident memory before
and after. No target in PRODUCT.md is about these directly; they bound the share of the
1 s "container start to alert" budget that the pipeline uses. Exit code 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import alert, logging_setup  # noqa: E402
from agent.config import from_dict  # noqa: E402
from agent.sinks.pipeline import AlertPipeline  # noqa: E402
from tests.helpers.alert_factory import make_finding  # noqa: E402
from tests.helpers.receivers import WebhookReceiver  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=1000)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    logging_setup.configure("warning")
    alerts = [alert.build(make_finding(i), host_name="bench") for i in range(args.alerts)]
    with tempfile.TemporaryDirectory(prefix="mw-bench-alerts-") as tmp, WebhookReceiver(secret=b"bench") as hook:
        secret = Path(tmp, "secret")
        secret.write_bytes(b"bench")
        os.chmod(secret, 0o600)
        cfg = from_dict({"agent": {"state_dir": f"{tmp}/state"},
                         "alerts": {"stdout": False, "file": f"{tmp}/alerts.jsonl", "webhook": hook.url,
                                    "webhook_secret_file": str(secret)}})
        rss_before = rss_mib()
        pipeline = AlertPipeline(cfg, fsync=not args.no_fsync)
        pipeline.start()
        times = []
        start = time.perf_counter()
        for a in alerts:
            t0 = time.perf_counter()
            pipeline.submit(a)
            times.append(time.perf_counter() - t0)
        submitted = time.perf_counter() - start
        flushed = pipeline.flush(300)
        total = time.perf_counter() - start
        stats = pipeline.stats()
        latencies = []
        for i in range(20):  # one alert at a time: submit -> received by the webhook
            a = alert.build(make_finding(args.alerts + i), host_name="bench")
            t0 = time.perf_counter()
            pipeline.submit(a)
            hook.wait_for(lambda h, eid=a["event"]["id"]: eid in h.event_ids(), timeout=30)
            latencies.append(time.perf_counter() - t0)
        pipeline.stop(10)
        latencies.sort()
        times.sort()
        n = len(times)
        print(f"alerts:            {n} ({'no fsync' if args.no_fsync else 'fsync per alert'})")
        print(f"submit:            median {times[n // 2] * 1e3:.2f} ms, p99 {times[int(n * 0.99)] * 1e3:.2f} ms, "
              f"max {times[-1] * 1e3:.2f} ms; all submitted in {submitted:.2f} s")
        print(f"delivered to file + webhook: {'all' if flushed else 'NOT all'} in {total:.2f} s "
              f"({n / total:.0f} alerts/s end to end)")
        print(f"single alert:      submit -> webhook receipt median {latencies[10] * 1e3:.1f} ms, "
              f"max {latencies[-1] * 1e3:.1f} ms")
        print(f"webhook received:  {len(hook.accepted)}; stats {stats['sinks']['webhook']}")
        print(f"spool on disk:     {stats['spool_bytes'] / 1024:.0f} KiB; RSS {rss_before:.1f} -> {rss_mib():.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
