"""Base calling: model estimation, accuracy gates, quality calibration, chastity filter.

Intensities come from the synthetic instrument's per-cluster model
(:meth:`SyntheticInstrument.cluster_intensities`, the default ``"pixel"`` extraction: shot
noise, background and read noise, neighbours' light; SNR 11.8 for a median cluster at
cycle 1 and 6.4 at cycle 150). Scores use the clusters a detector can resolve
(no other cluster within 1.5 px) and, for the error-rate gates, the pass-filter clusters,
as Illumina's error rate does.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.backend import cupy_available, to_host
from kernels.basecall import (
    BasecallModel,
    call_argmax,
    call_bases,
    chastity,
    estimate_model,
    pass_filter,
)
from kernels.crosstalk import correct_crosstalk, estimate_crosstalk
from kernels.quality import empirical_quality, train_quality_table
from kernels.synthetic import InstrumentParams, SyntheticInstrument


def _run(layout: str, seed: int, density: float = 0.005, **kw):
    params = InstrumentParams(tile_shape=(512, 512), layout=layout, density=density, n_cycles=150, **kw)
    inst = SyntheticInstrument(params, seed=seed)
    return inst, inst.cluster_intensities(1101)


@pytest.fixture(scope="module")
def patterned():
    return _run("patterned", 31)


@pytest.fixture(scope="module")
def random_layout():
    return _run("random", 32)


# -- accuracy gates ---------------------------------------------------------------------
@pytest.mark.parametrize("which", ["patterned", "random_layout"])
def test_accuracy_gates_150_cycles(request, which, xp):
    inst, intensities = request.getfixturevalue(which)
    truth = inst.truth(1101)
    res = call_bases(xp.asarray(intensities))
    bases = to_host(res.bases)
    keep = truth.resolvable() & to_host(res.pass_filter)
    assert keep.mean() > 0.9
    err = (bases != truth.sequences)[keep]
    baseline = to_host(call_argmax(xp.asarray(intensities), res.model.matrix))
    err0 = (baseline != truth.sequences)[keep]
    overall, late = err.mean(), err[:, 100:].mean()
    print(f"{which}: error {overall:.4%}, cycles 101-150 {late:.4%}, argmax {err0.mean():.4%}")
    assert overall <= 0.003
    assert late <= 0.01
    assert err.sum() <= 0.6 * err0.sum()  # at least 40% fewer errors than argmax
    assert err0.sum() > 200  # the comparison has something to bite on


@pytest.mark.gpu
def test_gpu_path_agrees_with_numpy(patterned):
    ok, why = cupy_available()
    if not ok:
        pytest.skip(why)
    import cupy as xp

    _, intensities = patterned
    a = call_bases(intensities)
    b = call_bases(xp.asarray(intensities))
    # Reductions run in another order on the device: allow 1 in 10^4 calls to differ.
    assert np.mean(a.bases != to_host(b.bases)) < 1e-4
    assert np.mean(a.qualities != to_host(b.qualities)) < 1e-3
    np.testing.assert_allclose(a.model.matrix, b.model.matrix, atol=1e-4)


def test_stress_phasing_still_halves_the_argmax_errors():
    inst, intensities = _run("patterned", 33, phasing=0.005, prephasing=0.0025)
    res = call_bases(intensities)
    truth = inst.truth(1101).sequences
    err = np.mean(res.bases != truth)
    err0 = np.mean(call_argmax(intensities, res.model.matrix) != truth)
    assert err < 0.035 and err <= 0.6 * err0


# -- model estimation ---------------------------------------------------------------------
def test_estimated_model_is_close_to_the_instrument(patterned):
    inst, intensities = patterned
    model = estimate_model(intensities[:, :25])
    np.testing.assert_allclose(model.matrix, inst.params.crosstalk_matrix, atol=0.01)
    assert model.phasing == pytest.approx(0.002, rel=0.1)
    assert model.prephasing == pytest.approx(0.001, rel=0.15)


def test_estimate_model_ignores_wild_clusters(patterned):
    # An extraction that runs off the frame can return absurd values for a few clusters.
    inst, intensities = patterned
    data = intensities[:, :25].copy()
    data[:20] = 1e19
    data[20:40, 3] = np.nan
    data[40:60, 5, 2] = -1e12
    model = estimate_model(data)
    np.testing.assert_allclose(model.matrix, inst.params.crosstalk_matrix, atol=0.01)
    assert model.phasing == pytest.approx(0.002, rel=0.1)


def test_estimate_crosstalk_recovers_a_known_mixing(xp):
    rng = np.random.default_rng(0)
    dye = np.eye(4)[rng.integers(0, 4, 20000)] * rng.uniform(500, 1500, (20000, 1))
    m = np.array([[1, 0.3, 0.05, 0], [0.2, 1, 0, 0.05], [0, 0.02, 1, 0.15], [0.04, 0, 0.25, 1]])
    obs = dye @ m.T + rng.normal(0, 30, dye.shape)
    est = estimate_crosstalk(xp.asarray(obs.astype(np.float32)))
    np.testing.assert_allclose(est, m, atol=0.01)
    back = to_host(correct_crosstalk(xp.asarray(obs), m))
    assert np.mean(np.argmax(back, axis=1) == np.argmax(dye, axis=1)) > 0.999


def test_basecall_model_is_validated():
    with pytest.raises(ValueError, match="BasecallModel.phasing"):
        BasecallModel(tuple(tuple(r) for r in np.eye(4)), 0.7, 0.0)
    with pytest.raises(ValueError, match="crosstalk"):
        BasecallModel(((1.0, 0.0), (0.0, 1.0)), 0.0, 0.0)


# -- quality scores -----------------------------------------------------------------------
def test_quality_scores_are_calibrated():
    # Held-out data (seeds not used to train the shipped table), the assay's layouts and densities.
    preds_q, errors = [], []
    for layout, seed, density in (("patterned", 41, 0.005), ("random", 42, 0.01), ("random", 43, 0.02)):
        inst, intensities = _run(layout, seed, density)
        truth = inst.truth(1101)
        res = call_bases(intensities)
        keep = truth.resolvable()
        preds_q.append(res.qualities[keep].ravel())
        errors.append((res.bases != truth.sequences)[keep].ravel())
    q, e = np.concatenate(preds_q), np.concatenate(errors)
    checked = 0
    rates = []
    for value in np.unique(q):
        sel = q == value
        n, k = int(sel.sum()), int(e[sel].sum())
        rates.append(k / n)
        if n >= 10_000:
            checked += 1
            emp = empirical_quality(k, n)
            print(f"Q{value}: {n} bases, {k} errors, empirical Q{emp:.1f}")
            assert abs(emp - value) <= 3, (value, n, k, emp)
    assert checked >= 4
    # Higher scores mean fewer errors.
    assert np.all(np.diff(rates) <= 0)


def test_train_quality_table_recovers_known_error_rates():
    rng = np.random.default_rng(5)
    n = 2_000_000
    x = rng.uniform(0, 8, n)
    cycles = rng.integers(1, 151, n)
    p_err = 0.5 * np.exp(-0.9 * x)  # a known predictor-to-error relation
    errors = rng.uniform(size=n) < p_err
    table = train_quality_table(x, cycles, errors, version="test")
    q = np.asarray(table.lookup(x.astype(np.float32), cycles))
    for value in np.unique(q):
        sel = q == value
        if sel.sum() >= 10_000 and errors[sel].sum() >= 20:
            assert abs(empirical_quality(int(errors[sel].sum()), int(sel.sum())) - value) <= 1.0
    assert q.min() <= 5 and q.max() >= 30


# -- chastity and pass filter -------------------------------------------------------------
def test_chastity_definition(xp):
    s = xp.asarray(np.array([[10.0, 0, 0, 0], [6, 4, 0, 0], [5, 5, 1, 0], [-1, -2, -3, -4], [3, -2, 1, 0]]))
    np.testing.assert_allclose(to_host(chastity(s)), [1.0, 0.6, 0.5, 0.0, 0.75])


def test_pass_filter_allows_one_failure_in_the_first_25_cycles(xp):
    good = np.tile([1.0, 0.1, 0, 0], (30, 1))
    one_bad = good.copy()
    one_bad[3] = [1.0, 0.9, 0, 0]
    two_bad = one_bad.copy()
    two_bad[20] = [0.5, 0.5, 0, 0]
    late_bad = good.copy()
    late_bad[25:] = [0.5, 0.5, 0, 0]  # after cycle 25: does not count
    sig = xp.asarray(np.stack([good, one_bad, two_bad, late_bad]))
    assert to_host(pass_filter(sig)).tolist() == [True, True, False, True]


def test_pass_filter_removes_mixed_clusters():
    inst, intensities = _run("random", 34, density=0.02)
    truth = inst.truth(1101)
    res = call_bases(intensities)
    pf = res.pass_filter
    err = np.mean(res.bases != truth.sequences, axis=1)
    close = truth.nearest_neighbour_distance() < 2.0
    assert pf[~close].mean() > 0.9
    assert pf[close].mean() < pf[~close].mean() - 0.2
    assert err[pf].mean() < 0.5 * err.mean()
