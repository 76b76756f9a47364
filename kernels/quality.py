"""Phred quality scores from a predictor table, and how the table is trained.

Like Illumina's RTA, quality is a lookup: each base call gets predictors (here a
signal-to-noise margin and the cycle), the predictors pick a cell of a table, and the cell
holds the Phred score measured for such calls on data with known truth. The shipped table
(:mod:`kernels._quality_table`, versioned) is trained on the synthetic instrument at the
reference assay parameters by ``python -m kernels.train_quality --write``;
retrain it whenever the base caller's predictor or the assay model changes.

Training (:func:`train_quality_table`): for each cycle group, calls are binned by predictor;
the error rate per bin is made non-increasing in the predictor by weighted isotonic
regression (pool adjacent violators), and where a bin's rate rests on fewer than 20 errors a
Poisson fit of the tail (log rate quadratic in the predictor) replaces it. The cells are then
grouped into Illumina-style quality bins by that modelled score (lower edges ``Q_BINS``), and
each bin reports the error rate measured over all of its training calls. Scores above Q37
are too rare to measure cell by cell, so they share one top bin with its measured score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels.backend import get_array_module

__all__ = [
    "QualityTable",
    "default_quality_table",
    "empirical_quality",
    "phred",
    "train_quality_table",
]

#: predictor bin edges (lower edges; the first bin also takes everything below)
PREDICTOR_EDGES: tuple[float, ...] = tuple(
    float(v)
    for v in np.concatenate(
        (np.arange(0.0, 4.0, 0.25), np.arange(4.0, 12.0, 0.5), np.arange(12.0, 30.0, 1.0), (30, 35, 40, 50, 60))
    )
)
#: first 1-based cycle of each cycle group
CYCLE_EDGES: tuple[int, ...] = (1, 26, 51, 76, 101, 126, 151, 201)
Q_MIN, Q_MAX = 2, 60
#: lower edges of the reported quality bins (Illumina-style binning); the last bin is the top
Q_BINS: tuple[int, ...] = (2, 7, 12, 17, 22, 27, 32, 37)


def phred(p_error):
    """Phred score of an error probability: -10 log10(p)."""
    return -10.0 * np.log10(p_error)


def empirical_quality(errors: int, n: int) -> float:
    """Measured Phred score of ``n`` calls with ``errors`` wrong (inf when none are wrong)."""
    if n <= 0:
        raise ValueError("empirical_quality needs n > 0")
    return math.inf if errors == 0 else float(phred(errors / n))


@dataclass(frozen=True)
class QualityTable:
    """Phred score per (cycle group, predictor bin)."""

    version: str
    predictor_edges: tuple[float, ...]
    cycle_edges: tuple[int, ...]
    q: tuple[tuple[int, ...], ...]  # (len(cycle_edges), len(predictor_edges))

    def __post_init__(self) -> None:
        shape = np.asarray(self.q).shape
        want = (len(self.cycle_edges), len(self.predictor_edges))
        if shape != want:
            raise ValueError(f"QualityTable.q has shape {shape}, expected {want}")

    def lookup(self, predictor, cycle: int | np.ndarray, out=None):
        """Scores (uint8, the predictor's array module) for predictors of calls in ``cycle``
        (1-based; an int for a whole cycle, or an array shaped like ``predictor``)."""
        xp = get_array_module(predictor)
        edges = xp.asarray(self.predictor_edges, dtype=predictor.dtype)
        table = xp.asarray(np.asarray(self.q, dtype=np.uint8))
        b = xp.clip(xp.searchsorted(edges, predictor, side="right") - 1, 0, len(self.predictor_edges) - 1)
        if isinstance(cycle, (int, np.integer)):
            g = int(np.searchsorted(self.cycle_edges, cycle, side="right") - 1)
            res = table[max(g, 0)][b]
        else:
            cg = xp.asarray(np.asarray(self.cycle_edges))
            g = xp.clip(xp.searchsorted(cg, xp.asarray(cycle), side="right") - 1, 0, len(self.cycle_edges) - 1)
            res = table[g, b]
        if out is not None:
            out[...] = res
            return out
        return res


def _pav_decreasing(rate: np.ndarray, weight: np.ndarray) -> np.ndarray:
    # Weighted isotonic regression, non-increasing, by pool-adjacent-violators.
    blocks: list[list[float]] = []  # [value, weight, count]
    for r, w in zip(rate, weight):
        blocks.append([r, w, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            r2, w2, c2 = blocks.pop()
            r1, w1, c1 = blocks.pop()
            wt = w1 + w2
            blocks.append([(r1 * w1 + r2 * w2) / wt if wt > 0 else r1, wt, c1 + c2])
    out = []
    for r, _, c in blocks:
        out += [r] * c
    return np.asarray(out)


def _fit_tail(x: np.ndarray, n: np.ndarray, e: np.ndarray) -> np.ndarray:
    # Poisson maximum likelihood of log rate = a - exp(u) x - exp(v) x^2 (a Gaussian-like
    # tail, decreasing in x), fitted on the bins past the steep part.
    from scipy.optimize import minimize

    def nll(theta: np.ndarray) -> float:
        a, u, v = theta
        lam = np.exp(np.clip(a - np.exp(u) * x - np.exp(v) * x * x, -700, 50))
        return float(np.sum(n * lam) - np.sum(e * np.log(np.maximum(lam, 1e-300))))

    best = None
    for u0 in (-1.0, 0.5):
        r = minimize(nll, np.array([0.0, u0, -2.0]), method="Nelder-Mead",
                     options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-9})
        if best is None or r.fun < best.fun:
            best = r
    a, u, v = best.x
    return lambda xx: np.exp(np.clip(a - np.exp(u) * xx - np.exp(v) * xx * xx, -700, 50))


def _row_rates(pred: np.ndarray, err: np.ndarray, edges: np.ndarray, min_support: int):
    """Per-bin error rate of one cycle group (nan where no data), and the bin counts."""
    nb = len(edges)
    b = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, nb - 1)
    n = np.bincount(b, minlength=nb).astype(float)
    e = np.bincount(b, weights=err.astype(float), minlength=nb)
    xs = np.bincount(b, weights=pred, minlength=nb)
    rate = np.full(nb, np.nan)
    idx = np.flatnonzero(n > 0)
    if len(idx) == 0:
        return rate, n, e
    xm = xs[idx] / n[idx]  # mean predictor of each bin
    pav = _pav_decreasing(e[idx] / n[idx], n[idx])
    # Support of each PAV value: the errors in its block of equal values.
    support = np.zeros(len(idx))
    start = 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or pav[k] != pav[start]:
            support[start:k] = e[idx[start:k]].sum()
            start = k
    r = pav.copy()
    weak = support < min_support
    if weak.any():
        # Where a bin's rate rests on too few errors, use the tail fit over the bins past
        # the steep part (PAV rate below 5%), which borrows strength from its neighbours.
        tail = pav < 0.05
        if tail.sum() >= 3 and e[idx][tail].sum() >= min_support:
            f = _fit_tail(xm[tail], n[idx][tail], e[idx][tail])
            r[weak] = f(xm[weak])
        else:
            r[weak] = (e[idx][weak] + 1.0) / (n[idx][weak] + 1.0)
    r = np.minimum.accumulate(r)  # non-increasing in the predictor
    rate[idx] = r
    return rate, n, e


def train_quality_table(
    predictors: np.ndarray,
    cycles: np.ndarray,
    errors: np.ndarray,
    *,
    version: str,
    min_support: int = 20,
    q_bins: tuple[int, ...] = Q_BINS,
    predictor_edges: tuple[float, ...] = PREDICTOR_EDGES,
    cycle_edges: tuple[int, ...] = CYCLE_EDGES,
) -> QualityTable:
    """Train a table from per-base predictors, 1-based cycles and truth (error flags).

    Per cycle group and predictor bin (a cell): the error rate, isotonic in the predictor;
    where that rests on fewer than ``min_support`` errors, a Poisson fit of the tail. Cells
    are then binned by that modelled score at the ``q_bins`` edges, and every cell of a bin
    reports the error rate measured over all the bin's training calls (the top bin pools
    every call better than its edge: such rates are too low to measure cell by cell, and a
    score must be measurable to be calibrated). Cycle groups without data copy the previous.
    """
    predictors = np.asarray(predictors, dtype=np.float64).ravel()
    cycles = np.asarray(cycles).ravel()
    errors = np.asarray(errors, dtype=bool).ravel()
    if not predictors.shape == cycles.shape == errors.shape:
        raise ValueError("predictors, cycles and errors must have the same number of elements")
    edges = np.asarray(predictor_edges)
    g = np.searchsorted(cycle_edges, cycles, side="right") - 1
    rates, ns, es = [], [], []
    for k in range(len(cycle_edges)):
        sel = g == k
        if sel.sum() == 0:
            prev = rates[-1] if rates else np.full(len(edges), 0.75)
            rates.append(prev.copy())
            ns.append(np.zeros(len(edges)))
            es.append(np.zeros(len(edges)))
            continue
        r, n, e = _row_rates(predictors[sel], errors[sel], edges, min_support)
        # Bins without data take the rate of the nearest lower bin (conservative).
        first = np.flatnonzero(~np.isnan(r))[0]
        r[:first] = r[first]
        for i in range(first + 1, len(r)):
            if np.isnan(r[i]):
                r[i] = r[i - 1]
        rates.append(r)
        ns.append(n)
        es.append(e)
    rate = np.vstack(rates)
    n_all, e_all = np.vstack(ns), np.vstack(es)
    model_q = phred(np.maximum(rate, 1e-30))
    # Bin the cells by their modelled score; each bin reports the error rate measured over
    # all of its training calls, so every reported score is a measured one.
    cell_bin = np.searchsorted(np.asarray(q_bins), model_q, side="right") - 1
    q = np.empty_like(model_q)
    for k in range(len(q_bins)):
        cells = cell_bin <= 0 if k == 0 else cell_bin == k
        if not cells.any():
            continue
        n_k, e_k = n_all[cells].sum(), e_all[cells].sum()
        if e_k >= min_support:
            q[cells] = phred(e_k / n_k)
        else:
            # Too few errors to measure the bin: the mean modelled rate of its calls.
            w = n_all[cells]
            q[cells] = phred(np.sum(w * rate[cells]) / w.sum()) if w.sum() > 0 else model_q[cells]
    q = np.clip(np.round(q), Q_MIN, Q_MAX).astype(int)
    return QualityTable(
        version,
        tuple(float(v) for v in edges),
        tuple(int(c) for c in cycle_edges),
        tuple(tuple(int(v) for v in row) for row in q),
    )


def default_quality_table() -> QualityTable:
    """The shipped table (see the module docstring for how it was trained)."""
    from kernels import _quality_table as t

    return QualityTable(t.VERSION, t.PREDICTOR_EDGES, t.CYCLE_EDGES, t.Q)
