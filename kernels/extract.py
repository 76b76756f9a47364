"""Per-cluster intensity extraction at sub-pixel positions, per channel after registration.

Registration moves the *positions*, not the images: for a frame displaced by ``(dx, dy)``
from the reference, cluster ``i`` is sampled at ``positions[i] + (dx, dy)``. That costs
O(clusters) instead of resampling every pixel of every frame.

``method="psf"`` (default) is the least-squares amplitude of a Gaussian PSF centred on the
cluster over a ``(2 radius + 1)``-square window, ``sum(w (p - b)) / sum(w^2)``: a matched
filter that uses all the cluster's photons and returns its integrated brightness.
``method="bilinear"`` samples the image at the position (``ndimage.map_coordinates`` with
``order=1``), the cheap reference.
"""

from __future__ import annotations

import math
from typing import Any

from kernels.backend import get_array_module
from kernels.background import sample_background

__all__ = ["extract_channels", "extract_intensities"]

_METHODS = ("psf", "bilinear")


def _background_at(bg: Any, pos: Any, xp: Any) -> Any:
    """Background values at ``pos``: None, a scalar, a full frame, or a ``(grid, block)`` pair."""
    if bg is None:
        return None
    if isinstance(bg, tuple):
        grid, block = bg
        return sample_background(grid, pos, block)
    if getattr(bg, "ndim", 0) == 2:
        return _bilinear(bg, pos, xp)
    return xp.float32(bg)


def _bilinear(image: Any, pos: Any, xp: Any) -> Any:
    h, w = image.shape
    x = xp.clip(pos[:, 0], 0, w - 1)
    y = xp.clip(pos[:, 1], 0, h - 1)
    x0 = xp.minimum(xp.floor(x).astype(xp.int64), max(w - 2, 0))
    y0 = xp.minimum(xp.floor(y).astype(xp.int64), max(h - 2, 0))
    fx = (x - x0).astype(xp.float32)
    fy = (y - y0).astype(xp.float32)
    x1 = xp.minimum(x0 + 1, w - 1)
    y1 = xp.minimum(y0 + 1, h - 1)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bot = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(xp.float32)


