"""Spot enhancement: difference-of-Gaussians and Laplacian-of-Gaussian band-pass filters.

Each filter has a spatial path (separable ``ndimage.gaussian_filter``, cost grows with sigma)
and a frequency-domain path (one real FFT pair and a product with the transfer function,
cost independent of sigma). ``method="auto"`` takes the FFT path: on the 2-core host at
2048 x 2048 it measured 4-10x faster than ndimage for every sigma from 0.9 to 6 px
(``appliance bench kernels`` reports both).

The signatures and results follow ``skimage.filters.difference_of_gaussians`` and
``scipy.ndimage.gaussian_laplace``. In the FFT path ``padding="reflect"`` mirrors the image
(like ``mode="reflect"``) and ``padding="none"`` treats it as periodic (``mode="wrap"``),
cheaper but with wrapped edges.
"""

from __future__ import annotations

import math
from typing import Any

from kernels._scratch import Scratch
from kernels.backend import get_array_module, get_fft, get_ndimage

__all__ = ["BandPass", "difference_of_gaussians", "gaussian_laplace"]

_PADDINGS = ("reflect", "none")
_METHODS = ("auto", "fft", "spatial")
_KINDS = ("dog", "log")


def _fast_len(n: int) -> int:
    import scipy.fft

    return int(scipy.fft.next_fast_len(int(n), real=True))


def _kernel_dft(sigma: float, order: int, n: int, truncate: float, half: bool = False) -> Any:
    """Real DFT (length ``n``, or its rfft half) of ndimage's 1-D Gaussian kernel of ``order``.

    Built on the host once per plan: filtering a unit impulse with ``gaussian_filter1d``
    yields exactly the kernel ndimage applies. Even orders give symmetric kernels, so the
    DFT is real.
    """
    import numpy as np
    import scipy.ndimage as ndi

    radius = int(truncate * sigma + 0.5)
    if 2 * radius + 1 > n:
        raise ValueError(f"sigma={sigma} is too wide for an axis of {n} px; use a smaller sigma")
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    k = ndi.gaussian_filter1d(impulse, sigma, order=order, mode="constant", truncate=truncate)
    buf = np.zeros(n)
    buf[: radius + 1] = k[radius:]
    if radius:
        buf[-radius:] = k[:radius]
    spec = np.fft.rfft(buf) if half else np.fft.fft(buf)
    return spec.real


