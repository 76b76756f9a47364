"""Streaming base calling: bounded lag, and bit-identical results to the batch caller."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kernels.backend import to_host
from kernels.basecall import _AHEAD, _HISTORY, StreamingBasecaller, call_bases, estimate_model
from kernels.phasing import correct_phasing, estimate_phasing, phasing_matrix
from kernels.synthetic import InstrumentParams, SyntheticInstrument


@pytest.fixture(scope="module")
def run60():
    params = InstrumentParams(tile_shape=(256, 256), layout="patterned", n_cycles=60)
    inst = SyntheticInstrument(params, seed=51)
    return inst, inst.cluster_intensities(1101)


def _stream(intensities, sizes, **kw):
    caller = StreamingBasecaller(intensities.shape[0], **kw)
    chunks, c = [], 0
    for k in sizes:
        chunks += caller.push(intensities[:, c : c + k])
        c += k
    assert c == intensities.shape[1]
    chunks += caller.finish()
    return caller, chunks


def test_streaming_equals_batch_bit_for_bit(run60, xp):
    _, intensities = run60
    data = xp.asarray(intensities)
    batch = call_bases(data)
    caller = StreamingBasecaller(data.shape[0])
    chunks = []
    for c in range(data.shape[1]):
        chunks += caller.push(data[:, c])  # one (N, 4) cycle at a time
    chunks += caller.finish()
    assert [ch.cycle for ch in chunks] == list(range(1, 61))
    for name in ("bases", "qualities", "predictor", "signal"):
        stacked = np.stack([to_host(getattr(ch, name)) for ch in chunks], axis=1)
        np.testing.assert_array_equal(stacked, to_host(getattr(batch, name)), err_msg=name)
    np.testing.assert_array_equal(to_host(caller.pass_filter), to_host(batch.pass_filter))
    assert caller.model == batch.model


def test_calls_are_final_after_a_bounded_lag(run60):
    _, intensities = run60
    caller = StreamingBasecaller(intensities.shape[0])
    lag, est = caller.max_lag, caller.estimation_cycles
    assert lag == 6
    for c in range(1, 61):
        out = caller.push(intensities[:, c - 1])
        if c < est:
            assert out == []  # the model and cluster statistics need the first 25 cycles
        else:
            # after cycle c, exactly the cycles up to c - max_lag are final
            assert caller.cycles_final == c - lag
            if c > est:
                assert [ch.cycle for ch in out] == [c - lag]
        assert (caller.pass_filter is not None) == (caller.cycles_final >= 25)
    rest = caller.finish()
    assert [ch.cycle for ch in rest] == list(range(61 - lag, 61))
    assert caller.finish() == []
    with pytest.raises(RuntimeError, match="after finish"):
        caller.push(intensities[:, 0])


def test_chunking_does_not_change_results(run60):
    _, intensities = run60
    _, a = _stream(intensities, [1] * 60)
    _, b = _stream(intensities, [7, 30, 1, 2, 20])
    _, c = _stream(intensities, [60])
    for x, y, z in zip(a, b, c):
        assert x.cycle == y.cycle == z.cycle
        np.testing.assert_array_equal(x.bases, y.bases)
        np.testing.assert_array_equal(x.qualities, z.qualities)
        np.testing.assert_array_equal(x.signal, y.signal)


def test_short_run_is_called_at_finish(run60):
    inst, intensities = run60
    short = intensities[:, :12]
    caller, chunks = _stream(short, [1] * 12)
    assert [ch.cycle for ch in chunks] == list(range(1, 13))
    batch = call_bases(short)
    np.testing.assert_array_equal(np.stack([ch.bases for ch in chunks], axis=1), batch.bases)
    np.testing.assert_array_equal(caller.pass_filter, batch.pass_filter)
    assert np.mean(batch.bases != inst.truth(1101).sequences[:, :12]) < 0.002


def test_a_given_model_is_used_as_is(run60):
    _, intensities = run60
    model = estimate_model(intensities[:, :25])
    caller, chunks = _stream(intensities, [1] * 60, model=model)
    assert caller.model is model
    batch = call_bases(intensities)
    np.testing.assert_array_equal(np.stack([ch.bases for ch in chunks], axis=1), batch.bases)


def test_bad_input_is_refused(run60):
    _, intensities = run60
    caller = StreamingBasecaller(intensities.shape[0])
    with pytest.raises(ValueError, match="intensities"):
        caller.push(intensities[:10, 0])
    with pytest.raises(ValueError, match="lag"):
        StreamingBasecaller(10, lag=-1)
    with pytest.raises(ValueError, match="estimation_cycles"):
        StreamingBasecaller(10, estimation_cycles=2)


# -- the phasing kernels the streaming caller is built on ---------------------------------
def test_correct_phasing_inverts_the_model(xp):
    rng = np.random.default_rng(1)
    onehot = np.eye(4)[rng.integers(0, 4, (500, 80))]  # (N, cycles, 4)
    p, q = 0.004, 0.002
    signal = np.matmul(phasing_matrix(80, p, q), onehot)
    back = to_host(correct_phasing(xp.asarray(signal), p, q))
    np.testing.assert_allclose(back, onehot, atol=1e-9)
    # Truncated 3 cycles ahead: what is left is the light of bases more than 3 ahead.
    windowed = to_host(correct_phasing(xp.asarray(signal), p, q, lag=3))
    assert np.abs(windowed - onehot).max() < 1e-4


def test_estimate_phasing_recovers_known_rates(xp):
    rng = np.random.default_rng(2)
    onehot = np.eye(4)[rng.integers(0, 4, (4000, 25))]
    signal = np.matmul(phasing_matrix(25, 0.003, 0.0015, 25), onehot)
    signal = signal * rng.uniform(500, 1500, (4000, 1, 1)) + rng.normal(0, 30, signal.shape)
    p, q = estimate_phasing(xp.asarray(signal))
    assert p == pytest.approx(0.003, rel=0.1)
    assert q == pytest.approx(0.0015, rel=0.15)


def test_missing_intensities_become_no_calls(run60):
    inst, intensities = run60
    data = intensities.copy()
    gone = np.zeros(data.shape[:2], dtype=bool)
    gone[:50, 40:45] = True  # 50 clusters out of the frame in cycles 41-45
    gone[50:60, 3:6] = True  # 10 more in three of the first 25 cycles
    data[gone] = np.nan
    res = call_bases(data)
    q = res.qualities
    assert np.all(q[gone] == 0)
    assert np.all(q[~gone] > 0)
    assert not res.pass_filter[50:60].any()  # >= 2 chastity failures in the first 25 cycles
    truth = inst.truth(1101).sequences
    clean = call_bases(intensities)
    # The other calls are as good as without the gaps.
    assert np.mean(res.bases[~gone] != truth[~gone]) <= np.mean(clean.bases != truth) + 1e-4


def _pickled(caller) -> int:
    return len(pickle.dumps(caller, protocol=pickle.HIGHEST_PROTOCOL))


def checkpoint_bound(caller) -> int:
    """The most bytes a pickle of ``caller`` may take, from its window (not the run): the
    float32 rows pass 1 and pass 2 still read (the phasing history, the lag, the pass-2
    window and the prephasing lookahead), one uint8 row of provisional calls per cycle of the
    predicted signal's history, the no-call mask over the bounded lag, four per-cluster
    vectors, and 16 KiB for the rest (model, quality table, counters)."""
    n = caller.n_clusters
    float_rows = _HISTORY + caller.lag + caller.window + _AHEAD
    return n * (16 * float_rows + (_HISTORY + _AHEAD) + caller.max_lag + 13) + 16 * 1024


def test_memory_and_checkpoint_are_bounded_by_the_window_not_the_run():
    """150 cycles streamed one at a time: the calls are the batch caller's bit for bit, the
    buffers hold a window of cycles (not 150), and the caller's pickle (what a stage
    checkpoint holds) is at most :func:`checkpoint_bound` at every cycle, and the same size
    at cycle 150 as at cycle 75."""
    params = InstrumentParams(tile_shape=(128, 128), layout="patterned", n_cycles=150)
    intensities = SyntheticInstrument(params, seed=7).cluster_intensities(1101)
    batch = call_bases(intensities)
    caller = StreamingBasecaller(intensities.shape[0], expected_cycles=150)
    chunks, sizes = [], {}
    for c in range(150):
        chunks += caller.push(intensities[:, c])
        sizes[c + 1] = _pickled(caller)
        assert sizes[c + 1] <= checkpoint_bound(caller), (c + 1, sizes[c + 1], checkpoint_bound(caller))
        assert caller.buffer_cycles <= 60, caller.buffer_cycles
    assert caller.__getstate__()["_band"] is None  # the phasing band is rebuilt on demand
    chunks += caller.finish()
    for name in ("bases", "qualities", "predictor", "signal"):
        stacked = np.stack([to_host(getattr(ch, name)) for ch in chunks], axis=1)
        np.testing.assert_array_equal(stacked, to_host(getattr(batch, name)), err_msg=name)
    np.testing.assert_array_equal(caller.pass_filter, batch.pass_filter)
    assert abs(sizes[150] - sizes[75]) <= 64, (sizes[75], sizes[150])
    # five (rows, N, 4) float32 buffers of 51 rows were pickled whole before: 4080 B per cluster
    assert sizes[150] < 51 * intensities.shape[0] * 4 * 4 * 5 / 5


def _poison_dead_rows(caller) -> None:
    """Fill every buffer row outside :meth:`live_rows` with NaN (True in the no-call mask):
    a step that read one would change the calls, so the checkpoint may leave them out."""
    for name, (lo, hi) in caller.live_rows().items():
        buf = getattr(caller, name)
        dead = np.ones(buf.shape[0], dtype=bool)
        dead[lo - caller._base : hi - caller._base] = False
        buf[caller._xp.asarray(dead)] = True if buf.dtype == bool else np.nan


@pytest.mark.parametrize(("n_cycles", "sizes", "expected"), [
    (60, [1] * 60, 60),
    (60, [3, 1, 7, 20, 2, 27], 0),  # uneven chunks; buffers grown as it goes
    (12, [1] * 12, 12),  # shorter than the model's estimation window: all at finish()
])
def test_a_caller_unpickled_at_any_cycle_goes_on_bit_for_bit(n_cycles, sizes, expected, xp):
    """Pickled and unpickled after every push (with the rows it leaves out poisoned), the
    caller gives the batch caller's calls, qualities, predictors, signal and filter exactly,
    no-calls (NaN intensities) included."""
    params = InstrumentParams(tile_shape=(128, 128), layout="patterned", n_cycles=n_cycles)
    intensities = SyntheticInstrument(params, seed=n_cycles).cluster_intensities(1101)
    intensities[:30, 7:9] = np.nan
    intensities = xp.asarray(intensities)
    batch = call_bases(intensities)
    caller = StreamingBasecaller(intensities.shape[0], expected_cycles=expected)
    chunks, c = [], 0
    for k in sizes:
        chunks += caller.push(intensities[:, c : c + k])
        c += k
        caller = pickle.loads(pickle.dumps(caller))
        _poison_dead_rows(caller)
    chunks += caller.finish()
    for name in ("bases", "qualities", "predictor", "signal"):
        stacked = np.stack([to_host(getattr(ch, name)) for ch in chunks], axis=1)
        np.testing.assert_array_equal(stacked, to_host(getattr(batch, name)), err_msg=name)
    np.testing.assert_array_equal(to_host(caller.pass_filter), to_host(batch.pass_filter))


def test_a_caller_is_its_state_without_rows_plus_its_live_rows():
    """state_without_rows() and rows_since({}) are the whole caller (from_rows builds one
    that goes on bit for bit); rows_since(marks) gives only the rows after the marks; a live
    span whose rows are missing is named."""
    params = InstrumentParams(tile_shape=(128, 128), layout="patterned", n_cycles=60)
    intensities = SyntheticInstrument(params, seed=7).cluster_intensities(1101)
    caller = StreamingBasecaller(intensities.shape[0], expected_cycles=60)
    marks: dict = {}
    for c in range(40):
        caller.push(intensities[:, c])
        new = caller.rows_since(marks)
        assert all(lo >= marks.get(k, 0) for k, (lo, _hi, _p) in new.items())
        marks.update({k: hi for k, (_lo, hi, _p) in new.items()})
    copy = StreamingBasecaller.from_rows(caller.state_without_rows(), caller.rows_since({}))
    a = [ch for c in range(40, 60) for ch in caller.push(intensities[:, c])] + caller.finish()
    b = [ch for c in range(40, 60) for ch in copy.push(intensities[:, c])] + copy.finish()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(to_host(x.bases), to_host(y.bases))
        np.testing.assert_array_equal(to_host(x.qualities), to_host(y.qualities))
    with pytest.raises(ValueError, match="_y rows of cycles .* are not all in the log"):
        StreamingBasecaller.from_rows(copy.state_without_rows(), {})
