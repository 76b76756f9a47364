"""Cluster detection gates on the synthetic instrument, and parity with scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import host, match_points, render_spots
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu

from kernels.correct import correct_frame
from kernels.detect import (
    ClusterDetector,
    TemplateBuilder,
    find_peaks,
    otsu_threshold,
    refine_peaks,
)
from kernels.synthetic import InstrumentParams, SyntheticInstrument

TEMPLATE_CYCLES = 4


def _template(xp, layout, shape, seed):
    p = InstrumentParams(tile_shape=shape, layout=layout, density=0.005, n_cycles=TEMPLATE_CYCLES)
    inst = SyntheticInstrument(p, seed=seed)
    tb = TemplateBuilder(shape, xp=xp)
    for c in range(1, TEMPLATE_CYCLES + 1):
        frames = inst.render_cycle(1101, c)
        for k in range(4):
            tb.add(c, k, correct_frame(xp.asarray(frames[k]), p.offset))
    template, info = tb.build()
    return inst.truth(1101), template, info


def _score(truth, found, shape, margin=3.0, resolvable_px=2.5 * 1.2):
    """Recall on resolvable in-view clusters, precision in the in-view region, median error."""
    h, w = shape
    inview = truth.in_view(shape, margin=margin)
    nn = cKDTree(truth.positions).query(truth.positions, 2)[0][:, 1]
    wanted = np.flatnonzero(inview & (nn >= resolvable_px))
    lo = truth.shifts.min(axis=0) + truth.channel_offsets.min(axis=0)
    hi = truth.shifts.max(axis=0) + truth.channel_offsets.max(axis=0)
    x, y = found[:, 0], found[:, 1]
    region = ((x + lo[0] >= margin) & (x + hi[0] <= w - 1 - margin)
              & (y + lo[1] >= margin) & (y + hi[1] <= h - 1 - margin))
    ti, fi, d = match_points(truth.positions, found, tol=1.5)
    recall = np.isin(wanted, ti).mean()
    precision = np.isin(np.flatnonzero(region), fi).mean()
    return recall, precision, float(np.median(d)), len(wanted)


@pytest.mark.parametrize("layout,shape,seed,recall_gate",
                         [("random", (512, 512), 7, 0.98), ("patterned", (256, 256), 8, 0.99)])
def test_detection_gates(xp, layout, shape, seed, recall_gate):
    truth, template, info = _template(xp, layout, shape, seed)
    # the template build also recovers the per-cycle drift and the channel offsets
    for c in range(2, TEMPLATE_CYCLES + 1):
        np.testing.assert_allclose(info["drift"][c], truth.shifts[c - 1], atol=0.1)
    for k in range(4):
        np.testing.assert_allclose(info["offset"][k], truth.channel_offsets[k], atol=0.1)
    found = host(ClusterDetector(shape, xp=xp)(template))
    recall, precision, med, n = _score(truth, found, shape)
    assert n > 250
    assert recall >= recall_gate, recall
    assert precision >= 0.99, precision
    assert med <= 0.3, med


def test_find_peaks_equals_peak_local_max(xp):
    rng = np.random.default_rng(4)
    img = rng.normal(size=(96, 128)).astype(np.float32)
    for md, thr in [(1, 1.0), (2, 0.5), (3, 1.5)]:
        ours = host(find_peaks(xp.asarray(img), thr, min_distance=md))
        theirs = peak_local_max(img, min_distance=md, threshold_abs=thr, exclude_border=md)
        assert {tuple(p) for p in ours} == {tuple(p) for p in theirs}
        assert len(ours) == len(theirs)


def test_refine_peaks_is_sub_pixel_accurate(xp):
    rng = np.random.default_rng(5)
    pos = np.column_stack([rng.uniform(10, 118, 40), rng.uniform(10, 86, 40)])
    pos = pos[cKDTree(pos).query(pos, 2)[0][:, 1] > 6]
    img = render_spots(pos, np.full(len(pos), 2000.0), (96, 128)).astype(np.float32)
    peaks = find_peaks(xp.asarray(img), 10.0)
    got = host(refine_peaks(xp.asarray(img), peaks))
    ti, fi, d = match_points(pos, got, tol=1.0)
    assert len(ti) == len(pos)
    assert d.max() < 0.05  # Gaussian vertex fit on noiseless Gaussian spots


def test_otsu_matches_scikit_image(xp):
    rng = np.random.default_rng(6)
    v = np.concatenate([rng.normal(1, 0.3, 3000), rng.normal(5, 0.5, 1000)])
    ours = otsu_threshold(xp.asarray(v))
    theirs = threshold_otsu(v, nbins=256)
    assert abs(ours - theirs) <= (v.max() - v.min()) / 256 + 1e-9  # within one bin


def test_bad_threshold_is_clear():
    with pytest.raises(ValueError, match="allowed values: a number, otsu, noise"):
        ClusterDetector((32, 32), threshold="mean")
    with pytest.raises(ValueError, match="no frames added"):
        TemplateBuilder((32, 32)).build()