def extract_intensities(image: Any, positions: Any, *, offset: tuple[float, float] = (0.0, 0.0),
                        method: str = "psf", sigma: float = 1.2, radius: int = 2,
                        background: Any = None, out: Any = None, outside: str = "clamp") -> Any:
    """Intensity of each cluster of ``positions`` ((N, 2), ``(x, y)``) in ``image``, float32.

    ``offset`` ``(dx, dy)`` is the frame's displacement from the reference frame.
    ``background`` is subtracted: a scalar, a full frame, or ``(grid, block)`` from
    :func:`kernels.background.background_grid` (sampled at each cluster, cheapest).
    ``outside``: for a cluster whose centre lies outside the frame in this image (drift moved
    it out of view), ``"clamp"`` measures at the nearest in-frame position, ``"nan"`` returns
    NaN (no signal: the base caller makes it a no-call instead of a likely wrong call).
    """
    if outside not in ("clamp", "nan"):
        raise ValueError(f"outside={outside!r}; allowed values: clamp, nan")
    xp = get_array_module(image, positions)
    if method not in _METHODS:
        raise ValueError(f"method={method!r}; allowed values: {', '.join(_METHODS)}")
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must be (N, 2) as (x, y); got shape {positions.shape}")
    n = positions.shape[0]
    if out is None:
        out = xp.empty(n, dtype=xp.float32)
    if n == 0:
        return out
    if offset[0] or offset[1]:
        pos = positions + xp.asarray([offset[0], offset[1]], dtype=positions.dtype)
    else:
        pos = positions
    bg = _background_at(background, pos, xp)
    if method == "bilinear":
        val = _bilinear(image, pos, xp)
        if bg is not None:
            val -= bg
        out[...] = val
        if outside == "nan":
            _nan_outside(out, pos, *image.shape, xp)
        return out
    h, w = image.shape
    if h < 2 * radius + 1 or w < 2 * radius + 1:
        raise ValueError(f"image {image.shape} is smaller than the {2 * radius + 1}-px window")
    k = xp.arange(-radius, radius + 1)
    # A cluster that has drifted out of the frame has no signal here; it is measured at the
    # nearest in-frame position (bounded values, as with edge replication) rather than
    # extrapolated. Windows are then clamped inside the frame: a cluster near the edge gets
    # an off-centre window whose weights, computed from its real pixel positions, stay right.
    px = xp.clip(pos[:, 0:1], 0, w - 1)
    py = xp.clip(pos[:, 1:2], 0, h - 1)
    cx = xp.clip(xp.rint(px[:, 0]).astype(xp.int64), radius, w - 1 - radius)
    cy = xp.clip(xp.rint(py[:, 0]).astype(xp.int64), radius, h - 1 - radius)
    # Per-axis Gaussian weights at the window's pixel centres (unit integral), separable.
    # A camera pixel integrates the PSF over its area, which widens it by the variance of a
    # unit box (1/12 px^2); the weights use that width so the estimate is unbiased.
    sigma = math.sqrt(sigma * sigma + 1.0 / 12.0)
    norm = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
    ux = (cx[:, None] + k[None, :] - px).astype(xp.float32)
    uy = (cy[:, None] + k[None, :] - py).astype(xp.float32)
    wx = xp.exp(ux * ux * xp.float32(-0.5 / sigma**2)) * xp.float32(norm)
    wy = xp.exp(uy * uy * xp.float32(-0.5 / sigma**2)) * xp.float32(norm)
    # gather the (N, K, K) windows with one flat take: base index + fixed window offsets
    offs = (k[:, None] * w + k[None, :]).reshape(-1)
    win = xp.take(image.reshape(-1), (cy * w + cx)[:, None] + offs[None, :])
    win = win.reshape(n, k.size, k.size)
    # sum_ij wy_i wx_j p_ij as two small contractions (no (N, K, K) weight array)
    num = xp.einsum("ni,ni->n", xp.einsum("nij,nj->ni", win, wx), wy)
    sw2 = (wy * wy).sum(axis=1) * (wx * wx).sum(axis=1)
    if bg is not None:
        num -= bg * (wy.sum(axis=1) * wx.sum(axis=1))
    xp.divide(num, sw2, out=out)
    if outside == "nan":
        _nan_outside(out, pos, h, w, xp)
    return out


def _nan_outside(out: Any, pos: Any, h: int, w: int, xp: Any) -> None:
    gone = (pos[:, 0] < -0.5) | (pos[:, 0] > w - 0.5) | (pos[:, 1] < -0.5) | (pos[:, 1] > h - 0.5)
    out[gone] = xp.nan


def extract_channels(images: Any, positions: Any, offsets: Any, *, method: str = "psf",
                     sigma: float = 1.2, radius: int = 2, backgrounds: Any = None,
                     out: Any = None) -> Any:
    """Intensities ``(N, C)`` for a ``(C, H, W)`` stack, channel ``c`` sampled at ``+offsets[c]``.

    ``offsets`` is ``(C, 2)`` as ``(dx, dy)``; ``backgrounds`` is None or one background
    per channel (as for :func:`extract_intensities`).
    """
    xp = get_array_module(images, positions)
    c = images.shape[0]
    if len(offsets) != c:
        raise ValueError(f"{len(offsets)} offsets for {c} channels; give one (dx, dy) per channel")
    if out is None:
        out = xp.empty((positions.shape[0], c), dtype=xp.float32)
    for ch in range(c):
        bg = None if backgrounds is None else backgrounds[ch]
        out[:, ch] = extract_intensities(images[ch], positions,
                                         offset=(float(offsets[ch][0]), float(offsets[ch][1])),
                                         method=method, sigma=sigma, radius=radius, background=bg)
    return out
