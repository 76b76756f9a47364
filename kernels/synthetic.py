"""The synthetic flow-cell instrument: a seeded, deterministic 4-channel SBS imager.

A product feature (demo, soak tests, training) and the ground truth every kernel is scored
against. It draws a random reference genome, places clusters on a tile (random Poisson or
patterned hex layout), gives each cluster a read from the genome, runs the
sequencing-by-synthesis signal model (phasing/prephasing, signal decay, dye crosstalk) and
renders camera frames (Gaussian PSF, background gradient, shot and read noise, gain, offset,
clip). It also returns the per-cluster intensities an ideal extraction would measure, so
base calling can be tested on many cycles without rendering every image.

Geometry conventions (used by :class:`TileTruth` and every rendered frame):

* Pixel ``(row, col)`` has its centre at ``(x, y) = (col, row)``; positions are ``(x, y)``.
* Positions are in the reference frame: cycle 1, channel 0.
* The image of cycle ``c`` (1-based), channel ``k`` shows the reference scene translated by
  ``shifts[c - 1] + channel_offsets[k]``: a cluster at ``p`` appears at
  ``p + shifts[c - 1] + channel_offsets[k]`` (content moves by ``+dx`` in x and ``+dy`` in y).
  ``shifts[0]`` and ``channel_offsets[0]`` are zero by definition.
* Clusters whose content drifts out of the frame in some cycle stay in the truth (their
  sequence and position are still known); they are simply not visible (or partly visible) in
  that frame. Detection/extraction scoring should restrict itself to clusters that stay in
  view, e.g. with :meth:`TileTruth.in_view`.

The instrument is NumPy-only: it is a data source, not a hot-path kernel. Callers that want
device arrays copy the frames themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import erf

from kernels.phasing import phasing_matrix

__all__ = [
    "BASES",
    "DEFAULT_CROSSTALK",
    "InstrumentParams",
    "RESOLVABLE_DISTANCE",
    "SyntheticInstrument",
    "TileTruth",
]

#: Base letters in code order: A, C, G, T = 0, 1, 2, 3. Channel ``k`` images dye ``k``.
BASES = "ACGT"

#: Dye crosstalk ``M[k, b]``: the fraction of dye ``b``'s signal seen in channel ``k``.
#: A/C and G/T share overlapping emission spectra (off-diagonals 0.15 to 0.30); the other
#: pairs leak a little.
DEFAULT_CROSSTALK: tuple[tuple[float, ...], ...] = (
    (1.00, 0.25, 0.02, 0.01),
    (0.18, 1.00, 0.01, 0.02),
    (0.02, 0.01, 1.00, 0.22),
    (0.01, 0.02, 0.28, 1.00),
)

_LAYOUTS = ("random", "patterned")
# Bases appended to each read beyond n_cycles, so prephased molecules (ahead of the cycle)
# still have a template to read. P(ahead by k) ~ (n q)^k / k!, negligible past 8.
_READ_EXTRA = 8
# SeedSequence spawn-key tags, one per random stream, so every stream is independent and
# reproducible for (seed, tile, cycle, channel) whatever the call order.
_TAG_GENOME, _TAG_TILE, _TAG_FRAME, _TAG_INTENSITY, _TAG_SHIFTS = 1, 2, 3, 4, 5
_SATURATION = 65535
#: px: clusters closer than this to another are one spot to a detector (matching radius)
RESOLVABLE_DISTANCE = 1.5


def _err(key: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"InstrumentParams.{key}={value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class InstrumentParams:
    """Everything that defines a synthetic run; defaults are DESIGN.md's reference assay.

    Units: positions and lengths in pixels, signal in photo-electrons (e-), camera output in
    ADU. ``brightness_median`` is a cluster's total (PSF-integrated) flux in one cycle, one
    channel, at cycle 1 with every molecule in phase.
    """

    tile_shape: tuple[int, int] = (256, 256)
    layout: str = "random"
    density: float = 0.005  # clusters per px^2 (random layout)
    pitch: float = 5.0  # hex grid pitch in px (patterned layout)
    occupancy: float = 0.75  # fraction of hex sites with a cluster (patterned layout)
    psf_sigma: float = 1.2
    n_cycles: int = 150
    brightness_median: float = 2000.0  # e-, total flux per cluster
    brightness_cv: float = 0.30
    background: float = 100.0  # e- per px
    background_gradient: float = 0.20  # +- fraction, low-frequency
    read_noise: float = 1.6  # e- rms
    gain: float = 0.5  # ADU per e-
    offset: float = 100.0  # ADU
    crosstalk: tuple[tuple[float, ...], ...] = DEFAULT_CROSSTALK
    phasing: float = 0.002  # per cycle: fraction of molecules that fail to incorporate
    prephasing: float = 0.001  # per cycle: fraction that incorporate two bases
    decay: float = 0.003  # per cycle signal loss
    max_drift: float = 15.0  # px: per-cycle stage shift drawn in [-max_drift, max_drift]
    channel_offset_range: tuple[float, float] = (1.0, 2.0)  # px magnitude of channels 1..3
    genome_length: int = 200_000
    both_strands: bool = True
    intensity_jitter: float = 0.02  # per cluster, per cycle multiplicative (focus, laser)

    def __post_init__(self) -> None:
        ts = self.tile_shape
        if (
            not isinstance(ts, tuple)
            or len(ts) != 2
            or not all(isinstance(v, (int, np.integer)) and v >= 16 for v in ts)
        ):
            raise _err("tile_shape", ts, "a tuple of two ints >= 16, e.g. (256, 256)")
        if self.layout not in _LAYOUTS:
            raise _err("layout", self.layout, f"one of {_LAYOUTS}")
        if not 0.0 < self.density <= 0.1:
            raise _err("density", self.density, "0 < density <= 0.1 clusters per px^2")
        if not 2.0 <= self.pitch <= 100.0:
            raise _err("pitch", self.pitch, "2 <= pitch <= 100 px")
        if not 0.0 < self.occupancy <= 1.0:
            raise _err("occupancy", self.occupancy, "0 < occupancy <= 1")
        if not 0.5 <= self.psf_sigma <= 5.0:
            raise _err("psf_sigma", self.psf_sigma, "0.5 <= psf_sigma <= 5 px (assay: 1.0 to 1.5)")
        if not isinstance(self.n_cycles, (int, np.integer)) or not 1 <= self.n_cycles <= 1000:
            raise _err("n_cycles", self.n_cycles, "an int in 1..1000")
        if not self.brightness_median > 0:
            raise _err("brightness_median", self.brightness_median, "> 0 e-")
        if not 0.0 <= self.brightness_cv <= 2.0:
            raise _err("brightness_cv", self.brightness_cv, "0 <= brightness_cv <= 2")
        if not self.background >= 0:
            raise _err("background", self.background, ">= 0 e- per px")
        if not 0.0 <= self.background_gradient < 1.0:
            raise _err("background_gradient", self.background_gradient, "0 <= value < 1")
        if not self.read_noise >= 0:
            raise _err("read_noise", self.read_noise, ">= 0 e-")
        if not self.gain > 0:
            raise _err("gain", self.gain, "> 0 ADU per e-")
        if not 0 <= self.offset < _SATURATION:
            raise _err("offset", self.offset, f"0 <= offset < {_SATURATION} ADU")
        m = np.asarray(self.crosstalk, dtype=float)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or np.any(m < 0):
            raise _err("crosstalk", self.crosstalk, "a 4x4 tuple of tuples of non-negative floats")
        if abs(np.linalg.det(m)) < 1e-3:
            raise _err("crosstalk", self.crosstalk, "an invertible matrix (det >= 1e-3)")
        for key in ("phasing", "prephasing", "decay"):
            v = getattr(self, key)
            if not 0.0 <= v <= 0.05:
                raise _err(key, v, "0 <= value <= 0.05 per cycle (assay 0.2%/0.1%/0.3%)")
        if self.phasing + self.prephasing >= 0.5:
            raise _err("phasing", self.phasing, "phasing + prephasing < 0.5")
        if not 0.0 <= self.max_drift <= min(self.tile_shape) / 2:
            raise _err("max_drift", self.max_drift, "0 <= max_drift <= half the tile size")
        lo, hi = self.channel_offset_range
        if not 0.0 <= lo <= hi <= 10.0:
            raise _err("channel_offset_range", self.channel_offset_range, "0 <= lo <= hi <= 10 px")
        if not self.n_cycles + _READ_EXTRA + 1 <= self.genome_length <= 100_000_000:
            raise _err(
                "genome_length", self.genome_length, f"{self.n_cycles + _READ_EXTRA + 1}..1e8 bases"
            )
        if not 0.0 <= self.intensity_jitter <= 0.5:
            raise _err("intensity_jitter", self.intensity_jitter, "0 <= value <= 0.5")

    @property
    def crosstalk_matrix(self) -> np.ndarray:
        """The crosstalk as a (4, 4) float64 array, ``observed = M @ dye``."""
        return np.asarray(self.crosstalk, dtype=np.float64)


@dataclass(frozen=True)
class TileTruth:
    """Ground truth for one tile (see the module docstring for the geometry conventions).

    positions: (N, 2) float64 ``(x, y)`` in reference (cycle 1, channel 0) pixels.
    sequences: (N, n_cycles) uint8 base codes A, C, G, T = 0..3 (what a perfect caller emits).
    brightness: (N,) float64 total flux at cycle 1 in e-.
    shifts: (n_cycles, 2) float64 per-cycle ``(dx, dy)``; ``shifts[0]`` is zero.
    channel_offsets: (4, 2) float64 per-channel ``(dx, dy)``; ``channel_offsets[0]`` is zero.
    genome_start, strand: where each read comes from (strand 1 = reverse complement; the
    read then starts at ``genome_start + len - 1`` and runs backwards, complemented).
    """

    tile: int
    positions: np.ndarray
    sequences: np.ndarray
    brightness: np.ndarray
    shifts: np.ndarray
    channel_offsets: np.ndarray
    genome_start: np.ndarray
    strand: np.ndarray
    reads: np.ndarray = field(repr=False)  # (N, n_cycles + extra) incl. bases past the last cycle

    @property
    def n_clusters(self) -> int:
        return int(self.positions.shape[0])

    def nearest_neighbour_distance(self) -> np.ndarray:
        """(N,) distance in px from each cluster to its nearest neighbour (inf if alone).

        Two clusters closer than a detector's matching radius (1.5 px in the tests) are one
        spot to any detector: the dimmer one reads the brighter one's sequence. Score base
        calling on clusters whose neighbours are farther (:data:`RESOLVABLE_DISTANCE`).
        """
        if self.n_clusters < 2:
            return np.full(self.n_clusters, np.inf)
        from scipy.spatial import cKDTree

        d, _ = cKDTree(self.positions).query(self.positions, k=2)
        return d[:, 1]

    def resolvable(self, distance: float | None = None) -> np.ndarray:
        """(N,) bool: clusters with no other cluster within ``distance`` px (default 1.5)."""
        lim = RESOLVABLE_DISTANCE if distance is None else distance
        return self.nearest_neighbour_distance() >= lim

    def frame_positions(self, cycle: int, channel: int) -> np.ndarray:
        """Cluster positions ``(x, y)`` as they appear in the image of ``cycle``/``channel``."""
        return self.positions + self.shifts[cycle - 1] + self.channel_offsets[channel]

    def in_view(self, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
        """Mask of clusters at least ``margin`` px inside the frame in every cycle and channel."""
        h, w = shape
        lo = self.shifts.min(axis=0) + self.channel_offsets.min(axis=0)  # (dx, dy) extremes
        hi = self.shifts.max(axis=0) + self.channel_offsets.max(axis=0)
        x, y = self.positions[:, 0], self.positions[:, 1]
        return (
            (x + lo[0] >= margin - 0.5)
            & (x + hi[0] <= w - 0.5 - margin)
            & (y + lo[1] >= margin - 0.5)
            & (y + hi[1] <= h - 0.5 - margin)
        )


def _lognormal(rng: np.random.Generator, median: float, cv: float, n: int) -> np.ndarray:
    sigma = math.sqrt(math.log1p(cv * cv))
    return median * np.exp(sigma * rng.standard_normal(n))


class SyntheticInstrument:
    """A seeded synthetic SBS imager. Deterministic for (params, seed, tile, cycle, channel).

    >>> inst = SyntheticInstrument(InstrumentParams(n_cycles=10), seed=1)
    >>> truth = inst.truth(tile=1101)
    >>> frame = inst.render(tile=1101, cycle=1, channel=0)   # (H, W) uint16
    """

    def __init__(self, params: InstrumentParams | None = None, seed: int = 0) -> None:
        if params is None:
            params = InstrumentParams()
        if not isinstance(params, InstrumentParams):
            raise TypeError(f"params must be an InstrumentParams, got {type(params).__name__}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} is invalid: allowed a non-negative int")
        self.params = params
        self.seed = int(seed)
        self._genome: np.ndarray | None = None
        # Per-tile caches: truth, noiseless signal and background are reused by every frame.
        self._truth: dict[int, TileTruth] = {}
        self._signal: dict[int, np.ndarray] = {}
        self._cycle_signal: dict[tuple[int, int], np.ndarray] = {}  # the last two (tile, cycle)
        self._band = None  # rows of P near the diagonal, for cycle_signal
        self._background: dict[int, np.ndarray] = {}

    # -- random streams ---------------------------------------------------------------
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=tuple(key)))

    @staticmethod
    def _check_tile(tile: int) -> int:
        if not isinstance(tile, (int, np.integer)) or tile < 0:
            raise ValueError(f"tile={tile!r} is invalid: allowed a non-negative int, e.g. 1101")
        return int(tile)

    def _check_cycle_channel(self, cycle: int, channel: int | None = None) -> None:
        n = self.params.n_cycles
        if not isinstance(cycle, (int, np.integer)) or not 1 <= cycle <= n:
            raise ValueError(f"cycle={cycle!r} is invalid: cycles are 1-based, allowed 1..{n}")
        if channel is not None and (not isinstance(channel, (int, np.integer)) or not 0 <= channel <= 3):
            raise ValueError(f"channel={channel!r} is invalid: allowed 0..3 (A, C, G, T)")

    # -- genome and truth --------------------------------------------------------------
    @property
    def genome(self) -> np.ndarray:
        """The reference genome as uint8 codes (A, C, G, T = 0..3), shared by every tile."""
        if self._genome is None:
            rng = self._rng(_TAG_GENOME)
            self._genome = rng.integers(0, 4, size=self.params.genome_length, dtype=np.uint8)
        return self._genome

    def write_reference_fasta(self, path: str | Path, name: str | None = None) -> Path:
        """Write the reference genome as FASTA (80 bases per line); returns the path."""
        path = Path(path)
        letters = np.frombuffer(BASES.encode(), dtype=np.uint8)[self.genome]
        seq = letters.tobytes()
        name = name or f"synthetic_seed{self.seed} length={len(seq)}"
        lines = [f">{name}\n".encode()]
        lines += [seq[i : i + 80] + b"\n" for i in range(0, len(seq), 80)]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(lines)
        tmp.replace(path)
        return path

    def _positions(self, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        h, w = p.tile_shape
        if p.layout == "random":
            n = rng.poisson(p.density * h * w)
            # Uniform over the pixel area: centres run from -0.5 to size - 0.5.
            xy = rng.uniform(0.0, 1.0, size=(n, 2))
            return np.column_stack((xy[:, 0] * w - 0.5, xy[:, 1] * h - 0.5))
        # Patterned: hex grid (rows pitch*sqrt(3)/2 apart, odd rows offset by pitch/2), with a
        # random sub-pitch origin so the grid is not aligned to pixels.
        dy = p.pitch * math.sqrt(3.0) / 2.0
        ox, oy = rng.uniform(0, p.pitch), rng.uniform(0, dy)
        rows = np.arange(oy - 0.5, h - 0.5, dy)
        pts = []
        for i, y in enumerate(rows):
            xs = np.arange(ox - 0.5 + (p.pitch / 2.0 if i % 2 else 0.0), w - 0.5, p.pitch)
            pts.append(np.column_stack((xs, np.full(xs.shape, y))))
        grid = np.concatenate(pts) if pts else np.zeros((0, 2))
        keep = rng.uniform(size=len(grid)) < p.occupancy
        return grid[keep]

    def _shifts(self) -> tuple[np.ndarray, np.ndarray]:
        # Stage drift and channel offsets belong to the run (the instrument), not the tile.
        p = self.params
        rng = self._rng(_TAG_SHIFTS)
        shifts = rng.uniform(-p.max_drift, p.max_drift, size=(p.n_cycles, 2))
        shifts[0] = 0.0
        lo, hi = p.channel_offset_range
        mag = rng.uniform(lo, hi, size=4)
        ang = rng.uniform(0, 2 * math.pi, size=4)
        offsets = np.column_stack((mag * np.cos(ang), mag * np.sin(ang)))
        offsets[0] = 0.0
        return shifts, offsets

    def truth(self, tile: int = 1101) -> TileTruth:
        """Ground truth for ``tile``: positions, sequences, brightness, shifts, offsets."""
        tile = self._check_tile(tile)
        cached = self._truth.get(tile)
        if cached is not None:
            return cached
        p = self.params
        rng = self._rng(_TAG_TILE, tile)
        pos = self._positions(rng)
        n = len(pos)
        brightness = _lognormal(rng, p.brightness_median, p.brightness_cv, n)
        length = p.n_cycles + _READ_EXTRA
        start = rng.integers(0, p.genome_length - length + 1, size=n)
        strand = (rng.uniform(size=n) < 0.5).astype(np.uint8) if p.both_strands else np.zeros(n, np.uint8)
        idx = start[:, None] + np.arange(length)[None, :]
        reads = self.genome[idx]
        rev = strand.astype(bool)
        # Reverse strand: read the same genome window backwards, complemented (A<->T, C<->G
        # is 3 - code with A, C, G, T = 0, 1, 2, 3).
        reads[rev] = 3 - reads[rev, ::-1]
        shifts, offsets = self._shifts()
        t = TileTruth(
            tile=tile,
            positions=pos,
            sequences=np.ascontiguousarray(reads[:, : p.n_cycles]),
            brightness=brightness,
            shifts=shifts,
            channel_offsets=offsets,
            genome_start=start,
            strand=strand,
            reads=reads,
        )
        for a in (t.positions, t.sequences, t.brightness, t.shifts, t.channel_offsets, t.reads):
            a.setflags(write=False)
        self._truth[tile] = t
        return t

    # -- the SBS signal model ----------------------------------------------------------
    def phasing_matrix(self) -> np.ndarray:
        """(n_cycles, n_cycles + extra) molecule-position fractions for this run's phasing."""
        p = self.params
        return phasing_matrix(p.n_cycles, p.phasing, p.prephasing, p.n_cycles + _READ_EXTRA)

    def cluster_signal(self, tile: int = 1101) -> np.ndarray:
        """Noiseless per-cluster channel signal in e-, float64 of shape (N, n_cycles, 4).

        ``signal[i, c, k]`` = brightness * decay(c) * sum_b crosstalk[k, b] * (P @ onehot)[c, b]:
        the total flux of cluster ``i`` in channel ``k`` at 0-based cycle ``c``. This is what
        :meth:`render` draws and what :meth:`cluster_intensities` adds noise to. It is the
        whole run's signal (``N x n_cycles x 32`` bytes, kept per tile): the frames draw on
        :meth:`cycle_signal`, one cycle at a time, which is what this stacks.
        """
        tile = self._check_tile(tile)
        cached = self._signal.get(tile)
        if cached is not None:
            return cached
        sig = np.stack([self.cycle_signal(tile, c) for c in range(1, self.params.n_cycles + 1)], axis=1)
        sig.setflags(write=False)
        self._signal[tile] = sig
        return sig

    def cycle_signal(self, tile: int, cycle: int) -> np.ndarray:
        """Noiseless channel signal of every cluster of ``tile`` at 1-based ``cycle``, float64
        (N, 4): ``cluster_signal(tile)[:, cycle - 1]`` without the rest of the run.

        Row ``cycle - 1`` of ``P`` is taken near its diagonal (``kernels.phasing.PhasingBand``,
        walked forward as the camera's cycles come), over the template positions the
        molecules can have reached: within ``n p + 12 sqrt(n p) + 24`` of the cycle, where a
        lag or lead of more has a probability below 1e-30 (``n`` cycles, ``p`` the larger of
        phasing and prephasing). So a frame costs the same at cycle 900 as at cycle 1, and a
        run's memory does not grow with its cycles (the whole run's signal, 4.6 GB a tile at
        2048 px and 992 cycles, killed the generation-1 soak's camera).
        """
        tile = self._check_tile(tile)
        self._check_cycle_channel(cycle)
        key = (tile, cycle)
        hit = self._cycle_signal.get(key)
        if hit is not None:
            return hit
        p = self.params
        t = self.truth(tile)
        if self._band is None:
            from kernels.phasing import PhasingBand

            rate = p.n_cycles * max(p.phasing, p.prephasing)
            width = min(p.n_cycles + _READ_EXTRA, int(math.ceil(rate + 12.0 * math.sqrt(rate) + 24)))
            self._band = PhasingBand(p.phasing, p.prephasing, width=width, keep=4)
        c = cycle - 1
        n, length = t.reads.shape
        j0, j1 = max(0, c - self._band.width), min(length, c + self._band.width + 1)
        w = self._band.row(c, j0, j1)
        dye = np.empty(n * 4)
        # dye[i, b] = sum_j P[c, j] [read i has base b at position j], by clusters in chunks
        # (an (N, positions) index array at once is hundreds of MB at 2048 px)
        step = max(1, (1 << 22) // max(1, j1 - j0))
        for a in range(0, n, step):
            b = min(n, a + step)
            idx = (np.arange(a, b)[:, None] * 4 - a * 4 + t.reads[a:b, j0:j1]).ravel()
            dye[4 * a : 4 * b] = np.bincount(idx, weights=np.broadcast_to(w, (b - a, j1 - j0)).ravel(), minlength=(b - a) * 4)
        dye = dye.reshape(n, 4)
        dye *= ((1.0 - p.decay) ** c * t.brightness)[:, None]
        sig = dye @ p.crosstalk_matrix.T
        sig.setflags(write=False)
        if len(self._cycle_signal) >= 2:  # the four channels of a tile's cycle come together
            self._cycle_signal.pop(next(iter(self._cycle_signal)))
        self._cycle_signal[key] = sig
        return sig

    def _pixel_peak(self) -> float:
        # Fraction of a centred cluster's flux that falls in its central pixel.
        s = self.params.psf_sigma
        return float(erf(0.5 / (math.sqrt(2.0) * s)) ** 2)

    def noise_sigma(self, signal: np.ndarray, extraction: str = "pixel") -> np.ndarray:
        """Rms noise (e-) of the extracted total flux of a cluster whose flux is ``signal``.

        ``"pixel"``: the flux is read from the background-subtracted pixel at the cluster
        centre, divided by the PSF's peak fraction g0 (what Illumina's RTA does with
        interpolation): var = (B + r^2 + g0 S) / g0^2.
        ``"psf"``: an optimal PSF-weighted sum (weights g / sum(g^2)): background and read
        noise integrate over 4 pi s^2 px and the shot noise is 4/3 of the flux:
        var = 4 pi s^2 (B + r^2) + 4/3 S.
        """
        p = self.params
        s = np.maximum(signal, 0.0)
        floor = p.background + p.read_noise**2
        if extraction == "pixel":
            g0 = self._pixel_peak()
            return np.sqrt((floor + g0 * s) / (g0 * g0))
        if extraction == "psf":
            return np.sqrt(4.0 * math.pi * p.psf_sigma**2 * floor + (4.0 / 3.0) * s)
        raise ValueError(f"extraction={extraction!r} is invalid: allowed 'pixel' or 'psf'")

    def cluster_intensities(
        self,
        tile: int = 1101,
        *,
        noise: bool = True,
        neighbours: bool = True,
        extraction: str = "pixel",
        units: str = "adu",
    ) -> np.ndarray:
        """Per-cluster intensities as an extraction measures them: float32 (N, n_cycles, 4).

        The same SBS model as the frames (:meth:`cluster_signal`), plus (when ``neighbours``)
        the light of nearby clusters that the extraction picks up (a neighbour at distance d
        adds exp(-d^2 / (2 s^2)) of its flux for ``"pixel"`` extraction, exp(-d^2 / (4 s^2))
        for ``"psf"``), plus (when ``noise``) a per-cluster per-cycle multiplicative jitter
        (focus, illumination; ``intensity_jitter``) and Gaussian noise with the variance of
        :meth:`noise_sigma` for that extraction (shot noise on the signal, background and
        read noise). ``units="adu"`` (default) scales by the camera gain, like intensities
        extracted from offset- and background-subtracted frames; ``"e"`` keeps electrons.
        Deterministic for (params, seed, tile, options).
        """
        if units not in ("adu", "e"):
            raise ValueError(f"units={units!r} is invalid: allowed 'adu' or 'e'")
        if extraction not in ("pixel", "psf"):
            raise ValueError(f"extraction={extraction!r} is invalid: allowed 'pixel' or 'psf'")
        p = self.params
        tile = self._check_tile(tile)
        t = self.truth(tile)
        sig = np.array(self.cluster_signal(tile))
        if neighbours and t.n_clusters > 1:
            from scipy.spatial import cKDTree

            s2 = (2.0 if extraction == "pixel" else 4.0) * p.psf_sigma**2
            tree = cKDTree(t.positions)
            pairs = tree.query_pairs(r=4.0 * p.psf_sigma, output_type="ndarray")
            if len(pairs):
                i, j = pairs[:, 0], pairs[:, 1]
                d2 = np.sum((t.positions[i] - t.positions[j]) ** 2, axis=1)
                wgt = np.exp(-d2 / s2)[:, None, None]
                base = self.cluster_signal(tile)
                np.add.at(sig, i, wgt * base[j])
                np.add.at(sig, j, wgt * base[i])
        if noise:
            rng = self._rng(_TAG_INTENSITY, tile, 0 if extraction == "pixel" else 1)
            if p.intensity_jitter > 0:
                sig *= 1.0 + p.intensity_jitter * rng.standard_normal(sig.shape[:2])[:, :, None]
            sig += self.noise_sigma(sig, extraction) * rng.standard_normal(sig.shape)
        if units == "adu":
            sig *= p.gain
        return sig.astype(np.float32)

    # -- rendering ---------------------------------------------------------------------
    def background_image(self, tile: int = 1101) -> np.ndarray:
        """The tile's background in e- per px: a low-frequency field within +-gradient."""
        tile = self._check_tile(tile)
        cached = self._background.get(tile)
        if cached is not None:
            return cached
        p = self.params
        h, w = p.tile_shape
        rng = self._rng(_TAG_TILE, tile, 1)
        y = np.linspace(-1.0, 1.0, h)[:, None]
        x = np.linspace(-1.0, 1.0, w)[None, :]
        # A tilted plane plus one broad bump: the shape of uneven illumination.
        a, b = rng.uniform(-1, 1, size=2)
        cx, cy = rng.uniform(-0.5, 0.5, size=2)
        field_ = a * x + b * y + np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.5)
        field_ -= field_.mean()
        peak = np.abs(field_).max()
        if peak > 0:
            field_ /= peak
        bg = p.background * (1.0 + p.background_gradient * field_)
        bg.setflags(write=False)
        self._background[tile] = bg
        return bg

    def _stamps(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # Pixel-integrated Gaussian PSF, separable: for each cluster a 1-D profile in x and
        # in y over a (2r+1)-pixel window around its nearest pixel.
        s = self.params.psf_sigma
        r = int(math.ceil(4.0 * s))
        off = np.arange(-r, r + 1)
        cx = np.rint(pos[:, 0]).astype(np.int64)
        cy = np.rint(pos[:, 1]).astype(np.int64)
        px = cx[:, None] + off[None, :]
        py = cy[:, None] + off[None, :]
        k = 1.0 / (math.sqrt(2.0) * s)
        gx = 0.5 * (erf((px + 0.5 - pos[:, :1]) * k) - erf((px - 0.5 - pos[:, :1]) * k))
        gy = 0.5 * (erf((py + 0.5 - pos[:, 1:]) * k) - erf((py - 0.5 - pos[:, 1:]) * k))
        return px, py, gx, gy

    def expected_electrons(self, tile: int, cycle: int, channel: int) -> np.ndarray:
        """The noiseless image (e- per px, float64) of ``tile``/``cycle``/``channel``."""
        self._check_cycle_channel(cycle, channel)
        h, w = self.params.tile_shape
        t = self.truth(tile)
        flux = self.cycle_signal(tile, cycle)[:, channel]
        pos = t.frame_positions(cycle, channel)
        r = int(math.ceil(4.0 * self.params.psf_sigma))
        # Only clusters whose stamp can touch the frame; they are drawn on a canvas padded so
        # that every stamp index is valid, then the frame is cropped out.
        vis = np.all((pos > -r - 1) & (pos < np.array([w, h]) + r), axis=1)
        px, py, gx, gy = self._stamps(pos[vis])
        pad = 2 * r + 2
        hp, wp = h + 2 * pad, w + 2 * pad
        flat = ((py + pad) * wp)[:, :, None] + (px + pad)[:, None, :]
        vals = (flux[vis, None, None] * gy[:, :, None]) * gx[:, None, :]
        canvas = np.bincount(flat.ravel(), weights=vals.ravel(), minlength=hp * wp)
        img = canvas.reshape(hp, wp)[pad : pad + h, pad : pad + w].astype(np.float64)
        img += self.background_image(tile)
        return img

    def render(self, tile: int = 1101, cycle: int = 1, channel: int = 0) -> np.ndarray:
        """One camera frame, (H, W) uint16: shot noise, read noise, gain, offset, clip."""
        tile = self._check_tile(tile)
        self._check_cycle_channel(cycle, channel)
        p = self.params
        rng = self._rng(_TAG_FRAME, tile, cycle, channel)
        electrons = rng.poisson(self.expected_electrons(tile, cycle, channel)).astype(np.float64)
        if p.read_noise > 0:
            electrons += p.read_noise * rng.standard_normal(electrons.shape)
        adu = np.rint(electrons * p.gain + p.offset)
        return np.clip(adu, 0, _SATURATION).astype(np.uint16)

    def render_cycle(self, tile: int = 1101, cycle: int = 1) -> np.ndarray:
        """All four channels of one cycle, (4, H, W) uint16."""
        return np.stack([self.render(tile, cycle, k) for k in range(4)])
