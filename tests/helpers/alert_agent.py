"""A stand-in agent process for restart tests: an AlertPipeline that submits alerts from a file.

    python -m tests.helpers.alert_agent CONFIG ALERTS_JSONL START END

Submits alerts[START:END] (one JSON alert per line in ALERTS_JSONL), prints
``submitted N`` on stdout, then keeps delivering until SIGTERM; on SIGTERM it stops the
pipeline (up to 10 s), prints ``stats {...json...}`` and exits 0. Logs go to stderr.
Fast retries: backoff 0.05 s doubling to 0.5 s. Kill it with SIGKILL to simulate a crash.
"""
from __future__ import annotations

import json
import signal
import sys
import threading


def main(argv: list[str]) -> int:
    from agent import config, logging_setup
    from agent.sinks.pipeline import AlertPipeline

    logging_setup.configure(stream=sys.stderr)
    cfg_path, alerts_path, start, end = argv[0], argv[1], int(argv[2]), int(argv[3])
    alerts = [json.loads(line) for line in open(alerts_path, encoding="utf-8")][start:end]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pipeline = AlertPipeline(config.load(cfg_path), backoff_base=0.05, backoff_max=0.5, send_timeout=5.0, idle_wait=0.2)
    pipeline.start()
    submitted = sum(pipeline.submit(a) for a in alerts)
    print(f"submitted {submitted}", flush=True)
    stop.wait()
    pipeline.stop(timeout=10)
    print("stats " + json.dumps(pipeline.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
