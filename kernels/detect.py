"""Cluster detection: LoG band-pass, local maxima above a threshold, sub-pixel peak refinement.

Clusters are found once per tile on a *template*: the first cycles' frames, registered onto
cycle 1 / channel 0 and summed (:class:`TemplateBuilder`). In any one frame only the
clusters whose base matches the channel are bright; the sum over channels and cycles shows
every cluster with about the same weight, which is what detection needs.

Positions are ``(x, y) = (column, row)`` in the reference frame (cycle 1, channel 0), the
convention of the run folder's ``.locs`` files and of the synthetic instrument's truth.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from kernels._scratch import Scratch
from kernels.backend import get_array_module, get_ndimage
from kernels.bandpass import BandPass
from kernels.registration import PhaseCorrelator, phase_ramp

__all__ = [
    "ClusterDetector",
    "TemplateBuilder",
    "detect_clusters",
    "find_peaks",
    "otsu_threshold",
    "refine_peaks",
    "robust_noise",
]


def robust_noise(image: Any) -> float:
    """Noise sigma from the median absolute deviation (robust to the clusters on top)."""
    xp = get_array_module(image)
    sub = image[::2, ::2]  # a quarter of the pixels is plenty for a median
    med = xp.median(sub)
    return float(1.4826 * xp.median(xp.abs(sub - med)))


def find_peaks(image: Any, threshold: float, *, min_distance: int = 1,
               exclude_border: int | None = None) -> Any:
    """Integer ``(row, col)`` of local maxima above ``threshold`` (like ``peak_local_max``).

    A pixel is a peak when it equals the maximum of its ``(2 min_distance + 1)``-square
    neighbourhood and exceeds ``threshold``; peaks within ``exclude_border`` px of the edge
    (default ``min_distance``) are dropped. Rows are sorted by row, then column.
    """
    xp = get_array_module(image)
    ndi = get_ndimage(xp)
    size = 2 * int(min_distance) + 1
    mx = ndi.maximum_filter(image, size=size, mode="nearest")
    mask = (image == mx) & (image > threshold)
    b = int(min_distance if exclude_border is None else exclude_border)
    if b:
        mask[:b] = False
        mask[-b:] = False
        mask[:, :b] = False
        mask[:, -b:] = False
    return xp.argwhere(mask)


def _vertex(cm: Any, c0: Any, cp: Any, xp: Any) -> Any:
    """Vectorised three-point Gaussian (log-parabola) vertex, parabola where logs fail."""
    tiny = xp.float32(1e-12)
    ok = (cm > 0) & (c0 > 0) & (cp > 0)
    lm = xp.log(xp.maximum(cm, tiny))
    l0 = xp.log(xp.maximum(c0, tiny))
    lp = xp.log(xp.maximum(cp, tiny))
    den_l = lm - 2 * l0 + lp
    den_p = cm - 2 * c0 + cp
    d_log = xp.where(den_l < 0, 0.5 * (lm - lp) / xp.where(den_l < 0, den_l, -1), 0)
    d_par = xp.where(den_p < 0, 0.5 * (cm - cp) / xp.where(den_p < 0, den_p, -1), 0)
    return xp.clip(xp.where(ok & (den_l < 0), d_log, d_par), -0.5, 0.5)


def refine_peaks(image: Any, peaks: Any) -> Any:
    """Sub-pixel ``(x, y)`` float64 for integer ``(row, col)`` peaks, by a Gaussian vertex fit.

    Each axis is fitted through the peak and its two neighbours; for a Gaussian-like spot
    this is unbiased, and it needs no iteration. Peaks on the outermost pixels stay integer.
    """
    xp = get_array_module(image, peaks)
    h, w = image.shape
    r = peaks[:, 0]
    c = peaks[:, 1]
    rm = xp.clip(r - 1, 0, h - 1)
    rp = xp.clip(r + 1, 0, h - 1)
    cm = xp.clip(c - 1, 0, w - 1)
    cp = xp.clip(c + 1, 0, w - 1)
    v0 = image[r, c]
    dy = _vertex(image[rm, c], v0, image[rp, c], xp)
    dx = _vertex(image[r, cm], v0, image[r, cp], xp)
    dy = xp.where((r > 0) & (r < h - 1), dy, 0)
    dx = xp.where((c > 0) & (c < w - 1), dx, 0)
    return xp.stack([c + dx.astype(xp.float64), r + dy.astype(xp.float64)], axis=1)


def otsu_threshold(values: Any, bins: int = 256) -> float:
    """Otsu's two-class threshold of ``values`` (maximises the between-class variance)."""
    xp = get_array_module(values)
    hist, edges = xp.histogram(values, bins=bins)
    hist = hist.astype(xp.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = xp.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = xp.cumsum(hist * centres)
    mu0 = m0 / xp.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / xp.maximum(w1, 1)
    i = int(xp.argmax(w0 * w1 * (mu0 - mu1) ** 2))
    return float(edges[i + 1])


_THRESHOLDS = ("otsu", "noise")


class ClusterDetector(Scratch):
    """Detection planned for one shape: LoG band-pass, threshold, peaks, sub-pixel refinement.

    The band-pass is the negated Laplacian of Gaussian with ``log_sigma`` (default 0.75 x the
    PSF sigma): it sharpens the spots so that clusters 2.5 PSF sigma apart keep separate
    maxima even at 2:1 brightness, and it removes the smooth background.
    ``threshold`` is an absolute value in band-passed units, ``"otsu"`` (default: Otsu's
    split of the log peak heights into noise peaks and cluster peaks, which needs no noise
    model and holds for sparse and for patterned layouts) or ``"noise"`` (``k`` times the
    robust noise of the band-passed image; suits sparse tiles only).
    """

    _SCRATCH = ("_buf",)  # preallocated work buffers: not pickled (kernels._scratch)

    def __init__(self, shape: tuple[int, int], *, psf_sigma: float = 1.2,
                 log_sigma: float | None = None, threshold: float | str = "otsu",
                 k: float = 5.0, min_distance: int = 1, exclude_border: int | None = None,
                 xp: Any = None) -> None:
        if xp is None:
            import numpy as xp
        if isinstance(threshold, str) and threshold not in _THRESHOLDS:
            raise ValueError(
                f"threshold={threshold!r}; allowed values: a number, {', '.join(_THRESHOLDS)}")
        self.xp = xp
        self.shape = tuple(shape)
        sigma = 0.75 * psf_sigma if log_sigma is None else log_sigma
        self.bandpass = BandPass(shape, kind="log", low_sigma=sigma, xp=xp)
        self.threshold, self.k = threshold, float(k)
        self.min_distance, self.exclude_border = int(min_distance), exclude_border
        self._buf = xp.empty(self.shape, dtype=xp.float32)
        self.last_threshold: float | None = None

    def enhance(self, image: Any) -> Any:
        """The band-passed image (bright spots positive); a view of an internal buffer."""
        bp = self.bandpass(image, out=self._buf)
        bp *= -1
        return bp

    def __call__(self, image: Any) -> Any:
        """Cluster positions ``(N, 2)`` as ``(x, y)`` float64, on ``image``'s backend."""
        xp = self.xp
        bp = self.enhance(image)
        if self.threshold == "otsu":
            cand = find_peaks(bp, 0.0, min_distance=self.min_distance,
                              exclude_border=self.exclude_border)
            values = bp[cand[:, 0], cand[:, 1]]
            if values.size < 2:
                return xp.zeros((0, 2), dtype=xp.float64)
            thr = math.exp(otsu_threshold(xp.log(values)))
            peaks = cand[values > thr]
        else:
            thr = self.k * robust_noise(bp) if self.threshold == "noise" else float(self.threshold)
            peaks = find_peaks(bp, thr, min_distance=self.min_distance,
                               exclude_border=self.exclude_border)
        self.last_threshold = thr
        return refine_peaks(bp, peaks)


def detect_clusters(image: Any, *, psf_sigma: float = 1.2, threshold: float | str = "otsu",
                    k: float = 5.0, min_distance: int = 1) -> Any:
    """One-shot :class:`ClusterDetector`: ``(N, 2)`` ``(x, y)`` positions of clusters."""
    xp = get_array_module(image)
    return ClusterDetector(image.shape, psf_sigma=psf_sigma, threshold=threshold, k=k,
                           min_distance=min_distance, xp=xp)(image)


class TemplateBuilder(Scratch):
    """Register the first cycles' frames onto cycle 1 / channel 0 and sum them (Fourier domain).

    Frames are added with :meth:`add` as ``(cycle, channel, image)``. Registering a frame of
    one channel against another channel *of the same cycle* has no common signal (each
    cluster lights one channel per cycle), so the reference grows: cycle 1 / channel 0 first,
    then later cycles against it, then the remaining cycle-1 channels against the partial sum.
    A second pass re-registers every frame against the full template. Each frame's
    displacement is then fitted as ``drift[cycle] + offset[channel]`` (least squares), which
    averages out the individual registration errors.
    """

    def __init__(self, shape: tuple[int, int], *, registration: PhaseCorrelator | None = None,
                 refine_rounds: int = 2, xp: Any = None) -> None:
        if xp is None:
            import numpy as xp
        self.xp = xp
        self.shape = tuple(shape)
        self.pc = registration or PhaseCorrelator(self.shape, xp=xp)
        self.refine_rounds = int(refine_rounds)
        self._spectra: dict[tuple[int, int], Any] = {}
        # with an edge taper, registration uses the tapered spectra and the template is summed
        # from the untapered ones (a tapered template would lose its edge clusters)
        self._raw: dict[tuple[int, int], Any] = {}

    def add(self, cycle: int, channel: int, image: Any) -> None:
        """Keep the spectrum of one corrected frame (background need not be removed)."""
        key = (int(cycle), int(channel))
        self._spectra[key] = self.pc.spectrum(image)
        if self.pc.window is not None:
            self._raw[key] = self.pc.fft.rfft2(image.astype(self.xp.float32, copy=False),
                                               **self.pc.fft_kw)

    def add_cycle(self, cycle: int, stack: Any) -> None:
        """Add all channels of one cycle (``(C, H, W)``, channel = index) in one batched FFT."""
        specs = self.pc.spectra(stack)
        raw = None
        if self.pc.window is not None:
            raw = self.pc.fft.rfft2(stack.astype(self.xp.float32, copy=False), axes=(-2, -1),
                                    **self.pc.fft_kw)
        for k in range(stack.shape[0]):
            key = (int(cycle), k)
            self._spectra[key] = specs[k]
            if raw is not None:
                self._raw[key] = raw[k]

    def _aligned(self, key: tuple[int, int], d: tuple[float, float], out: Any = None,
                 raw: bool = False) -> Any:
        """Spectrum of frame ``key`` moved back by its displacement ``d`` = (dx, dy)."""
        xp = self.xp
        ramp = phase_ramp(self.shape, (-d[1], -d[0]), xp=xp, out=out)
        ramp *= (self._raw if raw and self._raw else self._spectra)[key]
        return ramp

    def _sum(self, disp: dict[tuple[int, int], tuple[float, float]], raw: bool = False) -> Any:
        xp = self.xp
        first = next(iter(self._spectra.values()))
        acc = xp.zeros_like(first)
        tmp = xp.empty_like(first)
        for key, d in disp.items():
            acc += self._aligned(key, d, out=tmp, raw=raw)
        return acc

    def build(self) -> tuple[Any, dict[str, Any]]:
        """Return ``(template, info)``: the summed, aligned image (float32) and the fit.

        ``info`` holds ``drift`` {cycle: (dx, dy)}, ``offset`` {channel: (dx, dy)} and
        ``displacement`` {(cycle, channel): (dx, dy)} of each frame relative to the
        reference, in pixels, ``(x, y)`` order.
        """
        import numpy as np

        if not self._spectra:
            raise ValueError("no frames added; call add(cycle, channel, image) first")
        keys = sorted(self._spectra)
        ref_key = keys[0]
        if ref_key[1] != min(k[1] for k in keys):
            raise ValueError("the first cycle must include the reference channel")
        disp: dict[tuple[int, int], tuple[float, float]] = {ref_key: (0.0, 0.0)}
        ref_spec = self._spectra[ref_key]
        first = [k for k in keys if k[0] == ref_key[0] and k != ref_key]
        later = [k for k in keys if k[0] != ref_key[0]]
        for key in later:
            sy, sx = self.pc.shift(ref_spec, self._spectra[key])
            disp[key] = (-sx, -sy)
        partial = self._sum(disp)
        for key in first:
            sy, sx = self.pc.shift(partial, self._spectra[key])
            disp[key] = (-sx, -sy)
        # second pass: every frame against the full template minus itself
        full = self._sum(disp)
        others = self.xp.empty_like(full)
        for key in keys:
            if key == ref_key:
                continue
            self._aligned(key, disp[key], out=others)
            self.xp.subtract(full, others, out=others)
            sy, sx = self.pc.shift(others, self._spectra[key])
            disp[key] = (-sx, -sy)
        cycles = sorted({k[0] for k in keys})
        channels = sorted({k[1] for k in keys})
        drift, offset = _fit_separable(disp, cycles, channels, ref_key)
        for _ in range(self.refine_rounds):
            drift, offset = self._refine(keys, ref_key, drift, offset)
        fitted = {k: (drift[k[0]][0] + offset[k[1]][0], drift[k[0]][1] + offset[k[1]][1])
                  for k in keys}
        template_spec = self._sum(fitted, raw=True)
        fft, kw = self.pc.fft, self.pc.fft_kw
        template = fft.irfft2(template_spec, s=self.shape, **kw).astype(self.xp.float32)
        resid = np.array([np.subtract(disp[k], fitted[k]) for k in keys])
        info = {
            "drift": drift,
            "offset": offset,
            "displacement": fitted,
            "measured": dict(disp),
            "fit_rms_px": float(np.sqrt((resid**2).mean())) if len(keys) > 1 else 0.0,
        }
        return template, info


    def _refine(self, keys: list[tuple[int, int]], ref_key: tuple[int, int],
                drift: dict[int, tuple[float, float]], offset: dict[int, tuple[float, float]]
                ) -> tuple[dict[int, tuple[float, float]], dict[int, tuple[float, float]]]:
        """One round of group registration: each channel's frames summed over the cycles
        (drift removed) against the template of the other channels gives that channel's
        offset; each cycle's frames summed over the channels (offsets removed) against the
        template of the other cycles gives that cycle's drift. A group holds several
        frames' clusters, so these estimates are several times less noisy than one frame's."""
        xp = self.xp
        disp = {k: (drift[k[0]][0] + offset[k[1]][0], drift[k[0]][1] + offset[k[1]][1])
                for k in keys}
        full = self._sum(disp)
        tmp = xp.empty_like(full)
        group = xp.empty_like(full)
        others = xp.empty_like(full)
        new_off = dict(offset)
        new_drift = dict(drift)
        for axis, fixed in ((1, ref_key[1]), (0, ref_key[0])):
            for g in sorted({k[axis] for k in keys}):
                if g == fixed:
                    continue
                members = [k for k in keys if k[axis] == g]
                group.fill(0)
                others[...] = full
                for k in members:
                    others -= self._aligned(k, disp[k], out=tmp)
                    # the member moved back by the *other* part of its displacement only
                    part = drift[k[0]] if axis == 1 else offset[k[1]]
                    group += self._aligned(k, part, out=tmp)
                sy, sx = self.pc.shift(others, group)
                if axis == 1:
                    new_off[g] = (-sx, -sy)
                else:
                    new_drift[g] = (-sx, -sy)
        return new_drift, new_off


def _fit_separable(disp: dict[tuple[int, int], tuple[float, float]], cycles: Sequence[int],
                   channels: Sequence[int], ref_key: tuple[int, int]
                   ) -> tuple[dict[int, tuple[float, float]], dict[int, tuple[float, float]]]:
    """Least-squares ``disp[c, k] = drift[c] + offset[k]`` with drift[ref]=offset[ref]=0."""
    import numpy as np

    cyc = [c for c in cycles if c != ref_key[0]]
    chn = [k for k in channels if k != ref_key[1]]
    keys = list(disp)
    if not cyc and not chn:
        return {ref_key[0]: (0.0, 0.0)}, {ref_key[1]: (0.0, 0.0)}
    a = np.zeros((len(keys), len(cyc) + len(chn)))
    b = np.array([disp[k] for k in keys], dtype=np.float64)
    for i, (c, k) in enumerate(keys):
        if c in cyc:
            a[i, cyc.index(c)] = 1.0
        if k in chn:
            a[i, len(cyc) + chn.index(k)] = 1.0
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    drift = {ref_key[0]: (0.0, 0.0)}
    drift.update({c: (float(sol[i, 0]), float(sol[i, 1])) for i, c in enumerate(cyc)})
    offset = {ref_key[1]: (0.0, 0.0)}
    offset.update({k: (float(sol[len(cyc) + i, 0]), float(sol[len(cyc) + i, 1]))
                   for i, k in enumerate(chn)})
    return drift, offset

