"""pytest-benchmark timings of the image kernels and the per-tile chain at test sizes.

Benchmarks are disabled by default (``--benchmark-disable`` in addopts), so in the normal
suite each body runs once as a test; ``pytest tests/benchmarks --benchmark-enable`` times
them. ``appliance bench kernels`` is the side-by-side comparison at 2048 x 2048.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.bandpass import BandPass
from kernels.background import background_grid
from kernels.chain import TileChain
from kernels.correct import FlatFieldCorrector
from kernels.deconvolution import RichardsonLucy, WienerFilter
from kernels.detect import ClusterDetector
from kernels.extract import extract_intensities
from kernels.registration import PhaseCorrelator
from kernels.synthetic import InstrumentParams, SyntheticInstrument

SHAPE = (256, 256)


@pytest.fixture(scope="module")
def tile():
    """An instrument tile with the chain's template built (4 cycles) and cycle 5's frames."""
    p = InstrumentParams(tile_shape=SHAPE, layout="random", density=0.005, n_cycles=5)
    inst = SyntheticInstrument(p, seed=1)
    chain = TileChain(SHAPE, dark=p.offset)
    for c in range(1, 5):
        chain.push(c, inst.render_cycle(1101, c))
    frames = inst.render_cycle(1101, 5)
    img = FlatFieldCorrector(SHAPE, p.offset)(frames[0])
    return chain, frames, img


def _psf():
    g = np.exp(-(np.arange(-4, 5) ** 2) / (2 * 1.2**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def test_bench_correct(benchmark, tile):
    _, frames, _ = tile
    corr = FlatFieldCorrector(SHAPE, 100.0, np.full(SHAPE, 1.05, np.float32))
    out = np.empty(SHAPE, np.float32)
    res = benchmark(corr, frames[0], out)
    assert res is out


def test_bench_background_grid(benchmark, tile):
    grid = benchmark(background_grid, tile[2], 32)
    assert grid.shape == (8, 8)


def test_bench_registration_fit(benchmark, tile):
    chain, _, img = tile
    pc = PhaseCorrelator(SHAPE)
    ref = pc.spectrum(chain.template)
    dy, dx = benchmark(lambda: pc.shift(ref, pc.spectrum(img)))
    assert abs(dx) <= 16 and abs(dy) <= 16


def test_bench_bandpass_log(benchmark, tile):
    bp = BandPass(SHAPE, kind="log", low_sigma=0.9)
    out = np.empty(SHAPE, np.float32)
    assert benchmark(bp, tile[2], out) is out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bench_wiener(benchmark, tile, dtype):
    wf = WienerFilter(SHAPE, _psf(), 0.05, dtype=dtype)
    res = benchmark(wf, tile[2])
    assert res.dtype == np.dtype(dtype) and np.isfinite(res.astype(np.float32)).all()


@pytest.mark.parametrize("num_iter,padding", [(10, "zero"), (10, "none"), (30, "zero")])
def test_bench_richardson_lucy(benchmark, tile, num_iter, padding):
    img = np.maximum(tile[2], 0) / tile[2].max()
    rl = RichardsonLucy(SHAPE, _psf(), num_iter, padding=padding)
    res = benchmark(rl, img)
    assert np.isfinite(res).all()


def test_bench_detect(benchmark, tile):
    chain = tile[0]
    det = ClusterDetector(SHAPE)
    pos = benchmark(det, chain.template)
    assert len(pos) > 200


def test_bench_extract_psf(benchmark, tile):
    chain, _, img = tile
    res = benchmark(extract_intensities, img, chain.positions)
    assert res.shape == (chain.positions.shape[0],)


def test_bench_chain_cycle(benchmark, tile):
    chain, frames, _ = tile
    out = np.empty((chain.positions.shape[0], 4), np.float32)
    res = benchmark(chain.process_cycle, 5, frames, out)
    assert res.intensities is out and res.cycle == 5


def test_bench_kernels_suite_smoke(tmp_path):
    """``appliance bench kernels`` end to end at a tiny size: rows, ratios, table, JSON."""
    import argparse
    import json

    from appliance.benchmarks import kernels as suite

    parser = argparse.ArgumentParser()
    suite.configure(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args(["--size", "128", "--cycles", "1", "--repeat", "1", "--quick",
                              "--no-gpu", "--json", str(out)])
    assert suite.run(args) == 0
    result = json.loads(out.read_text())
    rows = result["cpu"]["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"correct", "background", "registration", "bandpass", "wiener", "richardson_lucy",
            "detect", "extract", "chain"} <= kernels
    ours = [r for r in rows if r["impl"] == "ours" and r["reference"]]
    assert ours and all(r["ratio_vs_reference"] and r["ratio_vs_reference"] > 0 for r in ours)
    # the accuracy columns are real comparisons, e.g. Wiener against scikit-image
    wiener32 = next(r for r in rows if r["kernel"] == "wiener" and r["impl"] == "ours")
    assert wiener32["accuracy"]["rel_l2_vs_ref"] < 1e-4
    assert result["gpu"] == {"available": False, "reason": "--no-gpu"}
    assert "x ref" in suite.format_table(result)
    bad = parser.parse_args(["--size", "100", "--json", str(out)])
    assert suite.run(bad) == 2
