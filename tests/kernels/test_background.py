"""Background estimation against the synthetic instrument's known background field."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from kernel_helpers import host

from kernels.background import (
    background_grid,
    estimate_background,
    expand_background,
    sample_background,
    subtract_background,
)
from kernels.correct import correct_frame
from kernels.synthetic import InstrumentParams, SyntheticInstrument


@pytest.mark.parametrize("layout,density", [("random", 0.005), ("random", 0.02), ("patterned", 0.0)])
def test_background_matches_the_instrument_field(xp, layout, density):
    p = InstrumentParams(tile_shape=(256, 256), layout=layout, density=density or 0.005, n_cycles=2)
    inst = SyntheticInstrument(p, seed=3)
    img = correct_frame(xp.asarray(inst.render(1101, 1, 0)), p.offset)
    truth = inst.background_image(1101) * p.gain  # ADU
    est = host(estimate_background(img, 32))
    err = est - truth
    level = truth.mean()
    # the +-20% gradient is followed to within a few percent of the background level
    assert abs(err.mean()) < 0.06 * level
    assert np.sqrt((err**2).mean()) < 0.08 * level
    assert np.corrcoef(est.ravel(), truth.ravel())[0, 1] > 0.9


def test_grid_expand_and_sample_agree(xp):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:192]
    field = (50 + 0.1 * xx + 0.05 * yy).astype(np.float32)
    img = xp.asarray(field + rng.normal(0, 0.01, field.shape).astype(np.float32))
    grid = background_grid(img, 32, percentile=50, smooth=0)
    assert grid.shape == (4, 6)
    full = expand_background(grid, img.shape, 32)
    # a linear field is reproduced exactly between the outermost cell centres
    inner = (slice(16, 112), slice(16, 176))
    np.testing.assert_allclose(host(full)[inner], field[inner], atol=0.1)
    # inside the outermost cell centres (beyond them both hold the edge value, but the
    # full frame blends the held and the sloped part within one pixel)
    pos = np.column_stack([rng.uniform(16, 175, 50), rng.uniform(16, 111, 50)])
    s = host(sample_background(grid, xp.asarray(pos), 32))
    ref = ndi.map_coordinates(host(full).astype(np.float64), [pos[:, 1], pos[:, 0]], order=1)
    np.testing.assert_allclose(s, ref, atol=2e-3)
    out = xp.empty(img.shape, dtype=xp.float32)
    res = subtract_background(img, 32, percentile=50, smooth=0, out=out)
    assert res is out
    assert float(abs(host(res)[inner]).max()) < 0.2


def test_block_must_divide_the_frame():
    with pytest.raises(ValueError, match="divide the frame shape"):
        background_grid(np.zeros((100, 100), np.float32), 32)
