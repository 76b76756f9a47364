"""Base calling: per-cluster intensities in, base calls with Phred qualities out, streaming.

Input is what extraction produces: float32 intensities of shape (n_clusters, n_cycles, 4)
(channels A, C, G, T), or one cycle (n_clusters, 4) at a time for :class:`StreamingBasecaller`.
A non-finite intensity (NaN: e.g. a cluster drifted out of the frame that cycle) is read as
no signal, and that cluster's call in that cycle gets quality 0, a no-call.
Everything the caller needs is estimated from the data, no ground truth:

1. The model (:func:`estimate_model`), from the first ``estimation_cycles`` (default 25)
   cycles: dye crosstalk (:func:`kernels.crosstalk.estimate_crosstalk`), then phasing and
   prephasing (:func:`kernels.phasing.estimate_phasing`), then crosstalk again on
   phasing-corrected intensities, then phasing again.
2. Pass 1, per cycle ``c``: crosstalk correction, then phasing correction with the inverse of
   the phasing matrix truncated ``lag`` cycles ahead (:func:`kernels.phasing.phasing_inverse_window`),
   argmax: provisional calls, final once cycle ``c + lag`` is in.
3. Per-cluster statistics from the pass-1 signal of the estimation window: brightness ``A``
   (median called-channel signal), noise ``sigma`` (rms of the other channels); per cycle the
   decay ``d_c`` (median of signal / A over clusters).
4. Pass 2 (decision feedback), per position ``j``: subtract the light of every *other*
   position predicted from the pass-1 calls, ``A * d_c * P[c, j']``, from cycles
   ``j - window .. j + window``, and combine what is left with a matched filter
   (weights ``P[c, j] d_c``). Unlike inverting ``P``, this uses the lagging and leading
   molecules' light of base ``j`` too and does not amplify the noise; it removes most of the
   errors pass 1 leaves at late cycles. Calls are the argmax of the result.
5. Quality: predictor = (best - second best) / expected noise of that estimate (an SNR
   margin), looked up with the cycle in the shipped table (:mod:`kernels.quality`).
6. Pass filter: Illumina's chastity, brightest / (brightest + second brightest) of the
   pass-2 signal (negative values clipped to 0), >= 0.6 in the first 25 cycles with at most
   one failure (a no-call counts as a failure).

Bounded lag: the call for 1-based cycle ``c`` is final once cycle ``c + max_lag`` has arrived,
``max_lag = lag + window + 2`` (default 2 + 2 + 2 = 6), except at the start of a run: the
model and statistics need the first ``estimation_cycles`` cycles, so the first calls (cycles
1 .. estimation_cycles - max_lag) all come out when cycle ``estimation_cycles`` arrives. At the
end of a run, :meth:`StreamingBasecaller.finish` finalizes the rest.

:func:`call_bases` (batch) runs the same engine over all cycles, so a streaming run gives the
same calls, qualities and pass-filter flags bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.backend import get_array_module
from kernels.crosstalk import correct_crosstalk, estimate_crosstalk
from kernels.phasing import WINDOW_MARGIN, PhasingBand, correct_phasing, estimate_phasing, phasing_inverse_window
from kernels.quality import QualityTable, default_quality_table

__all__ = [
    "BasecallModel",
    "BasecallResult",
    "CycleCalls",
    "StreamingBasecaller",
    "call_argmax",
    "call_bases",
    "chastity",
    "estimate_model",
    "pass_filter",
]

DEFAULT_LAG = 2  # pass-1 phasing window: cycles ahead used by the truncated inverse
DEFAULT_WINDOW = 2  # pass-2 matched filter half-width in cycles
ESTIMATION_CYCLES = 25
CHASTITY_CYCLES = 25
CHASTITY_THRESHOLD = 0.6
_ROW_BUFFERS = ("_raw", "_y", "_x1", "_oh", "_pred", "_invalid")  # the work buffers (rows of cycles)
_AHEAD = 2  # positions ahead of a cycle included in its predicted signal (prephasing)
_MIN_ESTIMATION_CYCLES = 6
# Cycles further back than this carry weights below 1e-30 of the current one at the
# assay's phasing (1e-7 at 2%/1%), far below float32 precision: they are skipped.
_HISTORY = 32
_OUTLIER_FACTOR = 20.0  # clusters brighter than this x the median are left out of estimation


@dataclass(frozen=True)
class BasecallModel:
    """The SBS model a caller corrects for: crosstalk ``M`` (observed = M @ dye), phasing, prephasing."""

    crosstalk: tuple[tuple[float, ...], ...]
    phasing: float
    prephasing: float

    def __post_init__(self) -> None:
        m = np.asarray(self.crosstalk, dtype=float)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise ValueError(f"BasecallModel.crosstalk must be a finite 4x4 matrix, got {self.crosstalk!r}")
        for key in ("phasing", "prephasing"):
            v = getattr(self, key)
            if not 0.0 <= v < 0.5:
                raise ValueError(f"BasecallModel.{key}={v!r} is invalid: allowed 0 <= value < 0.5")

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.crosstalk, dtype=np.float64)


def _weighted_sum(xp, w, stack):
    """sum_j w[j] * stack[j] over the first axis of (m, N, 4), as float32 (N, 4).

    ``einsum`` rather than a BLAS matrix-vector product: the work is memory-bound, and a
    multithreaded BLAS call spinning on a core shared with the other stages costs up to 5x.
    """
    return xp.einsum("j,jnk->nk", w, stack)


def _to_model(m: np.ndarray, p: float, q: float) -> BasecallModel:
    return BasecallModel(tuple(tuple(float(v) for v in row) for row in m), float(p), float(q))


def estimate_model(intensities) -> BasecallModel:
    """Estimate crosstalk, phasing and prephasing from intensities (N, cycles, 4), no truth.

    Use early cycles (the callers use the first 25): crosstalk from the first 10, phasing
    from crosstalk-corrected intensities, then both again after removing phasing. Clusters
    with non-finite values or a peak above 20 x the median peak are left out.
    """
    if intensities.ndim != 3 or intensities.shape[2] != 4:
        raise ValueError(f"expected (n_clusters, n_cycles, 4), got shape {intensities.shape}")
    xp = get_array_module(intensities)
    # Estimate on well-behaved clusters only: an extraction that runs off the frame can
    # return wild values, and sums of ratios would follow them.
    peak = xp.max(xp.abs(intensities), axis=(1, 2))
    finite = xp.isfinite(peak)
    if bool(xp.any(finite)):
        typical = float(xp.median(peak[finite]))
        sane = finite & (peak <= _OUTLIER_FACTOR * typical)
        if not bool(xp.all(sane)):
            intensities = intensities[sane]
    n, t, _ = intensities.shape
    if n * min(t, 10) < 100:
        return _to_model(np.eye(4), 0.0, 0.0)
    m = estimate_crosstalk(intensities[:, : min(t, 10)])
    if t < _MIN_ESTIMATION_CYCLES:
        return _to_model(m, 0.0, 0.0)
    p, q = estimate_phasing(correct_crosstalk(intensities, m))
    dephased = correct_phasing(intensities.astype(np.float64), p, q)
    m = estimate_crosstalk(dephased)
    p, q = estimate_phasing(correct_crosstalk(intensities, m))
    return _to_model(m, p, q)


def chastity(signal):
    """Illumina chastity of signals (..., 4): brightest / (brightest + second), values clipped at 0.

    1 for a pure signal, 0.5 for two equal channels; 0 where all channels are <= 0.
    """
    xp = get_array_module(signal)
    s = xp.sort(xp.maximum(signal, 0), axis=-1)
    den = s[..., 3] + s[..., 2]
    return xp.where(den > 0, s[..., 3] / xp.where(den > 0, den, 1), 0)


def pass_filter(signal, cycles: int = CHASTITY_CYCLES, threshold: float = CHASTITY_THRESHOLD, max_failures: int = 1):
    """Chastity filter on corrected signal (N, n_cycles, 4): True for clusters whose chastity is
    >= ``threshold`` in all but at most ``max_failures`` of the first ``cycles`` cycles."""
    xp = get_array_module(signal)
    ch = chastity(signal[:, :cycles])
    return xp.sum(ch < threshold, axis=1) <= max_failures


def call_argmax(intensities, crosstalk):
    """The reference caller: crosstalk-corrected argmax, no phasing correction. uint8 (N, C)."""
    xp = get_array_module(intensities)
    return xp.argmax(correct_crosstalk(intensities, crosstalk), axis=-1).astype(xp.uint8)


@dataclass(frozen=True)
class CycleCalls:
    """The final calls of one cycle (1-based) for every cluster."""

    cycle: int
    bases: object  # (N,) uint8, A, C, G, T = 0..3
    qualities: object  # (N,) uint8 Phred; 0 = no-call (no valid intensity this cycle)
    predictor: object  # (N,) float32 SNR margin the quality was looked up with
    signal: object  # (N, 4) float32 corrected signal (1 = a cluster's in-phase brightness)

    def called_bases(self, no_call: int = 4):
        """``bases`` with every no-call (quality 0) as ``no_call`` (4: N in a run folder, BCL
        byte 0), never as the argmax base at the lowest quality a format keeps. One rule for
        the live basecall stage and a reprocess, so both write the same BCLs."""
        xp = get_array_module(self.bases)
        return xp.where(xp.asarray(self.qualities) == 0, xp.uint8(no_call), xp.asarray(self.bases, dtype=xp.uint8)).astype(xp.uint8)


@dataclass(frozen=True)
class BasecallResult:
    """Batch result: calls, qualities, predictors, corrected signal, pass filter and model."""

    bases: object  # (N, C) uint8
    qualities: object  # (N, C) uint8
    predictor: object  # (N, C) float32
    signal: object  # (N, C, 4) float32
    pass_filter: object  # (N,) bool
    model: BasecallModel
    max_lag: int


class StreamingBasecaller:
    """Calls bases cycle by cycle with a bounded lag (see the module docstring).

    >>> caller = StreamingBasecaller(n_clusters)
    >>> for c in range(n_cycles):
    ...     for calls in caller.push(intensities[:, c]):   # (N, 4) per cycle
    ...         write(calls.cycle, calls.bases, calls.qualities)
    >>> for calls in caller.finish(): ...
    >>> caller.pass_filter   # (N,) bool once the first 25 cycles are final

    ``model``: a :class:`BasecallModel` to use instead of estimating one (the per-cluster
    statistics still come from the first ``estimation_cycles``). ``quality_table``: the
    table to score with, ``"default"`` for the shipped one, None for no scores (zeros; used
    to train a table). ``expected_cycles``: the run length if known, to size the buffers once.
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        model: BasecallModel | None = None,
        lag: int = DEFAULT_LAG,
        window: int = DEFAULT_WINDOW,
        estimation_cycles: int = ESTIMATION_CYCLES,
        quality_table: QualityTable | str | None = "default",
        expected_cycles: int | None = None,
    ) -> None:
        if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
            raise ValueError(f"n_clusters={n_clusters!r} is invalid: allowed an int >= 1")
        if not isinstance(lag, (int, np.integer)) or lag < 0:
            raise ValueError(f"lag={lag!r} is invalid: allowed an int >= 0")
        if not isinstance(window, (int, np.integer)) or window < 0:
            raise ValueError(f"window={window!r} is invalid: allowed an int >= 0")
        if not isinstance(estimation_cycles, (int, np.integer)) or estimation_cycles < _MIN_ESTIMATION_CYCLES:
            raise ValueError(
                f"estimation_cycles={estimation_cycles!r} is invalid: allowed an int >= {_MIN_ESTIMATION_CYCLES}"
            )
        if quality_table == "default":
            quality_table = default_quality_table()
        elif quality_table is not None and not isinstance(quality_table, QualityTable):
            raise ValueError("quality_table must be a QualityTable, 'default' or None")
        self.n_clusters = int(n_clusters)
        self.lag = int(lag)
        self.window = int(window)
        self.estimation_cycles = int(estimation_cycles)
        self.quality_table = quality_table
        self.model = model
        self.max_lag = self.lag + self.window + _AHEAD
        self._xp = None
        self._cap = 0
        # The buffers (5 x rows x clusters x 4 float32) hold a window of cycles, not the run:
        # row r is cycle _base + r, and the cycles no later step reads any more are dropped
        # (the rows shifted down) when the window is full. So memory, and a checkpoint of the
        # caller, are bounded by the phasing history and the lags, whatever the run's length.
        self._base = 0
        self._window_rows = max(self.estimation_cycles + self.lag, _HISTORY + self.lag + 2 * self.window + 2 * _AHEAD + 1) + 8
        self._expected = int(expected_cycles) if expected_cycles else 0
        self._n_in = 0  # cycles received
        self._n1 = 0  # cycles through pass 1
        self._n2 = 0  # positions finalized (pass 2)
        self._n_y = 0  # cycles crosstalk-corrected
        self._n_pred = 0  # cycles whose predicted signal is computed
        self._n_decay = 0
        self._stats = False
        self._finished = False
        self._band = None  # rows of the phasing matrix near the diagonal (see _phasing_band)
        self._chastity_fail = None
        self._pass_filter = None

    # -- public ------------------------------------------------------------------------
    @property
    def cycles_received(self) -> int:
        return self._n_in

    @property
    def cycles_final(self) -> int:
        return self._n2

    @property
    def pass_filter(self):
        """(N,) bool chastity pass filter, None until the first 25 cycles are final."""
        return self._pass_filter

    def push(self, intensities) -> list[CycleCalls]:
        """Add one cycle (N, 4) or several consecutive cycles (N, k, 4); returns the newly final calls."""
        if self._finished:
            raise RuntimeError("push after finish(): start a new StreamingBasecaller for a new run")
        if intensities.ndim == 2:
            intensities = intensities[:, None, :]
        if intensities.ndim != 3 or intensities.shape[0] != self.n_clusters or intensities.shape[2] != 4:
            raise ValueError(
                f"expected ({self.n_clusters}, 4) or ({self.n_clusters}, k, 4) intensities, got {intensities.shape}"
            )
        xp = get_array_module(intensities)
        if self._xp is None:
            self._xp = xp
        elif xp is not self._xp:
            raise ValueError("all cycles must come from the same array module (NumPy or CuPy)")
        k = intensities.shape[1]
        self._grow(self._n_in + k)
        block = xp.moveaxis(intensities, 1, 0)
        invalid = ~xp.all(xp.isfinite(block), axis=2)  # (k, N)
        r = self._n_in - self._base
        self._invalid[r : r + k] = invalid
        self._raw[r : r + k] = xp.where(invalid[:, :, None], 0, block)
        self._n_in += k
        return self._advance(final=False)

    def finish(self) -> list[CycleCalls]:
        """End of run: finalize every remaining cycle and return its calls."""
        if self._finished:
            return []
        self._finished = True
        if self._n_in == 0:
            return []
        return self._advance(final=True)

    # -- engine ------------------------------------------------------------------------
    def live_rows(self) -> dict[str, tuple[int, int]]:
        """Per work buffer, the cycles ``[lo, hi)`` whose rows a later step may still read.

        Every other row is overwritten before it is read (pass 1, the predicted signal and
        pass 2 write a cycle's row in full before any step reads it), so a checkpoint of the
        caller keeps these rows only. In steady state: 34 rows of crosstalk-corrected signal
        (the phasing history behind pass 1 and the lag ahead), 34 rows of provisional calls,
        4 of predicted signal, 6 of the no-call mask, and no raw intensities or pass-1
        signal (read only until the model and the per-cluster statistics exist)."""
        b = self._base

        def span(lo: int, hi: int) -> tuple[int, int]:
            lo = max(lo, b)
            return lo, max(lo, hi)

        return {
            "_raw": span(self._n_y, self._n_in),  # read by the crosstalk step (and the model estimate)
            "_y": span(min(self._n1 - _HISTORY, self._n2 - self.window), self._n_y),  # pass 1, pass 2
            "_x1": span(self._n_decay if self._stats else 0, self._n1),  # statistics, decay
            "_oh": span(min(self._n_pred - _HISTORY, self._n2), self._n1),  # predicted signal, pass 2
            "_pred": span(self._n2 - self.window, self._n_pred),  # pass 2
            "_invalid": span(self._n2, self._n_in),  # pass 2
        }

    def __getstate__(self) -> dict:
        """The caller's state, compact: of each work buffer only its :meth:`live_rows`, the
        provisional calls as their channel index (uint8: the rows are one-hot). The phasing
        matrix (``cycles x cycles``) is rebuilt on demand, the array module is kept by name.
        Unpickling allocates the buffers again and puts the rows back: the caller goes on
        bit for bit. The size is bounded by the window (``docs/kernels-basecall.md``), not
        by the run's length."""
        state = self.state_without_rows()
        state["_live"] = self.rows_since({})
        return state

    def state_without_rows(self) -> dict:
        """The pickled state less the work buffers' rows: ``_live`` maps each buffer to its live
        span ``(lo, hi)`` only. With the rows of those spans (:meth:`rows_since`, kept in a
        log by whoever checkpoints the caller) it is the whole state: see :meth:`from_rows`."""
        state = dict(self.__dict__)
        state["_band"] = None
        state["_xp"] = None if self._xp is None else self._xp.__name__
        for name in _ROW_BUFFERS:
            state.pop(name, None)
        state["_live"] = dict(self.live_rows()) if self._cap else {}
        return state

    def rows_since(self, marks: dict[str, int]) -> dict[str, tuple[int, int, object]]:
        """Per work buffer, its live rows of cycles ``marks[name]`` (or the start of its live
        span) and later: ``(first cycle, end cycle, rows)``, host or device arrays of the
        caller's module (the provisional calls as uint8 channel indices); buffers with none
        left out. A live row is written once and never changed, and a buffer's live span only
        moves forward, so appending these to a log after every push keeps every live row in
        the log: a checkpoint need not carry them (the basecall stage's row logs)."""
        out = {}
        if not self._cap:
            return out
        xp, b = self._xp, self._base
        for name, (lo, hi) in self.live_rows().items():
            start = max(lo, marks.get(name, lo))
            if start >= hi:
                continue
            part = getattr(self, name)[start - b : hi - b]
            if name == "_oh":
                part = xp.argmax(part, axis=2).astype(xp.uint8)
            out[name] = (start, hi, xp.ascontiguousarray(part))
        return out

    @classmethod
    def from_rows(cls, state: dict, rows: dict[str, tuple[int, int, object]]) -> "StreamingBasecaller":
        """The caller :meth:`state_without_rows` describes, its buffers filled from ``rows``
        (per buffer: ``(lo, hi, rows of cycles lo .. hi - 1)`` for exactly its live span).
        ValueError when a span's rows are not all there."""
        state = dict(state)
        spans = state.pop("_live", {})
        live = {}
        for name, (lo, hi) in spans.items():
            if hi <= lo:
                continue  # nothing live: an empty buffer
            have = rows.get(name)
            if have is None or have[0] != lo or have[1] != hi or len(have[2]) != hi - lo:
                got = None if have is None else have[:2]
                raise ValueError(f"the caller's {name} rows of cycles {lo}..{hi - 1} are not all in the log (it has {got})")
            live[name] = have
        state["_live"] = live
        caller = cls.__new__(cls)
        caller.__setstate__(state)
        return caller

    def __setstate__(self, state: dict) -> None:
        import importlib

        state = dict(state)
        whole = "_live" not in state  # a pickle of whole buffers (before live rows): kept as is
        rows = state.pop("_live", {})
        if isinstance(state["_xp"], str):
            state["_xp"] = importlib.import_module(state["_xp"])
        self.__dict__.update(state)
        if whole or not self._cap:
            return
        xp, b, n, cap = self._xp, self._base, self.n_clusters, self._cap
        for name in _ROW_BUFFERS:
            lo, hi, part = rows.get(name, (b, b, None))  # a span with no row: an empty buffer
            if name == "_invalid":
                buf = xp.zeros((cap, n), dtype=bool)
                if hi > lo:
                    buf[lo - b : hi - b] = part
            else:
                buf = xp.zeros((cap, n, 4), dtype=xp.float32)
                if hi <= lo:
                    pass
                elif name == "_oh":
                    r = xp.arange(hi - lo)[:, None]
                    buf[lo - b + r, xp.arange(n)[None, :], part.astype(xp.int64)] = 1
                else:
                    buf[lo - b : hi - b] = part
            setattr(self, name, buf)

    @property
    def buffer_cycles(self) -> int:
        """Cycles of buffer allocated (bounded: the window of cycles still needed)."""
        return self._cap

    def _oldest_needed(self) -> int:
        """The oldest cycle any later step reads: everything from 0 until the model and the
        per-cluster statistics exist; then the phasing history behind pass 1 and the predicted
        signal, and the pass-2 window behind the next final position."""
        if self.model is None or not self._stats:
            return 0
        return max(0, min(self._n1 - _HISTORY, self._n_pred - _HISTORY, self._n2 - self.window, self._n_decay, self._n_y))

    def _grow(self, need: int) -> None:
        """Room for cycles up to ``need`` (exclusive): drop the cycles no longer needed, and
        allocate more rows only when the window itself is larger than the buffers."""
        if need - self._base <= self._cap:
            return
        xp = self._xp
        names = ("_raw", "_y", "_x1", "_oh", "_pred")
        old = self._oldest_needed()
        if old > self._base and self._cap:
            shift, used = old - self._base, self._n_in - self._base
            for name in (*names, "_invalid", "_decay"):
                buf = getattr(self, name)
                buf[: used - shift] = buf[shift:used].copy()
            self._base = old
            if need - self._base <= self._cap:
                return
        rows = need - self._base
        bound = self._window_rows
        if self._expected:
            bound = min(bound, self._expected)
        cap = max(rows, bound) if not self._cap else max(rows, self._cap * 3 // 2)
        n = self.n_clusters
        for name in names:
            new = xp.zeros((cap, n, 4), dtype=xp.float32)
            if self._cap:
                new[: self._cap] = getattr(self, name)
            setattr(self, name, new)
        inv = xp.zeros((cap, n), dtype=bool)
        if self._cap:
            inv[: self._cap] = self._invalid
        self._invalid = inv
        d = np.zeros(cap)
        if self._cap:
            d[: self._cap] = self._decay
        self._decay = d
        self._cap = cap

    def _phasing_band(self) -> PhasingBand:
        """The rows of the model's phasing matrix the steps read, near the diagonal: pass 1's
        block (the history, the margin, the lag), the predicted signal's history and
        lookahead, pass 2's window. Not checkpointed: rebuilt on demand (from cycle 0, once)
        after a restore, so a restored caller reads the same numbers."""
        if self._band is None:
            width = _HISTORY + WINDOW_MARGIN + max(self.lag, self.window, _AHEAD) + 1
            self._band = PhasingBand(self.model.phasing, self.model.prephasing, width=width, keep=width + 2 * self.window + 2 * _AHEAD + 8)
        return self._band

    def _advance(self, final: bool) -> list[CycleCalls]:
        xp = self._xp
        n_in = self._n_in
        est = self.estimation_cycles
        if self.model is None:
            if n_in < est and not final:
                return []
            t = min(n_in, est)
            self.model = estimate_model(xp.moveaxis(self._raw[:t], 0, 1))  # _base is 0 until a model exists
        b = self._base  # cycle c is row c - b of every buffer
        # Crosstalk correction of every cycle received.
        if self._n_y < n_in:
            self._y[self._n_y - b : n_in - b] = correct_crosstalk(self._raw[self._n_y - b : n_in - b], self.model.matrix)
            self._n_y = n_in
        # Pass 1: phasing-corrected signal with the truncated inverse, provisional calls.
        n1 = n_in if final else max(0, n_in - self.lag)
        p, q = self.model.phasing, self.model.prephasing
        n = self.n_clusters
        band = self._phasing_band()
        for c in range(self._n1, n1):
            m = min(n_in, c + self.lag + 1)
            lo = max(0, c - _HISTORY)
            w = xp.asarray(phasing_inverse_window(c, m, lo, p, q, band), dtype=xp.float32)  # bounded by the window
            x = _weighted_sum(xp, w, self._y[lo - b : m - b])
            self._x1[c - b] = x
            calls = xp.argmax(x, axis=1)
            self._oh[c - b] = 0
            self._oh[c - b, xp.arange(n), calls] = 1
        self._n1 = n1
        # Per-cluster statistics from the estimation window of pass 1.
        if not self._stats:
            s = n1 if final else est - self.lag
            if n1 < max(s, 1):
                return []
            self._cluster_stats(max(s, 1))
        for c in range(self._n_decay, n1):
            self._decay[c - b] = self._cycle_decay(c)
        self._n_decay = n1
        # Predicted (unscaled) signal of each cycle from the pass-1 calls up to c + _AHEAD.
        n_pred = n1 if final else max(0, n1 - _AHEAD)
        for c in range(self._n_pred, n_pred):
            k = min(c + _AHEAD + 1, n1)
            lo = max(0, c - _HISTORY)
            w = xp.asarray(band.row(c, lo, k), dtype=xp.float32)
            self._pred[c - b] = _weighted_sum(xp, w, self._oh[lo - b : k - b])
        self._n_pred = n_pred
        # Pass 2: final calls for every position whose window is complete.
        n2 = n1 if final else max(0, n1 - self.window - _AHEAD)
        out = [self._final_call(j, n1) for j in range(self._n2, n2)]
        self._n2 = max(self._n2, n2)
        return out

    def _cluster_stats(self, s: int) -> None:
        xp = self._xp
        x = self._x1[:s]  # (s, N, 4); _base is 0 until the statistics exist
        top = xp.max(x, axis=2)
        a = xp.median(top, axis=0)
        floor = float(xp.median(a)) * 1e-3 if a.size else 1.0
        self._a = xp.maximum(a, max(floor, 1e-6)).astype(xp.float32)
        off = xp.sum(x * x, axis=2) - top * top  # energy of the three other channels
        sigma = xp.sqrt(xp.maximum(xp.mean(off, axis=0) / 3.0, 0))
        self._sigma = xp.maximum(sigma, xp.float32(1e-3) * self._a).astype(xp.float32)
        self._stats = True
        self._chastity_fail = xp.zeros(self.n_clusters, dtype=xp.int32)

    def _cycle_decay(self, c: int) -> float:
        xp = self._xp
        return float(xp.median(xp.max(self._x1[c - self._base], axis=1) / self._a))

    def _final_call(self, j: int, n_total: int) -> CycleCalls:
        xp = self._xp
        band = self._phasing_band()
        b = self._base
        lo, hi = max(0, j - self.window), min(n_total, j + self.window + 1)
        a = self._a[:, None]
        acc = xp.zeros((self.n_clusters, 4), dtype=xp.float32)
        wsum = 0.0
        for c in range(lo, hi):
            pcj = float(band.row(c, j, j + 1)[0])
            dc = float(self._decay[c - b])
            wc = pcj * dc
            # What is left of cycle c after removing every other position's predicted light.
            z = self._y[c - b] - a * xp.float32(dc) * (self._pred[c - b] - xp.float32(pcj) * self._oh[j - b])
            acc += xp.float32(wc) * z
            wsum += wc * wc
        wsum = max(wsum, 1e-12)
        sig = acc / (a * xp.float32(wsum))
        srt = xp.sort(sig, axis=1)
        pred = ((srt[:, 3] - srt[:, 2]) * a[:, 0] * xp.float32(np.sqrt(wsum)) / self._sigma).astype(xp.float32)
        bases = xp.argmax(sig, axis=1).astype(xp.uint8)
        if self.quality_table is None:
            qual = xp.zeros(self.n_clusters, dtype=xp.uint8)
        else:
            # Quality 0 marks a no-call: the cluster had no valid intensity in this cycle.
            qual = xp.where(self._invalid[j - b], 0, self.quality_table.lookup(pred, j + 1)).astype(xp.uint8)
        if j < CHASTITY_CYCLES:
            # A no-call (no valid intensity) counts as a chastity failure.
            fail = (chastity(sig) < CHASTITY_THRESHOLD) | self._invalid[j - b]
            self._chastity_fail += fail.astype(xp.int32)
            if j == min(CHASTITY_CYCLES, n_total) - 1:
                self._pass_filter = self._chastity_fail <= 1
        return CycleCalls(j + 1, bases, qual, pred, sig.astype(xp.float32))


def call_bases(
    intensities,
    *,
    model: BasecallModel | None = None,
    lag: int = DEFAULT_LAG,
    window: int = DEFAULT_WINDOW,
    estimation_cycles: int = ESTIMATION_CYCLES,
    quality_table: QualityTable | str | None = "default",
) -> BasecallResult:
    """Call every cycle of a run, intensities (N, n_cycles, 4): the streaming engine over all cycles."""
    if intensities.ndim != 3 or intensities.shape[2] != 4:
        raise ValueError(f"expected (n_clusters, n_cycles, 4) intensities, got shape {intensities.shape}")
    xp = get_array_module(intensities)
    caller = StreamingBasecaller(
        intensities.shape[0],
        model=model,
        lag=lag,
        window=window,
        estimation_cycles=estimation_cycles,
        quality_table=quality_table,
        expected_cycles=intensities.shape[1],
    )
    chunks = caller.push(intensities) + caller.finish()
    return BasecallResult(
        bases=xp.stack([ch.bases for ch in chunks], axis=1),
        qualities=xp.stack([ch.qualities for ch in chunks], axis=1),
        predictor=xp.stack([ch.predictor for ch in chunks], axis=1),
        signal=xp.stack([ch.signal for ch in chunks], axis=1),
        pass_filter=caller.pass_filter,
        model=caller.model,
        max_lag=caller.max_lag,
    )
