"""Intensity extraction at sub-pixel cluster positions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from kernel_helpers import host, render_spots
from scipy.spatial import cKDTree

from kernels.background import background_grid
from kernels.extract import extract_channels, extract_intensities

SHAPE = (96, 128)


def _isolated(rng, n=60, min_sep=8.0):
    pos = np.column_stack([rng.uniform(8, SHAPE[1] - 9, n), rng.uniform(8, SHAPE[0] - 9, n)])
    keep = cKDTree(pos).query(pos, 2)[0][:, 1] > min_sep
    return pos[keep]


def test_psf_extraction_recovers_brightness(xp):
    rng = np.random.default_rng(0)
    pos = _isolated(rng)
    amp = rng.uniform(500, 3000, len(pos))
    img = render_spots(pos, amp, SHAPE, background=50.0).astype(np.float32)
    got = host(extract_intensities(xp.asarray(img), xp.asarray(pos), background=50.0))
    # noiseless, isolated, pixel-integrated Gaussians: unbiased to 0.1%
    np.testing.assert_allclose(got, amp, rtol=1e-3)
    # without subtracting the background the estimate is biased upwards
    raw = host(extract_intensities(xp.asarray(img), xp.asarray(pos)))
    assert np.all(raw > got + 100)


def test_offset_samples_a_translated_frame(xp):
    rng = np.random.default_rng(1)
    pos = _isolated(rng)
    amp = rng.uniform(500, 3000, len(pos))
    d = (3.4, -2.7)
    img = render_spots(pos, amp, SHAPE, shift=d).astype(np.float32)
    got = host(extract_intensities(xp.asarray(img), xp.asarray(pos), offset=d))
    np.testing.assert_allclose(got, amp, rtol=1e-3)


def test_bilinear_equals_map_coordinates(xp):
    rng = np.random.default_rng(2)
    img = rng.normal(100, 10, SHAPE).astype(np.float32)
    pos = np.column_stack([rng.uniform(0, SHAPE[1] - 1, 200), rng.uniform(0, SHAPE[0] - 1, 200)])
    got = host(extract_intensities(xp.asarray(img), xp.asarray(pos), method="bilinear"))
    ref = ndi.map_coordinates(img.astype(np.float64), [pos[:, 1], pos[:, 0]], order=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_background_forms_agree(xp):
    rng = np.random.default_rng(3)
    pos = _isolated(rng)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    bg = (40 + 0.1 * xx).astype(np.float32)
    img = xp.asarray(render_spots(pos, np.full(len(pos), 2000.0), SHAPE).astype(np.float32) + bg)
    p = xp.asarray(pos)
    with_frame = host(extract_intensities(img, p, background=xp.asarray(bg)))
    grid = background_grid(xp.asarray(bg), 32, percentile=50, smooth=0)
    with_grid = host(extract_intensities(img, p, background=(grid, 32)))
    np.testing.assert_allclose(with_frame, 2000.0, rtol=2e-3)
    np.testing.assert_allclose(with_grid, 2000.0, rtol=2e-2)


def test_channels_and_out(xp):
    rng = np.random.default_rng(4)
    pos = _isolated(rng)
    offs = [(0.0, 0.0), (1.2, -0.8), (-1.5, 1.9)]
    stack = np.stack([render_spots(pos, np.full(len(pos), 1000.0 * (c + 1)), SHAPE, shift=o)
                      for c, o in enumerate(offs)]).astype(np.float32)
    out = xp.empty((len(pos), 3), dtype=xp.float32)
    res = extract_channels(xp.asarray(stack), xp.asarray(pos), offs, out=out)
    assert res is out
    np.testing.assert_allclose(host(out), np.tile([1000.0, 2000.0, 3000.0], (len(pos), 1)),
                               rtol=1e-3)


def test_bad_inputs_are_clear():
    img = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="allowed values: psf, bilinear"):
        extract_intensities(img, np.zeros((3, 2)), method="gauss")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        extract_intensities(img, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="one \\(dx, dy\\) per channel"):
        extract_channels(np.zeros((2, *SHAPE), np.float32), np.zeros((3, 2)), [(0, 0)])
    assert extract_intensities(img, np.zeros((0, 2))).shape == (0,)


def test_edge_and_out_of_frame_clusters(xp):
    # a cluster 1 px from the edge: the window is clamped inside the frame, the weights
    # follow it, the estimate stays right; one that drifted out is bounded, not extrapolated
    pos = np.array([[1.3, 40.2], [126.4, 60.7], [64.0, 0.6]])
    img = render_spots(pos, np.full(3, 2000.0), SHAPE).astype(np.float32)
    got = host(extract_intensities(xp.asarray(img), xp.asarray(pos)))
    np.testing.assert_allclose(got, 2000.0, rtol=0.02)
    outside = np.array([[-6.0, 40.0], [140.0, 50.0], [64.0, -9.5]])
    far = host(extract_intensities(xp.asarray(img), xp.asarray(outside)))
    assert np.all(np.isfinite(far)) and np.all(np.abs(far) < 2 * 2000.0)
