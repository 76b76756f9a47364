"""End to end: synthetic frames -> image chain -> base calling, scored against the truth."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from kernels.basecall import call_argmax, call_bases
from kernels.chain import ChainConfig, TileChain
from kernels.synthetic import InstrumentParams, SyntheticInstrument


def test_frames_to_base_calls():
    n_cycles = 40
    params = InstrumentParams(tile_shape=(256, 256), layout="patterned", n_cycles=n_cycles)
    inst = SyntheticInstrument(params, seed=61)
    truth = inst.truth(1101)
    chain = TileChain(params.tile_shape, ChainConfig(psf_sigma=params.psf_sigma), dark=params.offset, xp=np)
    results = []
    for cycle in range(1, n_cycles + 1):
        results += chain.push(cycle, inst.render_cycle(1101, cycle))
    results.sort(key=lambda r: r.cycle)
    assert [r.cycle for r in results] == list(range(1, n_cycles + 1))
    intensities = np.stack([np.asarray(r.intensities) for r in results], axis=1)  # (N, C, 4)
    dist, idx = cKDTree(truth.positions).query(np.asarray(chain.positions))
    matched = dist < 1.5
    assert matched.mean() > 0.99
    res = call_bases(intensities)
    # Clusters that drift out of the frame in some cycle have no valid signal there: score
    # the ones that stay in view (docs/synthetic-instrument.md).
    keep = matched & res.pass_filter & truth.in_view(params.tile_shape, margin=3)[idx]
    assert keep.sum() > 1000
    seqs = truth.sequences[idx]
    err = np.mean((res.bases != seqs)[keep])
    err0 = np.mean((call_argmax(intensities, res.model.matrix) != seqs)[keep])
    print(f"frames -> calls: {keep.sum()} clusters, error {err:.4%} (argmax {err0:.4%})")
    assert err <= 0.001
    np.testing.assert_allclose(res.model.matrix, params.crosstalk_matrix, atol=0.02)
