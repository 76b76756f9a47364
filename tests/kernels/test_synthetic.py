"""The synthetic instrument: determinism, geometry conventions, camera and SBS model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels.phasing import phasing_matrix
from kernels.synthetic import BASES, InstrumentParams, SyntheticInstrument, TileTruth


@pytest.fixture(scope="module")
def small() -> SyntheticInstrument:
    return SyntheticInstrument(InstrumentParams(tile_shape=(128, 128), n_cycles=6), seed=7)


# -- parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("layout", "hexagonal"),
        ("density", 0.0),
        ("psf_sigma", 0.1),
        ("n_cycles", 0),
        ("tile_shape", (8, 8)),
        ("crosstalk", ((1, 0), (0, 1))),
        ("phasing", 0.2),
        ("max_drift", 500.0),
        ("gain", -1.0),
    ],
)
def test_params_reject_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"InstrumentParams.{key}="):
        InstrumentParams(**{key: value})


def test_params_defaults_are_the_reference_assay():
    p = InstrumentParams()
    assert (p.psf_sigma, p.background, p.read_noise, p.gain, p.offset) == (1.2, 100.0, 1.6, 0.5, 100.0)
    assert (p.phasing, p.prephasing, p.decay) == (0.002, 0.001, 0.003)
    m = p.crosstalk_matrix
    assert np.all(np.diag(m) == 1.0)
    # A/C and G/T share spectra: off-diagonals 0.15..0.30, the other pairs small.
    for k, b in ((0, 1), (1, 0), (2, 3), (3, 2)):
        assert 0.15 <= m[k, b] <= 0.30
    with pytest.raises(AttributeError):
        p.gain = 1.0  # frozen


# -- determinism --------------------------------------------------------------------------
def test_render_is_deterministic_whatever_the_call_order():
    params = InstrumentParams(tile_shape=(64, 64), n_cycles=4)
    a = SyntheticInstrument(params, seed=3)
    b = SyntheticInstrument(params, seed=3)
    fa = [a.render(1101, c, k) for c in (1, 2, 3) for k in range(4)]
    b.render(1102, 4, 3)  # touch other streams first
    fb = [b.render(1101, c, k) for c in (3, 2, 1) for k in reversed(range(4))][::-1]
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x, y)
    c = SyntheticInstrument(params, seed=4).render(1101, 1, 0)
    assert not np.array_equal(fa[0], c)
    assert not np.array_equal(a.render(1101, 1, 0), a.render(1102, 1, 0))
    np.testing.assert_array_equal(a.render_cycle(1101, 2), np.stack(fa[4:8]))


def test_truth_shapes_and_types(small):
    t = small.truth(1101)
    assert isinstance(t, TileTruth)
    n = t.n_clusters
    assert n > 0
    assert t.positions.shape == (n, 2) and t.positions.dtype == np.float64
    assert t.sequences.shape == (n, 6) and t.sequences.dtype == np.uint8 and t.sequences.max() <= 3
    assert t.brightness.shape == (n,)
    assert t.shifts.shape == (6, 2) and np.all(t.shifts[0] == 0)
    assert t.channel_offsets.shape == (4, 2) and np.all(t.channel_offsets[0] == 0)
    mags = np.hypot(*t.channel_offsets[1:].T)
    assert np.all((mags >= 1.0) & (mags <= 2.0))
    assert np.all(np.abs(t.shifts) <= 15.0)
    assert not t.positions.flags.writeable


def test_frames_are_uint16_of_the_tile_shape(small):
    f = small.render(1101, 1, 0)
    assert f.shape == (128, 128) and f.dtype == np.uint16
    assert small.render_cycle(1101, 2).shape == (4, 128, 128)
    with pytest.raises(ValueError, match="cycles are 1-based"):
        small.render(1101, 0, 0)
    with pytest.raises(ValueError, match="channel"):
        small.render(1101, 1, 4)


# -- layouts ------------------------------------------------------------------------------
def test_random_layout_density_and_brightness():
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(512, 512), density=0.01), seed=1)
    t = inst.truth(1)
    expected = 0.01 * 512 * 512
    assert abs(t.n_clusters - expected) < 5 * math.sqrt(expected)
    assert np.all((t.positions >= -0.5) & (t.positions <= 511.5))
    b = t.brightness
    assert abs(np.median(b) / 2000.0 - 1) < 0.05
    assert abs(np.std(b) / np.mean(b) - 0.30) < 0.03


def test_patterned_layout_is_a_hex_grid_with_occupancy():
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(256, 256), layout="patterned"), seed=2)
    t = inst.truth(1)
    d = t.nearest_neighbour_distance()
    # Every occupied site's nearest neighbour is a grid neighbour at the pitch (or a
    # multiple when the neighbours are empty); no two clusters are closer than the pitch.
    assert d.min() == pytest.approx(5.0, abs=1e-9)
    sites = 256 * 256 / (5.0 * 5.0 * math.sqrt(3) / 2)
    assert abs(t.n_clusters / sites - 0.75) < 0.03


# -- geometry convention ------------------------------------------------------------------
def test_frame_content_moves_by_shift_plus_channel_offset():
    params = InstrumentParams(tile_shape=(512, 512), density=0.002, n_cycles=3, read_noise=0.0)
    inst = SyntheticInstrument(params, seed=5)
    t = inst.truth(1101)
    isolated = t.nearest_neighbour_distance() > 12
    for cycle, channel in ((1, 0), (2, 1), (3, 3)):
        img = inst.expected_electrons(1101, cycle, channel) - inst.background_image(1101)
        pos = t.frame_positions(cycle, channel)
        np.testing.assert_allclose(pos, t.positions + t.shifts[cycle - 1] + t.channel_offsets[channel])
        bright = inst.cluster_signal(1101)[:, cycle - 1, channel] > 1000  # centroid well defined
        inside = isolated & bright & np.all((pos > 8) & (pos < 503), axis=1)
        assert inside.sum() > 10
        yy, xx = np.mgrid[-6:7, -6:7]
        for x, y in pos[inside][:20]:
            cx, cy = int(round(x)), int(round(y))
            win = img[cy - 6 : cy + 7, cx - 6 : cx + 7]
            # Centroid of a pixel-integrated Gaussian: pixel (row, col) centre is (x=col, y=row).
            assert (xx * win).sum() / win.sum() + cx == pytest.approx(x, abs=0.02)
            assert (yy * win).sum() / win.sum() + cy == pytest.approx(y, abs=0.02)


def test_in_view_keeps_clusters_that_never_leave_the_frame(small):
    t = small.truth(1101)
    m = t.in_view((128, 128), margin=3)
    assert m.any() and not m.all()
    for c in range(1, 7):
        for k in range(4):
            p = t.frame_positions(c, k)[m]
            assert np.all((p >= 2.5) & (p <= 124.5))


# -- camera -------------------------------------------------------------------------------
def test_camera_statistics_match_gain_offset_and_noise():
    params = InstrumentParams(tile_shape=(256, 256), density=1e-6, background_gradient=0.0, n_cycles=2)
    inst = SyntheticInstrument(params, seed=11)
    f = inst.render(1, 1, 0).astype(float)
    # background 100 e- -> 100 + 0.5 * 100 = 150 ADU; variance 0.5^2 (100 + 1.6^2) + 1/12 (rounding)
    assert f.mean() == pytest.approx(150.0, abs=0.1)
    assert f.var() == pytest.approx(0.25 * (100 + 1.6**2) + 1 / 12, rel=0.03)


def test_background_gradient_is_within_twenty_percent():
    inst = SyntheticInstrument(InstrumentParams(tile_shape=(128, 128)), seed=3)
    bg = inst.background_image(1)
    assert bg.min() >= 80.0 - 1e-9 and bg.max() <= 120.0 + 1e-9
    assert bg.max() - bg.min() > 10.0  # there is a gradient
    # Low frequency: neighbouring pixels differ by a tiny fraction of the range.
    assert np.abs(np.diff(bg, axis=1)).max() < 0.02 * 100


def test_frames_clip_at_saturation():
    params = InstrumentParams(tile_shape=(64, 64), brightness_median=5e7, density=0.01, n_cycles=1)
    f = SyntheticInstrument(params, seed=1).render(1, 1, 0)
    assert f.max() == 65535


# -- genome and reads ---------------------------------------------------------------------
def test_reads_come_from_the_fasta_on_both_strands(tmp_path, small):
    path = small.write_reference_fasta(tmp_path / "ref.fa")
    lines = path.read_text().splitlines()
    assert lines[0].startswith(">")
    assert all(len(s) <= 80 for s in lines[1:])
    genome = "".join(lines[1:])
    assert len(genome) == small.params.genome_length and set(genome) <= set(BASES)
    comp = str.maketrans("ACGT", "TGCA")
    t = small.truth(1101)
    n = t.sequences.shape[1]
    length = t.reads.shape[1]
    assert set(np.unique(t.strand)) == {0, 1}
    for i in range(min(50, t.n_clusters)):
        read = "".join(BASES[b] for b in t.sequences[i])
        window = genome[t.genome_start[i] : t.genome_start[i] + length]
        if t.strand[i]:
            window = window.translate(comp)[::-1]
        assert read == window[:n]


# -- SBS model and intensities ------------------------------------------------------------
def test_phasing_matrix_matches_the_closed_form():
    # Phasing only: after n cycles the length is Binomial(n, 1 - p).
    p = 0.002
    m = phasing_matrix(150, p, 0.0, 152)
    n = np.arange(1, 151)
    np.testing.assert_allclose(np.diag(m), (1 - p) ** n, rtol=1e-12)
    lag1 = np.array([m[i, i - 1] for i in range(1, 150)])
    np.testing.assert_allclose(lag1, n[1:] * p * (1 - p) ** (n[1:] - 1), rtol=1e-12)
    assert np.all(m[:, 150:] == 0)  # nothing runs ahead without prephasing
    # Prephasing only: the lead-by-one fraction is n q (1 - q)^(n - 1).
    q = 0.001
    m = phasing_matrix(150, 0.0, q, 152)
    lead1 = np.array([m[i, i + 1] for i in range(150)])
    np.testing.assert_allclose(lead1, n * q * (1 - q) ** (n - 1), rtol=1e-12)
    # Both: every molecule is somewhere (length 0 has probability p^n).
    m = phasing_matrix(150, 0.002, 0.001, 302)
    np.testing.assert_allclose(m.sum(axis=1) + 0.002**n, 1.0, rtol=1e-12)


def test_cluster_signal_is_brightness_times_crosstalk_of_the_base(small):
    sig = small.cluster_signal(1101)
    t = small.truth(1101)
    m = small.params.crosstalk_matrix
    # Cycle 1: in-phase fraction 1 - p - q, no decay yet; channel k sees M[k, base].
    # (the 0.1% prephased molecules already show base 2: absolute tolerance 0.2%)
    expected = t.brightness[:, None] * m[:, t.sequences[:, 0]].T * (1 - 0.003)
    assert np.all(np.abs(sig[:, 0, :] - expected) <= 2e-3 * t.brightness[:, None])


def test_noiseless_intensities_match_extraction_from_the_rendered_image():
    params = InstrumentParams(tile_shape=(256, 256), density=0.002, n_cycles=2)
    inst = SyntheticInstrument(params, seed=9)
    t = inst.truth(1101)
    ideal = inst.cluster_intensities(1101, noise=False, neighbours=False, units="e")
    img = inst.expected_electrons(1101, 2, 2) - inst.background_image(1101)
    pos = t.frame_positions(2, 2)
    # Isolated: no neighbour's PSF (stamps reach 5 px) inside the 15 x 15 window.
    ok = (t.nearest_neighbour_distance() > 16) & np.all((pos > 8) & (pos < 247), axis=1)
    assert ok.sum() > 10
    flux = []
    for x, y in pos[ok]:
        cx, cy = int(round(x)), int(round(y))
        flux.append(img[cy - 7 : cy + 8, cx - 7 : cx + 8].sum())
    np.testing.assert_allclose(flux, ideal[ok, 1, 2], rtol=2e-3)
    adu = inst.cluster_intensities(1101, noise=False, neighbours=False)
    np.testing.assert_allclose(adu, ideal * 0.5, rtol=1e-6)


@pytest.mark.parametrize("extraction", ["pixel", "psf"])
def test_intensity_noise_has_the_modelled_variance(extraction):
    params = InstrumentParams(tile_shape=(256, 256), layout="patterned", n_cycles=20, intensity_jitter=0.0)
    inst = SyntheticInstrument(params, seed=4)
    clean = inst.cluster_intensities(1101, noise=False, neighbours=False, units="e").astype(float)
    noisy = inst.cluster_intensities(1101, neighbours=False, extraction=extraction, units="e")
    z = (noisy - clean) / inst.noise_sigma(clean, extraction)
    assert abs(z.mean()) < 0.02
    assert z.std() == pytest.approx(1.0, abs=0.02)


def test_intensity_snr_of_a_median_cluster():
    # The SNR the base-calling gates are tested at (reported in docs/kernels-basecall.md).
    inst = SyntheticInstrument(InstrumentParams(), seed=0)
    s = np.array([2000.0])
    assert 2000.0 / inst.noise_sigma(s, "pixel")[0] == pytest.approx(11.8, abs=0.2)
    assert 2000.0 / inst.noise_sigma(s, "psf")[0] == pytest.approx(29.7, abs=0.3)


def test_neighbours_add_their_light():
    params = InstrumentParams(tile_shape=(256, 256), density=0.02, n_cycles=2)
    inst = SyntheticInstrument(params, seed=6)
    t = inst.truth(1101)
    a = inst.cluster_intensities(1101, noise=False, neighbours=False)
    b = inst.cluster_intensities(1101, noise=False, neighbours=True)
    close = t.nearest_neighbour_distance() < 2.0
    far = t.nearest_neighbour_distance() > 4 * 1.2
    assert np.all(b[close].sum(axis=(1, 2)) > a[close].sum(axis=(1, 2)) * 1.05)
    np.testing.assert_array_equal(a[far], b[far])
