"""Phasing and prephasing: the model, its estimation from the data, and its correction.

In each cycle a fraction ``p`` (phasing) of a cluster's molecules fails to incorporate and a
fraction ``q`` (prephasing) incorporates two bases, so the molecules spread over template
positions and the signal of cycle ``c`` mixes the dyes of neighbouring positions:
``I = P @ X`` with ``P`` the (cycles x positions) matrix of :func:`phasing_matrix` and ``X``
the one-hot template. Correction applies the inverse of ``P`` truncated to a window of ``lag``
future cycles, so the corrected value of cycle ``c`` is final once cycle ``c + lag`` is in.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from kernels.backend import get_array_module

__all__ = [
    "correct_phasing",
    "estimate_phasing",
    "WINDOW_MARGIN",
    "PhasingBand",
    "phasing_inverse_row",
    "phasing_inverse_rows",
    "phasing_inverse_window",
    "phasing_matrix",
]


def phasing_matrix(
    n_cycles: int, phasing: float, prephasing: float, n_positions: int | None = None
) -> np.ndarray:
    """Fraction of a cluster's molecules emitting template position ``j`` at cycle ``c``.

    Each cycle a molecule fails to incorporate with probability ``phasing``, incorporates two
    bases with probability ``prephasing`` and one otherwise; it emits the dye of the last base
    it incorporated. Returns ``P`` of shape (n_cycles, n_positions) (default
    ``n_positions = n_cycles``), ``P[c, j]`` for 0-based cycle ``c`` and template position
    ``j``, so the (crosstalk-free, decay-free) signal is ``P @ onehot(template)``.
    """
    if n_positions is None:
        n_positions = n_cycles
    p, q = float(phasing), float(prephasing)
    if not (0 <= p and 0 <= q and p + q < 1):
        raise ValueError(f"phasing={p}, prephasing={q} invalid: need p, q >= 0 and p + q < 1")
    out = np.empty((n_cycles, n_positions))
    for c, state in enumerate(_states(n_cycles, p, q, n_positions)):
        out[c] = state[1 : n_positions + 1]
    return out


def _states(n_cycles: int, p: float, q: float, n_positions: int):
    """The molecules' length distribution after each cycle (lengths 0..n_positions, +2 overflow)."""
    state = np.zeros(n_positions + 3)
    state[0] = 1.0
    for _ in range(n_cycles):
        new = p * state
        new[1:] += (1.0 - p - q) * state[:-1]
        new[2:] += q * state[:-2]
        state = new
        yield state


@lru_cache(maxsize=64)
def _inverse_rows(n_cycles: int, p: float, q: float, lag: int) -> np.ndarray:
    w = np.zeros((n_cycles, n_cycles))
    for c in range(n_cycles):
        m = n_cycles if lag < 0 else min(n_cycles, c + lag + 1)
        w[c, :m] = _inverse(m, p, q)[c]
    w.setflags(write=False)
    return w


@lru_cache(maxsize=64)
def _inverse(m: int, p: float, q: float) -> np.ndarray:
    inv = np.linalg.inv(phasing_matrix(m, p, q))
    inv.setflags(write=False)
    return inv


#: cycles before the first weight a streaming caller uses that still enter its block of P:
#: the molecules lagging that far behind carry about (c p)^64 / 64! of cycle c's signal
#: (1e-28 at cycle 900 with p = 0.01), far below float32
WINDOW_MARGIN = 64


def phasing_inverse_window(
    cycle: int, n_known: int, lo: int, phasing: float, prephasing: float, band: PhasingBand | None = None
) -> np.ndarray:
    """The weights of cycles ``lo .. n_known - 1`` in the phasing-corrected signal of
    ``cycle``: row ``cycle`` of the inverse of ``P`` truncated to the first ``n_known``
    cycles, from column ``lo`` on, as :func:`phasing_inverse_row` gives them.

    Its memory and time are bounded by the window, not by the run: the inverse is taken of
    the block of ``P`` from ``WINDOW_MARGIN`` cycles before ``lo`` (exactly the whole ``P`` while
    ``lo <= WINDOW_MARGIN``). A full inverse per cycle is ``n_known^3`` work and, cached per
    (cycle, tile), gigabytes over a long run. A streaming caller passes its
    :class:`PhasingBand` (of these ``phasing``, ``prephasing``), which has the block's rows at
    hand; without one a band is built for the call (work proportional to ``n_known``).
    """
    if not 0 <= lo <= cycle < n_known:
        raise ValueError(f"need 0 <= lo <= cycle < n_known (lo={lo}, cycle={cycle}, n_known={n_known})")
    a = max(0, lo - WINDOW_MARGIN)
    if a == 0:
        return _inverse(int(n_known), float(phasing), float(prephasing))[cycle, lo:]
    if band is None:
        band = PhasingBand(phasing, prephasing, width=n_known - a, keep=n_known - a + 1)
    elif (band.phasing, band.prephasing) != (float(phasing), float(prephasing)):
        raise ValueError(
            f"the band is of phasing={band.phasing}, prephasing={band.prephasing}, not {phasing}, {prephasing}"
        )
    return np.linalg.inv(band.block(a, int(n_known)))[cycle - a, lo - a :]


