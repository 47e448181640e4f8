"""Test helpers for minerwatch.

Import them as ``from tests.helpers import build, pool, images, containers, procs``.

- build:      compiles the static C helpers (fakeminer, fakeminer-plain, fakepool, burner)
              once into a cache dir keyed by the sources' hash.
- pool:       FakePool, a threaded stratum pool on 127.0.0.1 (optionally TLS).
- images:     the offline test image minerwatch-test/base:1 (busybox-static + helpers).
- containers: run_container / tag_image with tracking and guaranteed cleanup.
- procs:      small /proc readers (cmdline, cgroup, cpu time, TCP connections of a pid).
"""
