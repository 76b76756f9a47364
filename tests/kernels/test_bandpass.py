"""DoG/LoG band-pass: FFT and spatial paths against scikit-image and SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from kernel_helpers import host
from skimage.filters import difference_of_gaussians as sk_dog

from kernels.bandpass import BandPass, difference_of_gaussians, gaussian_laplace

# Stated tolerance: the FFT path uses the DFT of ndimage's own sampled kernels, so the only
# difference is float32 FFT rounding (measured ~3e-6 relative L2).
RTOL_L2 = 2e-5


def _rel(a, b):
    return float(np.linalg.norm(host(a) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.poisson(100.0, size=(200, 256)).astype(np.float32)


@pytest.mark.parametrize("low,high", [(1.0, 1.6), (1.0, 3.6), (2.0, 6.0)])
@pytest.mark.parametrize("padding,mode", [("none", "wrap"), ("reflect", "reflect")])
@pytest.mark.parametrize("method", ["fft", "spatial"])
def test_dog_matches_scikit_image(xp, image, low, high, padding, mode, method):
    ref = sk_dog(image, low, high, mode=mode)
    got = difference_of_gaussians(xp.asarray(image), low, high, method=method, padding=padding)
    assert got.dtype == np.float32
    assert _rel(got, ref) <= RTOL_L2


@pytest.mark.parametrize("sigma", [0.9, 2.0])
@pytest.mark.parametrize("padding,mode", [("none", "wrap"), ("reflect", "reflect")])
@pytest.mark.parametrize("method", ["fft", "spatial"])
def test_log_matches_scipy(xp, image, sigma, padding, mode, method):
    ref = ndi.gaussian_laplace(image, sigma, mode=mode)
    got = gaussian_laplace(xp.asarray(image), sigma, method=method, padding=padding)
    assert _rel(got, ref) <= RTOL_L2


def test_plan_reuses_out_and_auto_is_fft(xp, image):
    bp = BandPass(image.shape, kind="log", low_sigma=0.9, xp=xp)
    assert bp.method == "fft"
    out = xp.empty(image.shape, dtype=xp.float32)
    assert bp(xp.asarray(image), out=out) is out


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="allowed values: dog, log"):
        BandPass((8, 8), kind="mexican")
    with pytest.raises(ValueError, match="must be larger than low_sigma"):
        BandPass((8, 8), low_sigma=2.0, high_sigma=1.0)
    with pytest.raises(ValueError, match="allowed values: reflect, none"):
        BandPass((8, 8), padding="zero")
    with pytest.raises(ValueError, match="planned shape"):
        BandPass((8, 8), method="spatial")(np.zeros((4, 4), np.float32))
