"""Sub-pixel phase correlation: accuracy on known shifts, agreement with scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from kernel_helpers import host, random_scene, render_spots
from skimage.registration import phase_cross_correlation

from kernels.registration import PhaseCorrelator, fourier_shift, phase_correlate

SHAPE = (256, 256)


def _pairs(n, seed=5):
    """``n`` (reference, moving, truth) triples: the same noisy scene translated up to 15 px,
    with a fixed background gradient that does *not* move (as on the instrument)."""
    rng = np.random.default_rng(seed)
    pos, amp = random_scene(SHAPE, 0.005, rng, margin=20)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    bg = 100.0 * (1 + 0.2 * (xx / SHAPE[1] - 0.5))
    ref = render_spots(pos, amp, SHAPE, background=bg, noise_rng=rng).astype(np.float32)
    out = []
    for _ in range(n):
        d = rng.uniform(-15, 15, 2)  # (dx, dy)
        # cycle-to-cycle brightness changes: the same clusters, not the same intensities
        a = amp * rng.uniform(0.5, 1.5, amp.shape)
        mov = render_spots(pos, a, SHAPE, shift=d, background=bg, noise_rng=rng).astype(np.float32)
        out.append((ref, mov, np.array([-d[1], -d[0]])))  # skimage convention (drow, dcol)
    return out


@pytest.mark.parametrize("method", ["fit", "dft"])
def test_accuracy_gate_over_shifts_up_to_15px(xp, method):
    pc = PhaseCorrelator(SHAPE, method=method, xp=xp)
    errs = []
    for ref, mov, truth in _pairs(20):
        got = pc.register(xp.asarray(ref), xp.asarray(mov))
        errs.append(np.asarray(got) - truth)
    errs = np.asarray(errs)
    rms = float(np.sqrt((errs**2).mean()))
    assert rms <= 0.05, rms
    assert float(np.abs(errs).max()) <= 0.1, np.abs(errs).max()


def test_plain_phase_correlation_equals_scikit_image(xp):
    # Same algorithm as skimage (phase normalisation, upsample 100, no band weight): the
    # shifts agree to one upsampled pixel (0.01 px) plus float32 rounding.
    for ref, mov, _ in _pairs(8, seed=9):
        ours = phase_correlate(xp.asarray(ref), xp.asarray(mov), upsample_factor=100)
        theirs, _, _ = phase_cross_correlation(ref, mov, upsample_factor=100)
        np.testing.assert_allclose(ours, theirs, atol=0.0101 + 1e-4)


def test_band_weight_beats_plain_phase_correlation():
    # the stated reason for the weight: on the same inputs it is more accurate than skimage
    pairs = _pairs(12, seed=11)
    ours = np.array([PhaseCorrelator(SHAPE).register(r, m) - t for r, m, t in pairs])
    theirs = np.array([phase_cross_correlation(r, m, upsample_factor=100)[0] - t
                       for r, m, t in pairs])
    assert np.sqrt((ours**2).mean()) < np.sqrt((theirs**2).mean())


def test_edge_taper_removes_the_edge_bias(xp):
    # noiseless: the only error left is the scene entering/leaving at the frame edges
    rng = np.random.default_rng(1)
    pos, amp = random_scene(SHAPE, 0.005, rng, margin=20)
    ref = render_spots(pos, amp, SHAPE).astype(np.float32)
    movs = [(d, render_spots(pos, amp, SHAPE, shift=(d, 0.3)).astype(np.float32))
            for d in np.linspace(0, 1, 6)]

    def worst(taper):
        pc = PhaseCorrelator(SHAPE, taper=taper, xp=xp)
        return max(abs(pc.register(xp.asarray(ref), xp.asarray(m))[1] + d) for d, m in movs)

    assert worst(32) < 0.005
    assert worst(None) > 2 * worst(32)


def test_fourier_shift_matches_scipy_and_registers_back(xp):
    # a periodic, band-limited image: the half-spectrum and full-spectrum conventions differ
    # only at the Nyquist frequency, where this image has no content
    rng = np.random.default_rng(3)
    fy = np.fft.fftfreq(128)[:, None]
    fx = np.fft.rfftfreq(160)[None, :]
    spec = (rng.normal(size=fy.shape[:1] + fx.shape[1:]) + 1j * rng.normal(size=(128, 81)))
    spec *= np.exp(-2 * np.pi**2 * 2.0**2 * (fy**2 + fx**2))
    img = np.fft.irfft2(spec, s=(128, 160)).astype(np.float32)
    shift = (3.3, -7.6)
    got = host(fourier_shift(xp.asarray(img), shift))
    ref = np.fft.ifft2(ndi.fourier_shift(np.fft.fft2(img), shift)).real
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    back = PhaseCorrelator(img.shape, low_cut=None, taper=None, xp=xp).register(
        xp.asarray(img), xp.asarray(got))
    np.testing.assert_allclose(back, [-3.3, 7.6], atol=0.02)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="allowed values: fit, dft"):
        PhaseCorrelator(SHAPE, method="cross")
    with pytest.raises(ValueError, match="needs a Gaussian band weight"):
        PhaseCorrelator(SHAPE, method="fit", sigma=None)
    with pytest.raises(ValueError, match="same shape"):
        phase_correlate(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="correlator shape"):
        PhaseCorrelator(SHAPE).spectrum(np.zeros((8, 8)))


def test_batched_spectra_equal_single_ones(xp):
    rng = np.random.default_rng(7)
    stack = xp.asarray(rng.normal(size=(3, 64, 96)).astype(np.float32))
    for taper in (None, 8):
        pc = PhaseCorrelator((64, 96), taper=taper, xp=xp)
        batched = host(pc.spectra(stack))
        for k in range(3):
            np.testing.assert_allclose(batched[k], host(pc.spectrum(stack[k])), rtol=1e-5,
                                       atol=1e-4)
    with pytest.raises(ValueError, match=r"is not \(C, 64, 96\)"):
        pc.spectra(stack[0])
