"""Wiener and Richardson-Lucy deconvolution against scikit-image (float32, clip=False)."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import host
from skimage.restoration import richardson_lucy as sk_rl
from skimage.restoration import wiener as sk_wiener

from kernels.deconvolution import RichardsonLucy, WienerFilter, richardson_lucy, wiener

GATE = 1e-4  # relative L2 difference to scikit-image, float32 (the gate)


def _psf(size, sigma=1.2):
    r = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def _periodic_scene(shape=(128, 160), seed=0, psf=None):
    """A periodic test image: spots on a constant level, blurred circularly by ``psf``."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 0.2)
    n = 60
    img[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] += rng.uniform(1, 3, n)
    if psf is not None:
        pad = np.zeros(shape)
        pad[: psf.shape[0], : psf.shape[1]] = psf
        pad = np.roll(pad, (-(psf.shape[0] // 2), -(psf.shape[1] // 2)), axis=(0, 1))
        img = np.fft.irfft2(np.fft.rfft2(img) * np.fft.rfft2(pad), s=shape)
        img += rng.normal(0, 0.002, shape)
    return np.maximum(img, 1e-3).astype(np.float32)


def _rel(a, b):
    return float(np.linalg.norm(host(a).astype(np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("size", [9, 8])
@pytest.mark.parametrize("balance", [0.01, 0.3])
def test_wiener_matches_scikit_image(xp, size, balance):
    psf = _psf(size)
    img = _periodic_scene(psf=psf)
    ref = sk_wiener(img, psf, balance, clip=False)
    got = wiener(xp.asarray(img), xp.asarray(psf), balance)
    assert got.dtype == np.float32
    assert _rel(got, ref) <= GATE


@pytest.mark.parametrize("size", [9, 8])
@pytest.mark.parametrize("num_iter", [5, 30])
def test_richardson_lucy_matches_scikit_image(xp, size, num_iter):
    psf = _psf(size)
    img = _periodic_scene(psf=psf, seed=1)
    ref = sk_rl(img, psf, num_iter, clip=False)
    got = richardson_lucy(xp.asarray(img), xp.asarray(psf), num_iter, padding="zero")
    assert got.dtype == np.float32
    assert _rel(got, ref) <= GATE


def _rl_periodic_reference(img, psf, num_iter):
    """An independent float64 Richardson-Lucy with circular convolution (numpy.fft)."""
    pad = np.zeros(img.shape)
    pad[: psf.shape[0], : psf.shape[1]] = psf
    pad = np.roll(pad, (-(psf.shape[0] // 2), -(psf.shape[1] // 2)), axis=(0, 1))
    otf = np.fft.rfft2(pad)
    est = np.full(img.shape, 0.5)
    for _ in range(num_iter):
        conv = np.fft.irfft2(np.fft.rfft2(est) * otf, s=img.shape) + 1e-12
        est *= np.fft.irfft2(np.fft.rfft2(img / conv) * np.conj(otf), s=img.shape)
    return est


def test_richardson_lucy_periodic_padding(xp):
    psf = _psf(9)
    img = _periodic_scene(psf=psf, seed=2)
    ref = _rl_periodic_reference(img.astype(np.float64), psf.astype(np.float64), 20)
    got = richardson_lucy(xp.asarray(img), xp.asarray(psf), 20, padding="none")
    assert _rel(got, ref) <= GATE


def test_float16_knob_trades_accuracy_and_sharpens(xp):
    psf = _psf(9)
    img = _periodic_scene(psf=psf, seed=3)
    ref = sk_rl(img, psf, 20, clip=False)
    half = RichardsonLucy(img.shape, xp.asarray(psf), 20, dtype="float16", xp=xp)(xp.asarray(img))
    assert half.dtype == np.float16
    err = _rel(half.astype(np.float32), ref)
    assert GATE < err < 5e-3  # measurably worse than float32, still close
    # deconvolution concentrates the blurred spots: the peak rises well above the input's
    assert float(host(half).max()) > 1.5 * float(img.max())


def test_reflect_padding_softens_edges(xp):
    # a non-periodic scene (a ramp): periodic Wiener rings at the wrapped edge, reflect doesn't
    yy, xx = np.mgrid[0:96, 0:96]
    img = (1.0 + xx / 96.0).astype(np.float32)
    psf = _psf(9)
    ring_none = host(wiener(xp.asarray(img), xp.asarray(psf), 0.05, padding="none"))
    ring_refl = host(wiener(xp.asarray(img), xp.asarray(psf), 0.05, padding="reflect"))
    err_none = np.abs(ring_none - img)[:, :4].max()
    err_refl = np.abs(ring_refl - img)[:, :4].max()
    assert err_refl < 0.2 * err_none


def test_plans_reuse_buffers_and_out(xp):
    psf = _psf(9)
    img = xp.asarray(_periodic_scene(psf=psf, seed=4))
    out = xp.empty(img.shape, dtype=xp.float32)
    rl = RichardsonLucy(img.shape, xp.asarray(psf), 3, xp=xp)
    assert rl(img, out=out) is out
    first = host(out).copy()
    rl(img, out=out)  # a second call starts from scratch, same result
    np.testing.assert_array_equal(host(out), first)
    wf = WienerFilter(img.shape, xp.asarray(psf), 0.1, padding="reflect", xp=xp)
    assert wf(img, out=out) is out


def test_bad_arguments_are_clear():
    psf = _psf(5)
    with pytest.raises(ValueError, match="allowed values: none, zero, reflect"):
        wiener(np.zeros((16, 16), np.float32), psf, 0.1, padding="wrap")
    with pytest.raises(ValueError, match="allowed values: float32, float16"):
        richardson_lucy(np.zeros((16, 16), np.float32), psf, dtype="float64")
    with pytest.raises(ValueError, match="num_iter"):
        RichardsonLucy((16, 16), psf, 0)