class PhasingBand:
    """The rows of ``P`` near its diagonal, cycle by cycle, in memory bounded by the band.

    Row ``c`` holds ``P[c, j]`` for ``|j - c| <= width`` (what a streaming caller reads: the
    phasing history behind a cycle, the lag ahead, the block of :func:`phasing_inverse_window`).
    The molecules' length distribution is advanced one cycle at a time over the lengths
    within ``width + WINDOW_MARGIN`` of the cycle only: the molecules lagging or leading by
    more carry less than float64 shows next to the band (see ``WINDOW_MARGIN``), so the rows
    equal :func:`phasing_matrix`'s to rounding (``tests/kernels/test_phasing.py``). The
    ``keep`` newest rows are kept; asking for an older one computes the band again from
    cycle 0, which a caller's forward passes over a run do at most once each.

    Unlike ``phasing_matrix(cycles, ...)`` (``cycles^2`` float64: 8 MB a tile at 1000 cycles,
    what made the base caller grow through a soak) it is the same size at every cycle.
    """

    __slots__ = ("phasing", "prephasing", "width", "keep", "_reach", "_n", "_lo", "_state", "_rows")

    def __init__(self, phasing: float, prephasing: float, *, width: int, keep: int) -> None:
        p, q = float(phasing), float(prephasing)
        if not (0 <= p and 0 <= q and p + q < 1):
            raise ValueError(f"phasing={p}, prephasing={q} invalid: need p, q >= 0 and p + q < 1")
        if width < 0 or keep < 1:
            raise ValueError(f"width={width}, keep={keep} invalid: need width >= 0 and keep >= 1")
        self.phasing, self.prephasing = p, q
        self.width, self.keep = int(width), int(keep)
        self._reach = self.width + WINDOW_MARGIN
        self._rewind()

    @property
    def nbytes(self) -> int:
        """Bytes held: the distribution and the kept rows (bounded by width and keep)."""
        return self._state.nbytes + sum(v.nbytes for _, v in self._rows.values())

    def _rewind(self) -> None:
        self._n = 0  # cycles taken: _state is the length distribution after _n cycles
        self._lo = 0  # the length _state[0] stands for
        self._state = np.zeros(self._reach + 1)
        self._state[0] = 1.0
        self._rows: dict[int, tuple[int, np.ndarray]] = {}

    def _step(self) -> None:
        """One more cycle: the arithmetic of :func:`phasing_matrix`, on the band's lengths."""
        p, q = self.phasing, self.prephasing
        s = self._state
        ext = np.zeros(len(s) + 3)
        ext[2 : 2 + len(s)] = s
        new = p * ext[2:]
        new += (1.0 - p - q) * ext[1:-1]
        new += q * ext[:-2]
        self._n += 1
        drop = max(0, self._n - self._reach) - self._lo  # the lengths now further behind than the reach
        self._state, self._lo = new[drop:], self._lo + drop
        c = self._n - 1  # the row of P this distribution is: P[c, j] = state[length j + 1]
        j0 = max(0, c - self.width)
        values = self._state[j0 + 1 - self._lo : c + self.width + 2 - self._lo].copy()
        values.flags.writeable = False
        self._rows[c] = (j0, values)
        self._rows.pop(c - self.keep, None)

    def row(self, c: int, j0: int, j1: int) -> np.ndarray:
        """``P[c, j0:j1]`` (float64, read-only); the columns must lie within the band."""
        if c < 0 or j0 < max(0, c - self.width) or j1 > c + self.width + 1 or j1 < j0:
            raise ValueError(f"P[{c}, {j0}:{j1}] is outside the band of width {self.width}")
        if c not in self._rows:
            if c < self._n:
                self._rewind()
            while self._n <= c:
                self._step()
        start, values = self._rows[c]
        return values[j0 - start : j1 - start]

    def block(self, a: int, m: int) -> np.ndarray:
        """``phasing_matrix(m, ...)[a:m, a:m]`` (needs ``m - 1 - a <= width``)."""
        if not 0 <= a < m or m - 1 - a > self.width:
            raise ValueError(f"the block P[{a}:{m}, {a}:{m}] is empty or wider than the band ({self.width})")
        return np.stack([self.row(r, a, m) for r in range(a, m)])


