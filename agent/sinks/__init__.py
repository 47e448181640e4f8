"""Alert delivery: dedupe -> durable spool -> one delivery thread per sink.

- pipeline.py    AlertPipeline, what the daemon owns (submit, start, stop, flush, reopen, stats)
- spool.py       the bounded on-disk spool with one position per sink (at-least-once)
- dedupe.py      one alert per finding per window, unless it got worse
- delivery.py    the per-sink worker thread: retries with backoff and jitter
- configured.py  the sinks named in [alerts]
- base.py        the Sink protocol, Record, SinkError, the one JSON encoding
- stdout.py, file.py, syslog.py, webhook.py   the sinks
"""
