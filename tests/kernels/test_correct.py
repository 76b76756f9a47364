"""Dark/offset and flat-field correction against a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import host

from kernels.correct import FlatFieldCorrector, correct_frame


def _inputs(rng, shape=(64, 96)):
    raw = rng.integers(80, 5000, size=shape).astype(np.uint16)
    dark = rng.normal(100.0, 3.0, size=shape).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, size=shape).astype(np.float32)
    return raw, dark, flat


def test_per_pixel_dark_and_flat(xp):
    rng = np.random.default_rng(1)
    raw, dark, flat = _inputs(rng)
    ref = (raw.astype(np.float64) - dark) / flat
    corr = FlatFieldCorrector(raw.shape, xp.asarray(dark), xp.asarray(flat), xp=xp)
    got = corr(xp.asarray(raw))
    assert got.dtype == np.float32 and got.shape == raw.shape
    np.testing.assert_allclose(host(got), ref, rtol=2e-6, atol=1e-3)


def test_scalar_offset_only_and_out_reused(xp):
    rng = np.random.default_rng(2)
    raw, _, _ = _inputs(rng)
    out = xp.empty(raw.shape, dtype=xp.float32)
    res = correct_frame(xp.asarray(raw), 100.0, out=out)
    assert res is out
    np.testing.assert_array_equal(host(res), raw.astype(np.float32) - 100.0)
    # zero offset, no flat: a plain float32 conversion
    np.testing.assert_array_equal(host(correct_frame(xp.asarray(raw))), raw.astype(np.float32))


def test_bad_flat_and_shapes_are_clear_errors():
    raw = np.ones((8, 8), dtype=np.uint16)
    flat = np.ones((8, 8), dtype=np.float32)
    flat[3, 3] = 0.0
    with pytest.raises(ValueError, match="dead pixels"):
        FlatFieldCorrector(raw.shape, 0.0, flat)
    with pytest.raises(ValueError, match=r"dark has shape \(4, 4\)"):
        FlatFieldCorrector(raw.shape, np.zeros((4, 4), np.float32))
    corr = FlatFieldCorrector(raw.shape, 1.0)
    with pytest.raises(ValueError, match="raw frame has shape"):
        corr(np.ones((8, 9), dtype=np.uint16))
