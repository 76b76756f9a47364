"""The per-tile image chain: raw frames in, per-cluster intensities out, one cycle at a time.

For each tile the chain keeps the first ``template_cycles`` cycles, registers and sums them
into a template (:class:`kernels.detect.TemplateBuilder`), detects the clusters on it, and
from then on processes every cycle as it arrives:

1. dark/offset and flat-field correction of the four channel frames (preallocated float32);
2. one batched real FFT of the four channels; the channel spectra are moved by their fixed channel offsets
   (a phase ramp) and summed, and the sum is phase-correlated against the template: one
   inverse FFT gives the cycle's drift, using every cluster of the tile;
3. a coarse background grid per channel (block percentiles);
4. PSF-weighted extraction at ``position + drift + channel offset``, background subtracted.

The images are never resampled: registration moves the sampling positions. Results are
float32 ``(n_clusters, n_channels)`` per cycle, the input of base calling. Cycles
1..``template_cycles`` come out together once the template exists (the chain's lag);
later cycles come out as they are pushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernels._scratch import Scratch
from kernels.backend import get_array_module
from kernels.background import background_grid
from kernels.correct import FlatFieldCorrector
from kernels.detect import ClusterDetector, TemplateBuilder
from kernels.extract import extract_intensities
from kernels.registration import PhaseCorrelator, phase_ramp

__all__ = ["ChainConfig", "CycleResult", "TileChain"]

_REG_METHODS = ("fit", "dft")
_REG_MODES = ("combined", "per_channel")
_EXTRACTIONS = ("psf", "bilinear")


def _bad(key: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"chain config {key}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class ChainConfig:
    """Knobs of the per-tile chain, validated once at construction."""

    psf_sigma: float = 1.2
    n_channels: int = 4
    template_cycles: int = 4
    background_block: int = 32
    background_percentile: float = 30.0
    registration: str = "fit"  # "fit" (band-weighted Gaussian peak) or "dft" (upsampled DFT)
    registration_mode: str = "combined"  # channels summed after offsets, or one per channel
    registration_sigma: float = 1.2
    registration_low_cut: float = 16.0
    registration_taper: int = 32  # px of raised-cosine edge taper before the FFT (0: none)
    upsample_factor: int = 20
    extraction: str = "psf"
    extraction_radius: int = 2
    detection_threshold: float | str = "otsu"
    out_of_frame: str = "nan"  # a cluster drifted out of view: "nan" (no-call downstream) or "clamp"
    edge_margin: float = 2.0  # px: clusters must stay this far inside every template frame

    def __post_init__(self) -> None:
        if not 0.5 <= self.psf_sigma <= 5.0:
            raise _bad("psf_sigma", self.psf_sigma, "0.5 to 5.0 px")
        if self.n_channels < 1:
            raise _bad("n_channels", self.n_channels, ">= 1")
        if self.template_cycles < 1:
            raise _bad("template_cycles", self.template_cycles, ">= 1")
        if self.background_block < 2:
            raise _bad("background_block", self.background_block, ">= 2 dividing the tile")
        if not 0 <= self.background_percentile <= 100:
            raise _bad("background_percentile", self.background_percentile, "0 to 100")
        if self.registration not in _REG_METHODS:
            raise _bad("registration", self.registration, ", ".join(_REG_METHODS))
        if self.registration_mode not in _REG_MODES:
            raise _bad("registration_mode", self.registration_mode, ", ".join(_REG_MODES))
        if self.registration_taper < 0:
            raise _bad("registration_taper", self.registration_taper, ">= 0 px")
        if self.upsample_factor < 1:
            raise _bad("upsample_factor", self.upsample_factor, ">= 1")
        if self.extraction not in _EXTRACTIONS:
            raise _bad("extraction", self.extraction, ", ".join(_EXTRACTIONS))
        if self.extraction_radius < 1:
            raise _bad("extraction_radius", self.extraction_radius, ">= 1")
        if self.out_of_frame not in ("nan", "clamp"):
            raise _bad("out_of_frame", self.out_of_frame, "nan, clamp")
        if isinstance(self.detection_threshold, str) and self.detection_threshold not in (
                "otsu", "noise"):
            raise _bad("detection_threshold", self.detection_threshold, "a number, otsu, noise")


@dataclass
class CycleResult:
    """One processed cycle: intensities ``(N, C)`` float32 and the cycle's drift ``(dx, dy)``."""

    cycle: int
    intensities: Any
    drift: tuple[float, float]


