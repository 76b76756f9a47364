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
        push(50)
        base = tracemalloc.get_traced_memory()[0]
        push(250)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # the phasing matrix of the predicted signal grows with the cycles seen (cycles x cycles
    # float64: 3 MB at 600) and is the only part that does
    assert grown < 4e6, grown
