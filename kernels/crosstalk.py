"""Dye crosstalk: estimate the 4x4 channel-mixing matrix from the data and undo it.

Model: the measured channel vector of a cluster is ``observed = M @ dye`` with ``M[k, b]`` the
fraction of dye ``b``'s light that channel ``k`` records and ``M[b, b] = 1`` (the scale of
each dye is its own channel). No ground truth is used: the estimate comes from clusters whose
call is unambiguous, refined iteratively.
"""

from __future__ import annotations

import numpy as np

from kernels.backend import get_array_module

__all__ = ["correct_crosstalk", "estimate_crosstalk"]


def correct_crosstalk(intensities, matrix, out=None):
    """Undo crosstalk: ``dye = M^-1 @ observed`` over the last axis (length 4).

    ``intensities`` is any array ``(..., 4)`` (float32/float64, NumPy or CuPy); ``matrix`` the
    (4, 4) ``M`` (host or device). Returns an array of the input's module and dtype (``out=``
    receives it when given).
    """
    xp = get_array_module(intensities)
    if intensities.shape[-1] != 4:
        raise ValueError(f"intensities must end in a channel axis of 4, got shape {intensities.shape}")
    m = np.asarray(matrix.get() if hasattr(matrix, "get") else matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"matrix must be (4, 4), got {m.shape}")
    dtype = intensities.dtype if intensities.dtype.kind == "f" else np.float32
    inv_t = xp.asarray(np.linalg.inv(m).T, dtype=dtype)  # 16 numbers: not a bulk copy
    if out is None:
        return xp.matmul(intensities.astype(dtype, copy=False), inv_t)
    return xp.matmul(intensities.astype(dtype, copy=False), inv_t, out=out)


def estimate_crosstalk(intensities, iterations: int = 6, min_purity: float = 0.7) -> np.ndarray:
    """Estimate ``M`` (host float64, (4, 4)) from intensities ``(n_clusters, n_cycles, 4)``.

    Each iteration corrects with the current estimate, calls every (cluster, cycle) by argmax,
    keeps the confident calls (corrected purity ``max / sum of positives >= min_purity``) and
    sets column ``b`` of ``M`` to the ratio of sums of the raw channel vectors of the spots
    called ``b``: sum(observed_k) / sum(observed_b). Ratios of sums average the noise out.
    Use early cycles (phasing adds other bases' light to every spot and biases the estimate
    upward by about the phasing fraction), or phasing-corrected intensities.
    """
    xp = get_array_module(intensities)
    x = intensities.reshape(-1, 4)
    if x.shape[0] < 100:
        raise ValueError(f"estimate_crosstalk needs at least 100 spots, got {x.shape[0]}")
    m = np.eye(4)
    for _ in range(iterations):
        y = correct_crosstalk(x, m)
        yp = xp.maximum(y, 0)
        calls = xp.argmax(y, axis=1)
        top = xp.max(yp, axis=1)
        purity = top / xp.maximum(xp.sum(yp, axis=1), 1e-12)
        # Dim spots are noise-dominated; keep the brighter half of the confident ones.
        good = (purity >= min_purity) & (top > 0)
        if int(xp.count_nonzero(good)) == 0:
            break
        thr = float(xp.median(top[good]))
        good &= top >= thr
        new = m.copy()
        for b in range(4):
            sel = good & (calls == b)
            if int(xp.count_nonzero(sel)) < 20:
                continue  # keep the previous column rather than fit noise
            sums = xp.sum(x[sel].astype(xp.float64), axis=0)
            sums = np.asarray(sums.get() if hasattr(sums, "get") else sums)
            if sums[b] > 0:
                new[:, b] = sums / sums[b]
        if np.allclose(new, m, atol=1e-6):
            m = new
            break
        m = new
    return m
