"""Smooth background estimation on a coarse grid: block percentiles, smoothed, interpolated.

The flow-cell background is low-frequency (a +-20% gradient over the tile), so it is
estimated once per ``block x block`` cell from a low percentile (robust to the clusters on
top) and interpolated bilinearly. The chain never builds the full-resolution background:
it samples the grid at the cluster positions (:func:`sample_background`), which costs
O(clusters) instead of O(pixels).
"""

from __future__ import annotations

from typing import Any

from kernels.backend import get_array_module, get_ndimage

__all__ = [
    "background_grid",
    "estimate_background",
    "expand_background",
    "sample_background",
    "subtract_background",
]


def background_grid(image: Any, block: int = 32, *, percentile: float = 30.0,
                    smooth: float = 1.0) -> Any:
    """Per-block ``percentile`` of ``image`` on a ``(H/block, W/block)`` grid, float32.

    ``smooth`` is the sigma (in grid cells) of a Gaussian that evens out cell-to-cell noise;
    0 turns it off. The frame sides must be multiples of ``block``.
    """
    xp = get_array_module(image)
    h, w = image.shape
    if block < 2 or h % block or w % block:
        raise ValueError(
            f"block={block} must be >= 2 and divide the frame shape {image.shape}; "
            f"choose a block such as 16, 32 or 64 that divides both sides"
        )
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile={percentile} must be within 0..100")
    ny, nx = h // block, w // block
    cells = image.reshape(ny, block, nx, block).transpose(0, 2, 1, 3).reshape(ny, nx, block * block)
    k = int(round(percentile / 100.0 * (block * block - 1)))
    grid = xp.partition(cells, k, axis=-1)[..., k].astype(xp.float32)
    if smooth > 0:
        grid = get_ndimage(xp).gaussian_filter(grid, smooth, mode="nearest")
    return grid


def _interp_matrix(xp: Any, n_out: int, n_grid: int, block: int) -> Any:
    """(n_out, n_grid) bilinear weights from cell centres to pixels, edges held constant."""
    pos = (xp.arange(n_out, dtype=xp.float32) + 0.5) / block - 0.5
    pos = xp.clip(pos, 0, n_grid - 1)
    i0 = xp.floor(pos).astype(xp.int64)
    i0 = xp.minimum(i0, max(n_grid - 2, 0))
    f = pos - i0
    m = xp.zeros((n_out, n_grid), dtype=xp.float32)
    rows = xp.arange(n_out)
    if n_grid == 1:
        m[:, 0] = 1.0
        return m
    m[rows, i0] = 1.0 - f
    m[rows, i0 + 1] += f
    return m


def expand_background(grid: Any, shape: tuple[int, int], block: int, *, out: Any = None) -> Any:
    """Bilinearly interpolate a background grid to a full ``shape`` frame (two matrix products)."""
    xp = get_array_module(grid)
    ay = _interp_matrix(xp, shape[0], grid.shape[0], block)
    ax = _interp_matrix(xp, shape[1], grid.shape[1], block)
    tmp = grid @ ax.T
    if out is None:
        return ay @ tmp
    return xp.matmul(ay, tmp, out=out)


def estimate_background(image: Any, block: int = 32, *, percentile: float = 30.0,
                        smooth: float = 1.0, out: Any = None) -> Any:
    """The full-resolution smooth background of ``image`` (float32)."""
    grid = background_grid(image, block, percentile=percentile, smooth=smooth)
    return expand_background(grid, image.shape, block, out=out)


def subtract_background(image: Any, block: int = 32, *, percentile: float = 30.0,
                        smooth: float = 1.0, out: Any = None) -> Any:
    """``image - estimate_background(image)``; ``out`` may be ``image`` itself (in place)."""
    xp = get_array_module(image)
    bg = estimate_background(image, block, percentile=percentile, smooth=smooth)
    if out is None:
        out = xp.empty(image.shape, dtype=xp.float32)
    return xp.subtract(image, bg, out=out)


def sample_background(grid: Any, positions: Any, block: int, *, out: Any = None) -> Any:
    """Background at sub-pixel cluster ``positions`` ((N, 2) as (x, y)), bilinear on the grid."""
    xp = get_array_module(grid, positions)
    ny, nx = grid.shape
    gx = xp.clip((positions[:, 0] + 0.5) / block - 0.5, 0, nx - 1)
    gy = xp.clip((positions[:, 1] + 0.5) / block - 0.5, 0, ny - 1)
    x0 = xp.minimum(xp.floor(gx).astype(xp.int64), max(nx - 2, 0))
    y0 = xp.minimum(xp.floor(gy).astype(xp.int64), max(ny - 2, 0))
    fx = (gx - x0).astype(xp.float32)
    fy = (gy - y0).astype(xp.float32)
    x1 = xp.minimum(x0 + 1, nx - 1)
    y1 = xp.minimum(y0 + 1, ny - 1)
    top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
    bot = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
    res = top * (1 - fy) + bot * fy
    if out is None:
        return res.astype(xp.float32, copy=False)
    out[...] = res
    return out
