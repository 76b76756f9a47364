"""Wiener and Richardson-Lucy deconvolution in the frequency domain, planned per shape.

Knobs that trade precision for speed, all measured by ``appliance bench kernels``:

* ``padding``: ``"none"`` treats the image as periodic (FFT size = image size; what
  ``skimage.restoration.wiener`` computes); ``"zero"`` pads with zeros to a linear
  convolution (what ``skimage.restoration.richardson_lucy``/``scipy.signal.convolve(...,
  "same")`` compute); ``"reflect"`` mirrors the image to soften edge ringing.
* ``fast_len``: round the padded FFT size up to a 2/3/5/7-smooth length (much faster FFTs
  for awkward sizes, a few more pixels).
* ``dtype``: float32 (default) or float16 for the stored iterate and ratio images; FFTs run
  in single precision either way (pocketfft and cuFFT have no general half transforms).
* ``num_iter`` for Richardson-Lucy.
"""

from __future__ import annotations

from typing import Any

from kernels.backend import get_array_module, get_fft

__all__ = ["RichardsonLucy", "WienerFilter", "richardson_lucy", "wiener"]

_PADDINGS = ("none", "zero", "reflect")


def _fast_len(n: int) -> int:
    import scipy.fft

    return int(scipy.fft.next_fast_len(int(n), real=True))


def _otf(xp: Any, fft: Any, kw: dict, kernel: Any, pshape: tuple[int, int],
         centre: tuple[int, int]) -> Any:
    """Half-spectrum transfer function of ``kernel`` with pixel ``centre`` at the origin."""
    buf = xp.zeros(pshape, dtype=xp.float32)
    kh, kw_ = kernel.shape
    buf[:kh, :kw_] = kernel
    buf = xp.roll(buf, (-centre[0], -centre[1]), axis=(0, 1))
    return fft.rfft2(buf, **kw).astype(xp.complex64)


