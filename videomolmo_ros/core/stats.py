"""Running statistics of durations with constant memory (for timings in long streams)."""
from __future__ import annotations

import random

import numpy as np


class RunningStats:
    """Count, total, mean, max and p50/p95 of a stream of durations (seconds).

    Percentiles come from a reservoir sample (Algorithm R) of at most ``reservoir`` values in
    an array allocated up front, so memory is constant however many values are added; they
    are exact until the reservoir fills. Seeded, so runs are reproducible.
    """

    def __init__(self, reservoir: int = 1024, seed: int = 0) -> None:
        if reservoir < 1:
            raise ValueError(f"reservoir must be >= 1, got {reservoir}")
        self.reservoir = reservoir
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._sample = np.zeros(reservoir, dtype=np.float64)
        self._size = 0
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        """Record one value."""
        value = float(value)
        self.count += 1
        self.total += value
        self.max = value if self.count == 1 else max(self.max, value)
        if self._size < self.reservoir:
            self._sample[self._size] = value
            self._size += 1
        else:
            slot = self._random.randrange(self.count)
            if slot < self.reservoir:
                self._sample[slot] = value

    @property
    def mean(self) -> float:
        """Mean of all values (0.0 before the first)."""
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the reservoir, linear interpolation; 0.0 if empty."""
        if not self._size:
            return 0.0
        return float(np.percentile(self._sample[:self._size], q))

    @property
    def p50(self) -> float:
        return self.percentile(50.0)

    @property
    def p95(self) -> float:
        return self.percentile(95.0)

    @property
    def sample_size(self) -> int:
        """How many values the reservoir holds (<= reservoir)."""
        return self._size

    def summary(self) -> dict[str, float]:
        """Plain numbers, e.g. for a log line or a diagnostics message."""
        return {"count": self.count, "total_s": self.total, "mean_s": self.mean,
                "p50_s": self.p50, "p95_s": self.p95, "max_s": self.max}
