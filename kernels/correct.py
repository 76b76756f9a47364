"""Dark/offset and flat-field correction: ``(raw - dark) / flat`` in float32, in place if asked.

The camera adds a fixed offset (and, per pixel, a dark frame) and each pixel has its own
sensitivity (photo-response non-uniformity, vignetting). Correcting both first means every
later step sees counts proportional to photons.
"""

from __future__ import annotations

from typing import Any

from kernels._scratch import Scratch
from kernels.backend import get_array_module

__all__ = ["FlatFieldCorrector", "correct_frame"]


def _check_shape(name: str, a: Any, shape: tuple[int, ...]) -> None:
    if getattr(a, "ndim", 0) and tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(a.shape)} but the frame is {tuple(shape)}; "
            f"pass a scalar or an array of the frame's shape"
        )


class FlatFieldCorrector(Scratch):
    """Precomputed dark frame and inverse flat for one frame shape, reused every frame.

    ``dark`` is a scalar offset or a per-pixel dark frame (ADU); ``flat`` is the relative
    pixel response (mean about 1) or None. Zero or negative flat values (dead pixels) are
    an error, because dividing by them would put inf/NaN into every later kernel.
    """

    def __init__(self, shape: tuple[int, int], dark: Any = 0.0, flat: Any = None, *,
                 xp: Any = None, dtype: Any = "float32") -> None:
        if xp is None:
            xp = get_array_module(*(a for a in (dark, flat) if hasattr(a, "shape")))
        self.xp = xp
        self.shape = tuple(int(s) for s in shape)
        self.dtype = xp.dtype(dtype)
        if hasattr(dark, "shape"):
            _check_shape("dark", dark, self.shape)
            self.dark = xp.asarray(dark, dtype=self.dtype)
        else:
            self.dark = self.dtype.type(dark)
        if flat is None:
            self.inv_flat = None
        else:
            _check_shape("flat", flat, self.shape)
            f = xp.asarray(flat, dtype=self.dtype)
            if bool((f <= 0).any()):
                raise ValueError(
                    "flat has zero or negative pixels; replace dead pixels by the local mean "
                    "(or 1.0) before building the corrector"
                )
            self.inv_flat = (1.0 / f).astype(self.dtype)

    def __call__(self, raw: Any, out: Any = None) -> Any:
        """Return ``(raw - dark) * (1/flat)`` as float32 (written into ``out`` if given)."""
        xp = self.xp
        _check_shape("raw frame", raw, self.shape)
        if out is None:
            out = xp.empty(self.shape, dtype=self.dtype)
        if hasattr(self.dark, "shape"):
            xp.subtract(raw, self.dark, out=out)
        else:
            xp.copyto(out, raw, casting="unsafe")
            if self.dark:
                out -= self.dark
        if self.inv_flat is not None:
            out *= self.inv_flat
        return out


def correct_frame(raw: Any, dark: Any = 0.0, flat: Any = None, *, out: Any = None) -> Any:
    """One-shot ``(raw - dark) / flat`` in float32; build a :class:`FlatFieldCorrector` to reuse."""
    xp = get_array_module(raw)
    return FlatFieldCorrector(raw.shape, dark, flat, xp=xp)(raw, out=out)
