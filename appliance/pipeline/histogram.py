"""A fixed-size latency histogram (log-linear buckets), cheap enough to update per frame."""

from __future__ import annotations

import numpy as np

__all__ = ["LatencyHistogram", "percentile_of", "sparse_counts"]

_SUB = 8  # buckets per power of two: about 9% resolution
_N = 64 * _SUB


class LatencyHistogram:
    """Counts of nanosecond latencies in buckets ``2^k * (1 + j/8)``; percentiles in ms.
    ``sum_ns`` is the exact sum of every latency added (a Prometheus histogram's ``_sum``)."""

    #: the number of buckets (a status block's histogram has as many: ``rt.StatusBlock``)
    BUCKETS = _N

    def __init__(self, counts: np.ndarray | None = None) -> None:
        """``counts``: where to count (an int64 array of ``BUCKETS``, e.g. a stage's record in
        its status block, so readers see it live); zeroed. A private array by default."""
        if counts is None:
            counts = np.zeros(_N, np.int64)
        elif counts.shape != (_N,) or counts.dtype != np.int64:
            raise ValueError(f"a latency histogram counts into int64[{_N}], not {counts.dtype}{list(counts.shape)}")
        else:
            counts[:] = 0
        self.counts = counts
        self.sum_ns = 0

    @staticmethod
    def _bucket(ns: int) -> int:
        ns = max(int(ns), 1)
        k = ns.bit_length() - 1
        frac = ((ns << 3) >> k) & 7 if k >= 3 else (ns << (3 - k)) & 7
        return min(k * _SUB + frac, _N - 1)

    def add(self, ns: int) -> None:
        self.counts[self._bucket(ns)] += 1
        self.sum_ns += max(int(ns), 0)

    @property
    def sum_s(self) -> float:
        return self.sum_ns / 1e9

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def sparse(self) -> dict[str, int]:
        """Non-empty buckets as ``{index: count}`` (JSON-friendly, for the live reports)."""
        return sparse_counts(self.counts)

    @staticmethod
    def upper_edge_s(index: int) -> float:
        k, j = divmod(index, _SUB)
        return (2**k) * (1 + (j + 1) / _SUB) / 1e9

    @classmethod
    def cumulative(cls, sparse: dict[str, int], bounds_s: tuple[float, ...]) -> tuple[list[int], int]:
        """Counts at or below each bound (a bucket counts where its upper edge falls), and the total."""
        items = sorted((cls.upper_edge_s(int(i)), n) for i, n in sparse.items())
        return [sum(n for edge, n in items if edge <= b) for b in bounds_s], sum(n for _, n in items)

    def percentile(self, q: float) -> float | None:
        """The bucket's upper edge holding the q-th percentile, in ms (None when empty)."""
        return percentile_of(self.counts, q)


def sparse_counts(counts: np.ndarray) -> dict[str, int]:
    """Non-empty buckets of a histogram's counts as ``{index: count}``."""
    return {str(int(i)): int(counts[i]) for i in np.flatnonzero(counts)}


def percentile_of(counts: np.ndarray, q: float) -> float | None:
    """The q-th percentile of a histogram's counts (``LatencyHistogram.counts``, or a copy
    read from a status block), in ms: the upper edge of its bucket (None when empty)."""
    n = int(counts.sum())
    if not n:
        return None
    idx = int(np.searchsorted(np.cumsum(counts), q / 100 * n, side="left"))
    k, j = divmod(idx, _SUB)
    return (2**k) * (1 + (j + 1) / _SUB) / 1e6
