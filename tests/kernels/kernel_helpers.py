"""Helpers shared by the kernel tests: a spot renderer, point matching, host copies."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def render_spots(positions, amplitudes, shape, *, sigma=1.2, shift=(0.0, 0.0), background=0.0,
                 noise_rng=None):
    """Pixel-integrated Gaussian spots at ``positions + shift`` ((N, 2) as (x, y)), float64.

    The exact translation of the same scene for any sub-pixel ``shift`` (dx, dy), which the
    instrument cannot give (its cycles light different clusters). ``noise_rng`` adds Poisson
    noise to ``image + background``.
    """
    h, w = shape
    pos = np.asarray(positions, dtype=np.float64) + np.asarray(shift, dtype=np.float64)
    r = int(np.ceil(4 * sigma)) + 1
    off = np.arange(-r, r + 1)
    cx = np.rint(pos[:, 0]).astype(int)
    cy = np.rint(pos[:, 1]).astype(int)
    k = 1.0 / (np.sqrt(2.0) * sigma)
    px = cx[:, None] + off
    py = cy[:, None] + off
    gx = 0.5 * (erf((px + 0.5 - pos[:, :1]) * k) - erf((px - 0.5 - pos[:, :1]) * k))
    gy = 0.5 * (erf((py + 0.5 - pos[:, 1:]) * k) - erf((py - 0.5 - pos[:, 1:]) * k))
    vals = (np.asarray(amplitudes)[:, None, None] * gy[:, :, None] * gx[:, None, :]).ravel()
    rows = np.broadcast_to(py[:, :, None], (len(pos), len(off), len(off))).ravel()
    cols = np.broadcast_to(px[:, None, :], (len(pos), len(off), len(off))).ravel()
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    img = np.bincount(rows[ok] * w + cols[ok], weights=vals[ok], minlength=h * w).reshape(h, w)
    img = img + background
    if noise_rng is not None:
        img = noise_rng.poisson(img).astype(np.float64)
    return img


def random_scene(shape, density, rng, margin=0.0):
    """Uniform random cluster positions ((N, 2), x/y, may lie ``margin`` px outside) and
    log-normal amplitudes (median 2000, CV about 30%)."""
    h, w = shape
    n = rng.poisson(density * (h + 2 * margin) * (w + 2 * margin))
    pos = np.column_stack([rng.uniform(-margin, w + margin, n), rng.uniform(-margin, h + margin, n)])
    amp = 2000.0 * np.exp(rng.normal(0.0, 0.294, n))
    return pos, amp


def host(a):
    """A NumPy copy of a NumPy or CuPy array (tests compare on the host)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def match_points(truth, found, tol=1.5):
    """One-to-one matching within ``tol`` px (optimal assignment on the candidate pairs).

    Returns ``(truth_index, found_index, distance)`` arrays.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    truth = np.asarray(truth, dtype=np.float64)
    found = np.asarray(found, dtype=np.float64)
    if len(truth) == 0 or len(found) == 0:
        e = np.zeros(0, dtype=int)
        return e, e, np.zeros(0)
    pairs = cKDTree(truth).query_ball_tree(cKDTree(found), tol)
    ti = np.array([i for i, js in enumerate(pairs) for _ in js], dtype=int)
    fi = np.array([j for js in pairs for j in js], dtype=int)
    if len(ti) == 0:
        e = np.zeros(0, dtype=int)
        return e, e, np.zeros(0)
    d = np.hypot(*(truth[ti] - found[fi]).T)
    # solve the assignment per connected component of the candidate graph (small blocks)
    nt = len(truth)
    graph = coo_matrix((np.ones(len(ti)), (ti, nt + fi)), shape=(nt + len(found),) * 2)
    _, label = connected_components(graph, directed=False)
    out_t, out_f, out_d = [], [], []
    comp = label[ti]
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    for block in np.split(order, bounds):
        ut, it = np.unique(ti[block], return_inverse=True)
        uf, jf = np.unique(fi[block], return_inverse=True)
        cost = np.full((len(ut), len(uf)), 1e6)
        cost[it, jf] = d[block]
        r, c = linear_sum_assignment(cost)
        good = cost[r, c] < 1e6
        out_t.append(ut[r[good]])
        out_f.append(uf[c[good]])
        out_d.append(cost[r, c][good])
    return np.concatenate(out_t), np.concatenate(out_f), np.concatenate(out_d)
