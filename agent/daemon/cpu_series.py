"""Cumulative CPU readings of one process or cgroup over a sliding window, and their statistics.

Pure: fed ``(t, cumulative seconds)`` in time order by the behaviour model, its only owner.
"""

from __future__ import annotations

import statistics
from collections import deque

from agent.model import CpuStats

MAX_READINGS = 64  # per series; more samples per window than this only shortens the span


class CpuSeries:
    """``(t, cumulative seconds)`` readings inside the window, oldest first."""

    __slots__ = ("readings",)

    def __init__(self) -> None:
        self.readings: deque[tuple[float, float]] = deque(maxlen=MAX_READINGS)

    def add(self, t: float, total: float, window_s: float) -> None:
        if self.readings:
            last_t, last_total = self.readings[-1]
            if t <= last_t:
                return  # a duplicate or late reading says nothing new
            if total < last_total:
                self.readings.clear()  # a counter that went back: a new cgroup or a bad read
        self.readings.append((t, total))
        while self.readings[0][0] < t - window_s:
            self.readings.popleft()

    def last_rate(self) -> float:
        if len(self.readings) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.readings[-2], self.readings[-1]
        return (c1 - c0) / (t1 - t0)

    def stats(self) -> CpuStats:
        r = self.readings
        if len(r) < 2:
            return CpuStats()
        rates = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in zip(r, list(r)[1:])]
        span = r[-1][0] - r[0][0]
        mean = (r[-1][1] - r[0][1]) / span
        cv = statistics.pstdev(rates) / mean if mean > 1e-6 else 0.0
        return CpuStats(len(rates), span, mean, cv)
