"""The phasing model's inverse: the windowed form the streaming caller uses, and the
caller's memory over a long run."""

from __future__ import annotations

import numpy as np
import pytest
@pytest.mark.parametrize("p,q", [(0.002, 0.001), (0.01, 0.005)])
def test_the_windowed_inverse_is_the_full_inverses_row(p, q):
    from kernels.phasing import WINDOW_MARGIN, phasing_inverse_row, phasing_inverse_window

    for c in (5, WINDOW_MARGIN + 10, 150, 300):
        m, lo = c + 3, max(0, c - 32)
        full, window = phasing_inverse_row(c, m, p, q)[lo:], phasing_inverse_window(c, m, lo, p, q)
        np.testing.assert_allclose(window, full, rtol=1e-9, atol=1e-12 * np.abs(full).max())
    with pytest.raises(ValueError):
        phasing_inverse_window(10, 10, 0, p, q)


def test_a_long_streaming_run_keeps_its_memory_bounded():
    """Cycle after cycle the caller's memory stays that of its window: no inverse of the whole
    run's phasing matrix is kept (a cache of those grew by gigabytes over an hour's soak)."""
    import tracemalloc

    from kernels.basecall import StreamingBasecaller

    rng = np.random.default_rng(0)
    n = 200
    caller = StreamingBasecaller(n, expected_cycles=600)

    def push(k):
        for _ in range(k):
            x = rng.random((n, 4)).astype(np.float32)
            x[np.arange(n), rng.integers(0, 4, n)] += 3
            caller.push(x)

    push(150)
    tracemalloc.start()
    try:
        push(150)  # every row of the band that is alive from here on was allocated while traced
        base = tracemalloc.get_traced_memory()[0]
        push(250)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # nothing grows with the cycles seen: the phasing matrix of the predicted signal was
    # cycles x cycles float64 (3 MB at 600, reallocated at twice the rows) before PhasingBand
    assert grown < 64 * 1024, grown
    assert caller._band.nbytes < 256 * 1024, caller._band.nbytes


@pytest.mark.parametrize("p,q", [(0.002, 0.001), (0.01, 0.005), (0.05, 0.01)])
def test_the_band_is_the_phasing_matrix_near_its_diagonal(p, q):
    """Row by row over 400 cycles the band holds what phasing_matrix has within its width
    (to float64 rounding), its size stops growing once ``keep`` rows are in, an older row
    is computed again from cycle 0, and its block is the matrix's block."""
    from kernels.phasing import PhasingBand, phasing_matrix

    n, width, keep = 400, 40, 50
    full = phasing_matrix(n, p, q, n + width + 1)
    band = PhasingBand(p, q, width=width, keep=keep)
    sizes = []
    for c in range(n):
        j0 = max(0, c - width)
        np.testing.assert_allclose(band.row(c, j0, c + width + 1), full[c, j0 : c + width + 1], rtol=1e-12, atol=1e-300)
        sizes.append(band.nbytes)
    assert sizes[-1] == sizes[200], (sizes[200], sizes[-1])  # past the reach (width + 64) and keep
    assert band.nbytes < 2 * (keep + 2) * (2 * width + 1) * 8
    np.testing.assert_allclose(band.row(5, 3, 9), full[5, 3:9], rtol=1e-12)  # rewound
    np.testing.assert_allclose(band.block(300, 340), full[300:340, 300:340], rtol=1e-12, atol=1e-300)
    with pytest.raises(ValueError, match="outside the band"):
        band.row(300, 250, 301)
    with pytest.raises(ValueError, match="wider than the band"):
        band.block(300, 342)
    with pytest.raises(ValueError, match="need p, q"):
        PhasingBand(0.6, 0.5, width=4, keep=4)
