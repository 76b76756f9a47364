"""A kernel object's pickle (a stage checkpoint) leaves its work buffers out, and the object
unpickled mid-run goes on with the same results bit for bit."""

from __future__ import annotations

import pickle

import numpy as np

from kernels.chain import ChainConfig, TileChain
from kernels.synthetic import InstrumentParams, SyntheticInstrument


def _frames(inst, cycle):
    return np.stack([inst.render(tile=1101, cycle=cycle, channel=k) for k in range(4)])


def test_a_tile_chain_unpickled_mid_run_gives_the_same_intensities_and_its_pickle_is_small():
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(256, 256), layout="patterned", n_cycles=8), seed=3)
    chain = TileChain((256, 256), ChainConfig(), xp=np)
    for c in range(1, 6):  # past the template cycles
        chain.push(c, _frames(inst, c))
    data = pickle.dumps(chain, protocol=pickle.HIGHEST_PROTOCOL)
    # state: template, its spectrum, the band weights and window, positions; not the ~5 MB of
    # correction, registration and detection buffers
    assert len(data) < 1_500_000, len(data)
    twin = pickle.loads(data)
    assert twin._corr.shape == chain._corr.shape and twin._corr.dtype == chain._corr.dtype
    assert len(twin._ramps) == 4
    for c in (6, 7, 8):
        frames = _frames(inst, c)
        a, b = chain.push(c, frames), twin.push(c, frames.copy())
        assert [r.cycle for r in a] == [r.cycle for r in b] == [c]
        np.testing.assert_array_equal(a[0].intensities, b[0].intensities)
        assert a[0].drift == b[0].drift


def test_a_chain_pickled_before_its_template_still_builds_it():
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(128, 128), layout="patterned", n_cycles=6), seed=4)
    chain = TileChain((128, 128), ChainConfig(), xp=np)
    chain.push(1, _frames(inst, 1))
    twin = pickle.loads(pickle.dumps(chain))
    assert twin._ramps == [] and not twin.ready
    out_a, out_b = [], []
    for c in range(2, 6):
        out_a += chain.push(c, _frames(inst, c))
        out_b += twin.push(c, _frames(inst, c))
    assert [r.cycle for r in out_a] == [r.cycle for r in out_b] and out_a
    for ra, rb in zip(out_a, out_b):
        np.testing.assert_array_equal(ra.intensities, rb.intensities)