class TileChain(Scratch):
    """Streaming per-tile processing from raw uint16 frames to cluster intensities.

    ``push(cycle, frames)`` takes a ``(C, H, W)`` raw stack (on the chain's backend) and
    returns the list of :class:`CycleResult` that became available. ``dark``/``flat`` are
    as for :class:`kernels.correct.FlatFieldCorrector`; ``xp`` is the array module the
    frames live in (the chain never moves them).
    """

    _SCRATCH = ("_corr", "_acc", "_tmp")  # preallocated work buffers: not pickled (kernels._scratch)
    _DERIVED = ("_ramps",)

    def __init__(self, shape: tuple[int, int], config: ChainConfig | None = None, *,
                 dark: Any = 0.0, flat: Any = None, xp: Any = None) -> None:
        self.config = cfg = config or ChainConfig()
        if xp is None:
            xp = get_array_module(*(a for a in (dark, flat) if hasattr(a, "shape")))
        self.xp = xp
        self.shape = (int(shape[0]), int(shape[1]))
        h, w = self.shape
        if h % cfg.background_block or w % cfg.background_block:
            raise _bad("background_block", cfg.background_block,
                       f"a block size that divides the tile shape {self.shape}")
        c = cfg.n_channels
        self.correct = FlatFieldCorrector(self.shape, dark, flat, xp=xp)
        self.pc = PhaseCorrelator(self.shape, method=cfg.registration,
                                  sigma=cfg.registration_sigma, low_cut=cfg.registration_low_cut,
                                  upsample_factor=cfg.upsample_factor,
                                  taper=cfg.registration_taper or None, xp=xp)
        self.detector = ClusterDetector(self.shape, psf_sigma=cfg.psf_sigma,
                                        threshold=cfg.detection_threshold, xp=xp)
        # preallocated hot-path buffers
        self._corr = xp.empty((c, h, w), dtype=xp.float32)
        self._acc = xp.empty((h, w // 2 + 1), dtype=xp.complex64)
        self._tmp = xp.empty((h, w // 2 + 1), dtype=xp.complex64)
        self._held: list[tuple[int, Any]] = []
        self._builder: TemplateBuilder | None = TemplateBuilder(self.shape, registration=self.pc,
                                                                xp=xp)
        self.positions: Any = None
        self.template: Any = None
        self.template_info: dict[str, Any] = {}
        self.offsets: list[tuple[float, float]] = [(0.0, 0.0)] * c
        self._template_spec: Any = None
        self._ramps: list[Any] = []

    def _rebuild_derived(self) -> None:
        # the ramps that undo each channel's fixed offset follow from the offsets
        self._ramps = [phase_ramp(self.shape, (-o[1], -o[0]), xp=self.xp) for o in self.offsets] if self.template is not None else []

    # -- template ----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once the template is built and clusters are known."""
        return self.positions is not None

    def _check_frames(self, frames: Any) -> None:
        want = (self.config.n_channels, *self.shape)
        if tuple(frames.shape) != want:
            raise ValueError(f"frames have shape {tuple(frames.shape)}; expected {want} "
                             f"(channels, rows, cols)")

    def push(self, cycle: int, frames: Any) -> list[CycleResult]:
        """Feed one cycle's raw frames; return the cycles whose intensities are now known."""
        self._check_frames(frames)
        if self.ready:
            return [self.process_cycle(cycle, frames)]
        xp = self.xp
        assert self._builder is not None
        for k in range(self.config.n_channels):
            self.correct(frames[k], out=self._corr[k])
        self._builder.add_cycle(cycle, self._corr)
        # keep the raw frames of the template cycles (the caller's buffer may be reused)
        self._held.append((cycle, xp.array(frames, copy=True)))
        if len(self._held) < self.config.template_cycles:
            return []
        self._build_template()
        held, self._held = self._held, []
        return [self.process_cycle(c, f) for c, f in held]

    def _build_template(self) -> None:
        xp = self.xp
        cfg = self.config
        assert self._builder is not None
        template, info = self._builder.build()
        self._builder = None  # frees the kept spectra
        self.template, self.template_info = template, info
        self.offsets = [info["offset"].get(k, (0.0, 0.0)) for k in range(cfg.n_channels)]
        pos = self.detector(template)
        # keep clusters that stay inside every template frame (the summed template wraps at
        # the edges, and a cluster outside a frame has no intensity there)
        disp = list(info["displacement"].values())
        dx = [d[0] for d in disp]
        dy = [d[1] for d in disp]
        h, w = self.shape
        m = cfg.edge_margin
        keep = ((pos[:, 0] + min(dx) >= m) & (pos[:, 0] + max(dx) <= w - 1 - m)
                & (pos[:, 1] + min(dy) >= m) & (pos[:, 1] + max(dy) <= h - 1 - m))
        self.positions = xp.ascontiguousarray(pos[keep])
        self._template_spec = self.pc.spectrum(template)
        self._rebuild_derived()  # the ramps that move channel k back by its offset (row, col) = -(dy, dx)

    # -- per cycle ---------------------------------------------------------------------
    def register_cycle(self, corrected: Any) -> tuple[float, float]:
        """Drift ``(dx, dy)`` of a corrected ``(C, H, W)`` cycle relative to the reference."""
        xp = self.xp
        cfg = self.config
        specs = self.pc.spectra(corrected)  # one batched FFT for all channels
        if cfg.registration_mode == "combined":
            acc = self._acc
            for k in range(cfg.n_channels):
                if k == 0:
                    xp.multiply(specs[k], self._ramps[k], out=acc)
                else:
                    xp.multiply(specs[k], self._ramps[k], out=self._tmp)
                    acc += self._tmp
            sy, sx = self.pc.shift(self._template_spec, acc)
            return (-sx, -sy)
        est = []
        for k in range(cfg.n_channels):
            sy, sx = self.pc.shift(self._template_spec, specs[k])
            est.append((-sx - self.offsets[k][0], -sy - self.offsets[k][1]))
        import numpy as np

        med = np.median(np.asarray(est), axis=0)
        return (float(med[0]), float(med[1]))

    def process_cycle(self, cycle: int, frames: Any, out: Any = None) -> CycleResult:
        """Correct, register and extract one cycle (template must exist); ``out`` (N, C)."""
        if not self.ready:
            raise RuntimeError(
                f"cycle {cycle}: the template is not built yet; push() the first "
                f"{self.config.template_cycles} cycles first")
        self._check_frames(frames)
        xp = self.xp
        cfg = self.config
        n = self.positions.shape[0]
        if out is None:
            out = xp.empty((n, cfg.n_channels), dtype=xp.float32)
        elif tuple(out.shape) != (n, cfg.n_channels) or out.dtype != xp.float32:
            raise ValueError(f"out must be float32 of shape {(n, cfg.n_channels)}; "
                             f"got {out.dtype} {tuple(out.shape)}")
        corr = self._corr
        for k in range(cfg.n_channels):
            self.correct(frames[k], out=corr[k])
        drift = self.register_cycle(corr)
        for k in range(cfg.n_channels):
            grid = background_grid(corr[k], cfg.background_block,
                                   percentile=cfg.background_percentile)
            off = (drift[0] + self.offsets[k][0], drift[1] + self.offsets[k][1])
            extract_intensities(corr[k], self.positions, offset=off, method=cfg.extraction,
                                sigma=cfg.psf_sigma, radius=cfg.extraction_radius,
                                background=(grid, cfg.background_block), out=out[:, k],
                                outside=cfg.out_of_frame)
        return CycleResult(cycle=int(cycle), intensities=out, drift=drift)