class _Plan:
    """Shared set-up: padded FFT shape, where the image sits in it, the PSF's OTF."""

    def __init__(self, shape: tuple[int, int], psf: Any, padding: str, fast_len: bool,
                 dtype: Any, xp: Any) -> None:
        if padding not in _PADDINGS:
            raise ValueError(f"padding={padding!r}; allowed values: {', '.join(_PADDINGS)}")
        if xp is None:
            xp = get_array_module(psf)
        self.xp = xp
        self.dtype = xp.dtype(dtype)
        if self.dtype not in (xp.dtype(xp.float32), xp.dtype(xp.float16)):
            raise ValueError(f"dtype={self.dtype}; allowed values: float32, float16")
        self.shape = (int(shape[0]), int(shape[1]))
        self.padding = padding
        self.fft, self.fft_kw = get_fft(xp)
        psf = xp.asarray(psf, dtype=xp.float32)
        if psf.ndim != 2:
            raise ValueError(f"psf must be 2-D; got shape {psf.shape}")
        self.psf = psf
        h, w = self.shape
        ph, pw = psf.shape
        if padding == "none":
            self.pshape = (h, w)
            self.margin = (0, 0)
        elif padding == "zero":
            # linear convolution: at least h + ph - 1 so nothing wraps into the image
            self.pshape = (h + ph - 1, w + pw - 1)
            self.margin = (0, 0)
        else:
            self.margin = (ph, pw)
            self.pshape = (h + 2 * ph, w + 2 * pw)
        if fast_len and padding != "none":
            self.pshape = (_fast_len(self.pshape[0]), _fast_len(self.pshape[1]))
        # the PSF pixel that sits on the output pixel, as scipy.signal.convolve(mode="same")
        # and skimage's ir2tf place it (they agree for odd sizes)
        self.centre = ((ph - 1) // 2, (pw - 1) // 2) if padding == "zero" else (ph // 2, pw // 2)

    def load(self, image: Any, buf: Any) -> None:
        """Write ``image`` into the padded buffer ``buf`` according to the padding."""
        h, w = self.shape
        if self.padding == "none":
            buf[...] = image
            return
        if self.padding == "zero":
            buf[:h, :w] = image
            return
        mh, mw = self.margin
        ph, pw = self.pshape
        # periodic layout: image at the origin, mirrored margins after it and (wrapped)
        # before it, the remaining fast-length gap filled by repeating the last mirror line
        buf[:h, :w] = image
        buf[:h, w:w + mw] = image[:, ::-1][:, :mw]
        buf[:h, pw - mw:] = image[:, ::-1][:, w - mw:]
        if pw - mw > w + mw:
            buf[:h, w + mw:pw - mw] = buf[:h, w + mw - 1:w + mw]
        buf[h:h + mh] = buf[:h][::-1][:mh]
        buf[ph - mh:] = buf[:h][::-1][h - mh:]
        if ph - mh > h + mh:
            buf[h + mh:ph - mh] = buf[h + mh - 1:h + mh]


class WienerFilter(_Plan):
    """Wiener-Hunt deconvolution (as ``skimage.restoration.wiener``) planned for one shape.

    The filter ``conj(H) / (|H|^2 + balance |L|^2)`` (``L`` the Laplacian regulariser unless
    ``reg`` is given as an impulse response) is built once; a call is one forward and one
    inverse real FFT and one product.
    """

    def __init__(self, shape: tuple[int, int], psf: Any, balance: float, *, reg: Any = None,
                 padding: str = "none", fast_len: bool = True, dtype: Any = "float32",
                 xp: Any = None) -> None:
        super().__init__(shape, psf, padding, fast_len, dtype, xp)
        xp = self.xp
        h = _otf(xp, self.fft, self.fft_kw, self.psf, self.pshape,
                 (self.psf.shape[0] // 2, self.psf.shape[1] // 2))
        if reg is None:
            reg = xp.asarray([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=xp.float32)
        reg = xp.asarray(reg, dtype=xp.float32)
        lap = _otf(xp, self.fft, self.fft_kw, reg, self.pshape, (reg.shape[0] // 2, reg.shape[1] // 2))
        # skimage keeps only the real part of the regulariser's transfer function
        lreal = xp.abs(lap.real)
        self.filter = (xp.conj(h) / (xp.abs(h) ** 2 + balance * lreal**2)).astype(xp.complex64)
        self._buf = xp.zeros(self.pshape, dtype=xp.float32) if self.padding != "none" else None

    def __call__(self, image: Any, out: Any = None) -> Any:
        xp = self.xp
        if tuple(image.shape) != self.shape:
            raise ValueError(f"image shape {tuple(image.shape)} != planned shape {self.shape}")
        if self._buf is None:
            src = image.astype(xp.float32, copy=False)
        else:
            self.load(image, self._buf)
            src = self._buf
        spec = self.fft.rfft2(src, **self.fft_kw)
        spec *= self.filter
        res = self.fft.irfft2(spec, s=self.pshape, **self.fft_kw)
        h, w = self.shape
        if out is None:
            out = xp.empty(self.shape, dtype=self.dtype)
        out[...] = res[:h, :w]
        return out


class RichardsonLucy(_Plan):
    """Richardson-Lucy deconvolution (as ``skimage.restoration.richardson_lucy`` with
    ``clip=False``) planned for one shape: the OTFs and padded work buffers are built once.

    Each iteration is two forward and two inverse real FFTs of the padded shape.
    """

    def __init__(self, shape: tuple[int, int], psf: Any, num_iter: int = 30, *,
                 padding: str = "zero", fast_len: bool = True, dtype: Any = "float32",
                 eps: float = 1e-12, xp: Any = None) -> None:
        super().__init__(shape, psf, padding, fast_len, dtype, xp)
        if num_iter < 1:
            raise ValueError(f"num_iter={num_iter} must be >= 1")
        xp = self.xp
        self.num_iter = int(num_iter)
        self.eps = float(eps)
        self.otf = _otf(xp, self.fft, self.fft_kw, self.psf, self.pshape, self.centre)
        mirror = self.psf[::-1, ::-1]
        self.otf_mirror = _otf(xp, self.fft, self.fft_kw, mirror, self.pshape, self.centre)
        self._est = xp.zeros(self.pshape, dtype=self.dtype)
        self._ratio = xp.zeros(self.pshape, dtype=self.dtype)
        self._obs = xp.zeros(self.pshape, dtype=xp.float32)

    def __call__(self, image: Any, out: Any = None, num_iter: int | None = None) -> Any:
        xp = self.xp
        if tuple(image.shape) != self.shape:
            raise ValueError(f"image shape {tuple(image.shape)} != planned shape {self.shape}")
        n_iter = self.num_iter if num_iter is None else int(num_iter)
        fft, kw = self.fft, self.fft_kw
        h, w = self.shape
        if self.padding == "zero":
            # the estimate lives in the image region only; the zero margin makes the
            # circular FFT convolution a linear one
            region = (slice(0, h), slice(0, w))
            est, ratio = self._est, self._ratio
            est.fill(0)
            ratio.fill(0)
            est[region] = 0.5
            obs = image.astype(xp.float32, copy=False)
        else:
            region = (slice(None), slice(None))
            est, ratio = self._est, self._ratio
            est.fill(0.5)
            self.load(image, self._obs)
            obs = self._obs
        eps = xp.float32(self.eps)
        for _ in range(n_iter):
            spec = fft.rfft2(est, **kw) if est.dtype == xp.float32 else fft.rfft2(
                est.astype(xp.float32), **kw)
            spec *= self.otf
            conv = fft.irfft2(spec, s=self.pshape, **kw)[region]
            conv += eps
            xp.divide(obs, conv, out=conv)
            ratio[region] = conv
            spec = fft.rfft2(ratio, **kw) if ratio.dtype == xp.float32 else fft.rfft2(
                ratio.astype(xp.float32), **kw)
            spec *= self.otf_mirror
            corr = fft.irfft2(spec, s=self.pshape, **kw)[region]
            est[region] *= corr
        if out is None:
            out = xp.empty(self.shape, dtype=self.dtype)
        out[...] = est[:h, :w]
        return out


def wiener(image: Any, psf: Any, balance: float, *, reg: Any = None, padding: str = "none",
           fast_len: bool = True, dtype: Any = "float32", out: Any = None) -> Any:
    """Wiener-Hunt deconvolution; with the defaults equal to ``skimage.restoration.wiener(
    image, psf, balance, clip=False)`` (periodic boundary)."""
    xp = get_array_module(image)
    return WienerFilter(image.shape, psf, balance, reg=reg, padding=padding, fast_len=fast_len,
                        dtype=dtype, xp=xp)(image, out=out)


def richardson_lucy(image: Any, psf: Any, num_iter: int = 30, *, padding: str = "zero",
                    fast_len: bool = True, dtype: Any = "float32", out: Any = None) -> Any:
    """Richardson-Lucy deconvolution; with ``padding="zero"`` equal to scikit-image's
    ``richardson_lucy(image, psf, num_iter, clip=False)`` (zero-padded linear convolution)."""
    xp = get_array_module(image)
    return RichardsonLucy(image.shape, psf, num_iter, padding=padding, fast_len=fast_len,
                          dtype=dtype, xp=xp)(image, out=out)