class BandPass(Scratch):
    """A DoG (``kind="dog"``) or LoG (``kind="log"``) filter planned for one image shape.

    For the FFT path the transfer function and the padded work buffer are built once, so a
    call costs one forward and one inverse real FFT plus one product.
    """

    _SCRATCH = ("_pad",)  # preallocated work buffers: not pickled (kernels._scratch)

    def __init__(self, shape: tuple[int, int], *, kind: str = "dog", low_sigma: float = 1.0,
                 high_sigma: float | None = None, method: str = "auto",
                 padding: str = "reflect", truncate: float = 4.0, xp: Any = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind={kind!r}; allowed values: {', '.join(_KINDS)}")
        if method not in _METHODS:
            raise ValueError(f"method={method!r}; allowed values: {', '.join(_METHODS)}")
        if padding not in _PADDINGS:
            raise ValueError(f"padding={padding!r}; allowed values: {', '.join(_PADDINGS)}")
        if low_sigma <= 0:
            raise ValueError(f"low_sigma={low_sigma} must be > 0")
        if kind == "dog":
            high_sigma = 1.6 * low_sigma if high_sigma is None else high_sigma
            if high_sigma <= low_sigma:
                raise ValueError(f"high_sigma={high_sigma} must be larger than low_sigma={low_sigma}")
        if xp is None:
            import numpy as xp
        self.xp = xp
        self.shape = (int(shape[0]), int(shape[1]))
        self.kind, self.low_sigma, self.high_sigma = kind, float(low_sigma), high_sigma
        self.truncate = truncate
        widest = high_sigma if kind == "dog" else low_sigma
        if method == "auto":
            method = "fft"
        self.method, self.padding = method, padding
        if method == "fft":
            self._plan_fft(widest)

    def _plan_fft(self, widest: float) -> None:
        xp = self.xp
        self.fft, self.fft_kw = get_fft(xp)
        h, w = self.shape
        m = int(math.ceil(self.truncate * widest)) if self.padding == "reflect" else 0
        self.margin = m
        if m:
            self.pshape = (_fast_len(h + 2 * m), _fast_len(w + 2 * m))
        else:
            self.pshape = (h, w)
        # The transfer function is the DFT of the very kernels ndimage uses (sampled,
        # truncated, normalised Gaussians and their second derivatives), not the analytic
        # Gaussian spectrum: for sigma near 1 px the two differ by aliasing (up to several
        # percent for the LoG), and this way both paths give the same numbers.
        ph, pw = self.pshape
        if self.kind == "dog":
            tf = (_kernel_dft(self.low_sigma, 0, ph, self.truncate)[:, None]
                  * _kernel_dft(self.low_sigma, 0, pw, self.truncate, half=True)[None, :]
                  - _kernel_dft(self.high_sigma, 0, ph, self.truncate)[:, None]
                  * _kernel_dft(self.high_sigma, 0, pw, self.truncate, half=True)[None, :])
        else:
            s = self.low_sigma
            tf = (_kernel_dft(s, 2, ph, self.truncate)[:, None]
                  * _kernel_dft(s, 0, pw, self.truncate, half=True)[None, :]
                  + _kernel_dft(s, 0, ph, self.truncate)[:, None]
                  * _kernel_dft(s, 2, pw, self.truncate, half=True)[None, :])
        tf = xp.asarray(tf)
        self.transfer = tf.astype(xp.float32)
        self._pad = xp.empty(self.pshape, dtype=xp.float32) if m else None

    def __call__(self, image: Any, out: Any = None) -> Any:
        """Filter ``image`` (float32 result, in ``out`` if given)."""
        xp = self.xp
        if tuple(image.shape) != self.shape:
            raise ValueError(f"image shape {tuple(image.shape)} != planned shape {self.shape}")
        if out is None:
            out = xp.empty(self.shape, dtype=xp.float32)
        if self.method == "spatial":
            return self._spatial(image, out)
        h, w = self.shape
        m = self.margin
        if m:
            buf = self._pad
            ph, pw = self.pshape
            # Mirror the image into the padded buffer (half-sample symmetric, like
            # ndimage's mode="reflect"), the rest of the fast-length padding continues the
            # mirror so that the periodic wrap joins smoothly.
            buf[:h, :w] = image
            buf[:h, w:w + m] = image[:, ::-1][:, :m]
            buf[:h, pw - m:] = image[:, ::-1][:, w - m:]
            if pw - m > w + m:
                buf[:h, w + m:pw - m] = buf[:h, w + m - 1:w + m]
            buf[h:h + m, :] = buf[:h][::-1][:m]
            buf[ph - m:, :] = buf[:h][::-1][h - m:]
            if ph - m > h + m:
                buf[h + m:ph - m, :] = buf[h + m - 1:h + m, :]
            src = buf
        else:
            src = image.astype(xp.float32, copy=False)
        spec = self.fft.rfft2(src, **self.fft_kw)
        spec *= self.transfer
        res = self.fft.irfft2(spec, s=self.pshape, **self.fft_kw)
        out[...] = res[:h, :w]
        return out

    def _spatial(self, image: Any, out: Any) -> Any:
        ndi = get_ndimage(self.xp)
        mode = "reflect" if self.padding == "reflect" else "wrap"
        img = image.astype(self.xp.float32, copy=False)
        if self.kind == "log":
            return ndi.gaussian_laplace(img, self.low_sigma, output=out, mode=mode,
                                        truncate=self.truncate)
        ndi.gaussian_filter(img, self.low_sigma, output=out, mode=mode, truncate=self.truncate)
        out -= ndi.gaussian_filter(img, self.high_sigma, mode=mode, truncate=self.truncate)
        return out


def difference_of_gaussians(image: Any, low_sigma: float, high_sigma: float | None = None, *,
                            method: str = "auto", padding: str = "reflect",
                            truncate: float = 4.0, out: Any = None) -> Any:
    """``G(low_sigma) * image - G(high_sigma) * image`` (as in scikit-image), float32."""
    xp = get_array_module(image)
    return BandPass(image.shape, kind="dog", low_sigma=low_sigma, high_sigma=high_sigma,
                    method=method, padding=padding, truncate=truncate, xp=xp)(image, out=out)


def gaussian_laplace(image: Any, sigma: float, *, method: str = "auto", padding: str = "reflect",
                     truncate: float = 4.0, out: Any = None) -> Any:
    """Laplacian of Gaussian (as ``scipy.ndimage.gaussian_laplace``; blobs are negative)."""
    xp = get_array_module(image)
    return BandPass(image.shape, kind="log", low_sigma=sigma, method=method, padding=padding,
                    truncate=truncate, xp=xp)(image, out=out)