def phasing_inverse_row(cycle: int, n_known: int, phasing: float, prephasing: float) -> np.ndarray:
    """Row ``cycle`` (0-based) of the inverse of ``P`` truncated to the first ``n_known`` cycles.

    The weights (length ``n_known``) that turn crosstalk-corrected intensities of cycles
    ``0 .. n_known - 1`` into the phasing-corrected signal of ``cycle``; the streaming caller
    uses ``n_known = cycle + lag + 1`` (or the run length at the end of a run).
    """
    if not 0 <= cycle < n_known:
        raise ValueError(f"cycle={cycle} must lie in 0..n_known-1 (n_known={n_known})")
    return _inverse(int(n_known), float(phasing), float(prephasing))[cycle]


def phasing_inverse_rows(n_cycles: int, phasing: float, prephasing: float, lag: int | None) -> np.ndarray:
    """Correction weights ``W`` (n_cycles, n_cycles), host float64: ``X[c] = sum_j W[c, j] I[j]``.

    Row ``c`` is row ``c`` of the inverse of ``P`` truncated to the first ``c + lag + 1``
    cycles (all cycles when ``lag`` is None), so it uses no cycle later than ``c + lag``:
    what makes streaming calls final after ``lag`` cycles. Row ``c`` does not depend on
    ``n_cycles`` beyond ``c + lag``, so a run's length need not be known in advance.
    """
    if lag is not None and lag < 0:
        raise ValueError(f"lag={lag} invalid: allowed None or an int >= 0")
    return _inverse_rows(int(n_cycles), float(phasing), float(prephasing), -1 if lag is None else int(lag))


def correct_phasing(corrected, phasing: float, prephasing: float, lag: int | None = None, out=None):
    """Undo phasing on crosstalk-corrected intensities ``(n_clusters, n_cycles, 4)``.

    Returns ``W @ corrected`` along the cycle axis (see :func:`phasing_inverse_rows`), an
    array of the input's module and dtype.
    """
    xp = get_array_module(corrected)
    if corrected.ndim != 3 or corrected.shape[2] != 4:
        raise ValueError(f"expected (n_clusters, n_cycles, 4), got shape {corrected.shape}")
    w = xp.asarray(phasing_inverse_rows(corrected.shape[1], phasing, prephasing, lag), dtype=corrected.dtype)
    if out is None:
        return xp.matmul(w, corrected)
    return xp.matmul(w, corrected, out=out)


def _ratio_series(y, xp, behind: bool) -> tuple[np.ndarray, np.ndarray]:
    # For each cycle c, sum over clusters of the corrected intensity in the channel of the
    # base called one cycle earlier (behind) or later (ahead), over the clusters where that
    # base differs from the calls at c and on the other side, divided by the sum of the
    # called channel: an estimate of the lagging (leading) fraction relative to in-phase.
    calls = xp.argmax(y, axis=2)
    n, t, _ = y.shape
    cyc, ratios = [], []
    for c in range(1, t - 1):
        other = calls[:, c - 1] if behind else calls[:, c + 1]
        third = calls[:, c + 1] if behind else calls[:, c - 1]
        sel = (other != calls[:, c]) & (other != third)
        if int(xp.count_nonzero(sel)) < 50:
            continue
        yc = y[:, c, :][sel]
        num = xp.sum(xp.take_along_axis(yc, other[sel][:, None], axis=1))
        den = xp.sum(xp.take_along_axis(yc, calls[:, c][sel][:, None], axis=1))
        if float(den) <= 0:
            continue
        cyc.append(c + 1)  # cycles completed = 1-based cycle number
        ratios.append(float(num) / float(den))
    return np.asarray(cyc, dtype=float), np.asarray(ratios)


def estimate_phasing(corrected) -> tuple[float, float]:
    """Estimate ``(phasing, prephasing)`` from crosstalk-corrected intensities (N, cycles, 4).

    After ``c`` cycles the lagging-by-one fraction relative to the in-phase one is
    ``c * p / (1 - p - q)`` and the leading-by-one fraction ``c * q / (1 - p - q)``. The
    ratios measured per cycle (see ``_ratio_series``) are fitted with a line in ``c``; the
    intercept absorbs any residual crosstalk, the slopes give ``p`` and ``q``. Needs at least
    about 10 cycles; the first 25 are plenty.
    """
    xp = get_array_module(corrected)
    if corrected.ndim != 3 or corrected.shape[2] != 4:
        raise ValueError(f"expected (n_clusters, n_cycles, 4), got shape {corrected.shape}")
    if corrected.shape[1] < 6:
        raise ValueError(f"estimate_phasing needs at least 6 cycles, got {corrected.shape[1]}")
    slopes = []
    for behind in (True, False):
        c, r = _ratio_series(corrected, xp, behind)
        if len(c) < 3:
            slopes.append(0.0)
            continue
        a = np.column_stack((np.ones_like(c), c))
        (_, slope), *_ = np.linalg.lstsq(a, r, rcond=None)
        slopes.append(max(0.0, float(slope)))
    beta, gamma = slopes
    return beta / (1.0 + beta + gamma), gamma / (1.0 + beta + gamma)
