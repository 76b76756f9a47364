"""Encoders for Illumina's InterOp run metrics (``RUN/InterOp/*.bin``): numbers in, bytes out.

Pure functions (no I/O, no clock): each file is a header followed by fixed-size records, all
little-endian, as Illumina's InterOp library documents them (illumina.github.io/interop, the
pages named below). The writer (:class:`~appliance.runfolder.RunFolderWriter`) appends a
cycle's records when the cycle is complete; see docs/run-folder.md, "InterOp".

Versions (each read by the ``interop`` package, Illumina's reader, and by SAV):

- ``TileMetricsOut.bin`` version 2 (``tile_v2``): records of lane u16, tile u16, code u16,
  value f32; codes 100 cluster density (/mm^2), 101 PF density, 102 clusters, 103 PF clusters.
  Version 2 is also the one picard's ``TileMetricsOutReader`` reads.
- ``QMetricsOut.bin`` version 6 (``q_v6``) unbinned: header byte 2 = 0 (no bins), records of
  lane u16, tile u16, cycle u16, 50 u32 counts of Q1..Q50 (qualities above 50 count as 50).
  Not version 4 (the same records without the flag): InterOp guesses "legacy bins" for a
  version-4 file whose histograms use 7 or fewer Q values (ours are Illumina-style binned)
  and then re-bins by instrument type; version 5 and later are taken as written.
- ``ExtractionMetricsOut.bin`` version 2 (``extraction_v2``): lane, tile, cycle u16, focus f32
  x 4 (written NaN: not measured), intensity u16 x 4, date-time u64 (written 0: no clock is
  read, so a re-written cycle gives the same bytes).
- ``CorrectedIntMetricsOut.bin`` version 3 (``corrected_v3``): lane, tile, cycle u16, mean
  intensity of the called base u16 x 4 (A, C, G, T), call counts u32 x 5 (no-call, A, C, G, T).
- ``ErrorMetricsOut.bin`` version 4 (``error_v4``): lane u16, tile u32, cycle u16, error
  rate f32 (percent).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "INTEROP_DIR", "TILE_METRICS", "Q_METRICS", "EXTRACTION_METRICS", "CORRECTED_INT_METRICS",
    "ERROR_METRICS", "RUN_PARAMETERS", "InterOpOptions", "PIXEL_SIZE_UM", "MAX_Q", "tile_area_mm2",
    "tile_metrics_header", "tile_metrics_records", "encode_tile_metrics",
    "q_metrics_header", "q_metrics_record", "q_histogram",
    "extraction_metrics_header", "extraction_metrics_record", "channel_means",
    "corrected_int_metrics_header", "corrected_int_metrics_record", "called_figures",
    "error_metrics_header", "error_metrics_record", "error_rate",
]

INTEROP_DIR = "InterOp"
TILE_METRICS = f"{INTEROP_DIR}/TileMetricsOut.bin"
Q_METRICS = f"{INTEROP_DIR}/QMetricsOut.bin"
EXTRACTION_METRICS = f"{INTEROP_DIR}/ExtractionMetricsOut.bin"
CORRECTED_INT_METRICS = f"{INTEROP_DIR}/CorrectedIntMetricsOut.bin"
ERROR_METRICS = f"{INTEROP_DIR}/ErrorMetricsOut.bin"
RUN_PARAMETERS = "RunParameters.xml"

#: the nominal size of one camera pixel at the flow cell (object space), in micrometres: the
#: tile area behind the cluster densities is tile width x height (pixels) x this squared. A
#: documented constant, not a calibration; RunParameters.xml records the value used.
PIXEL_SIZE_UM = 0.375
#: QMetrics (unbinned) holds Q1..Q50
MAX_Q = 50
#: Phred quality of a no-call in QMetrics (as picard and bcl2fastq print a no-call: '#', Q2)
NO_CALL_Q = 2



@dataclass(frozen=True)
class InterOpOptions:
    """What :class:`~appliance.runfolder.RunFolderWriter` needs to write InterOp: the tile's
    size in pixels (width, height) and the pixel size (the tile area of the densities), and
    for runs with ground truth ``truth(tile, locs) -> (sequences, matched)``: the true base
    (0..3) of each cluster at each cycle, (N, cycles) uint8, and which clusters were matched
    to a true one, (N,) bool (ErrorMetricsOut.bin is written only with it). ``application``
    and ``version`` go into RunParameters.xml."""

    tile_px: tuple[int, int]
    pixel_um: float = PIXEL_SIZE_UM
    truth: Callable | None = None
    application: str = "Appliance"
    version: str = ""

    @property
    def area_mm2(self) -> float:
        return tile_area_mm2(self.tile_px[0], self.tile_px[1], self.pixel_um)


TILE_VERSION, Q_VERSION, EXTRACTION_VERSION, CORRECTED_VERSION, ERROR_VERSION = 2, 6, 2, 3, 4
_TILE_REC = struct.Struct("<HHHf")  # 10 bytes
_CYCLE_ID = struct.Struct("<HHH")  # lane, tile, cycle (u16)
_Q_REC = struct.Struct("<HHH50I")  # 206 bytes
_EXTRACTION_REC = struct.Struct("<HHH4f4HQ")  # 38 bytes
_CORRECTED_REC = struct.Struct("<HHH4H5I")  # 34 bytes
_ERROR_REC = struct.Struct("<HIHf")  # 12 bytes
_U16_MAX = 65535


def _header(version: int, record: struct.Struct) -> bytes:
    return bytes((version, record.size))


def _u16(name: str, v) -> int:
    v = int(v)
    if not 0 <= v <= _U16_MAX:
        raise ValueError(f"{name}={v}: this InterOp version stores it as uint16 (0..65535)")
    return v


def tile_area_mm2(width_px: int, height_px: int, pixel_um: float = PIXEL_SIZE_UM) -> float:
    """The imaged area of one tile in mm^2."""
    if width_px < 1 or height_px < 1 or not pixel_um > 0:
        raise ValueError(f"tile {width_px} x {height_px} px at {pixel_um} um/px: all must be positive")
    return width_px * height_px * (pixel_um * 1e-3) ** 2


# -- TileMetricsOut.bin (version 2) -----------------------------------------------------------


def tile_metrics_header() -> bytes:
    return _header(TILE_VERSION, _TILE_REC)


def tile_metrics_records(lane: int, tile: int, clusters: int, pf_clusters: int, area_mm2: float) -> bytes:
    """The four records of one tile: density (100), PF density (101), clusters (102), PF (103)."""
    if not 0 <= pf_clusters <= clusters:
        raise ValueError(f"tile {tile}: {pf_clusters} PF clusters of {clusters}: need 0 <= PF <= clusters")
    lane, tile = _u16("lane", lane), _u16("tile", tile)
    return b"".join(_TILE_REC.pack(lane, tile, code, value) for code, value in (
        (100, clusters / area_mm2), (101, pf_clusters / area_mm2), (102, float(clusters)), (103, float(pf_clusters))))


def encode_tile_metrics(lane: int, tiles, area_mm2: float) -> bytes:
    """The whole file: ``tiles`` is ``[(tile, clusters, pf_clusters), ...]``."""
    return tile_metrics_header() + b"".join(tile_metrics_records(lane, t, n, pf, area_mm2) for t, n, pf in tiles)


# -- QMetricsOut.bin (version 6, unbinned) --------------------------------------------------------------


def q_metrics_header() -> bytes:
    """Version, record size, and the has-bins flag 0 (unbinned: 50 counts a record)."""
    return _header(Q_VERSION, _Q_REC) + b"\x00"


def q_histogram(bases: np.ndarray, quals: np.ndarray) -> np.ndarray:
    """Counts of Q1..Q50 (index q-1) of the calls given: a no-call (base > 3) counts as Q2,
    qualities above 50 as Q50."""
    q = np.where(np.asarray(bases) > 3, NO_CALL_Q, np.asarray(quals, np.int64))
    q = np.clip(q, 1, MAX_Q)
    return np.bincount(q - 1, minlength=MAX_Q)[:MAX_Q].astype(np.uint32)


def q_metrics_record(lane: int, tile: int, cycle: int, hist) -> bytes:
    h = [int(v) for v in hist]
    if len(h) != MAX_Q:
        raise ValueError(f"hist: {len(h)} counts; unbinned QMetrics hold {MAX_Q} (Q1..Q50)")
    return _Q_REC.pack(_u16("lane", lane), _u16("tile", tile), _u16("cycle", cycle), *h)


# -- ExtractionMetricsOut.bin (version 2) -----------------------------------------------------


def extraction_metrics_header() -> bytes:
    return _header(EXTRACTION_VERSION, _EXTRACTION_REC)


def channel_means(intensities: np.ndarray) -> list[float | None]:
    """Per channel, the mean of the finite intensities (None where there are none)."""
    out = []
    for k in range(intensities.shape[1]):
        v = intensities[:, k].astype(np.float64)
        f = v[np.isfinite(v)]
        out.append(float(f.mean()) if f.size else None)
    return out


def _u16_intensity(v: float | None) -> int:
    """An intensity as InterOp's uint16: rounded, clipped to 0..65535; none as 0."""
    if v is None or not math.isfinite(v):
        return 0
    return int(min(max(round(v), 0), _U16_MAX))


def extraction_metrics_record(lane: int, tile: int, cycle: int, intensity, focus=(math.nan,) * 4) -> bytes:
    """``intensity``: one value per channel (A, C, G, T), stored as uint16; ``focus`` (FWHM,
    pixels) as float32, NaN where not measured; the date-time stamp is 0."""
    i, f = list(intensity), [float(x) for x in focus]
    if len(i) != 4 or len(f) != 4:
        raise ValueError("ExtractionMetrics version 2 holds exactly 4 channels")
    return _EXTRACTION_REC.pack(_u16("lane", lane), _u16("tile", tile), _u16("cycle", cycle), *f,
                                *(_u16_intensity(v) for v in i), 0)


# -- CorrectedIntMetricsOut.bin (version 3) ---------------------------------------------------


def corrected_int_metrics_header() -> bytes:
    return _header(CORRECTED_VERSION, _CORRECTED_REC)


def called_figures(bases: np.ndarray, intensities: np.ndarray | None) -> tuple[list[float | None], list[int]]:
    """Per base A, C, G, T the mean intensity of its channel over the clusters called that
    base (finite values; None when none), and the call counts (no-call, A, C, G, T)."""
    b = np.asarray(bases)
    counts = [int(np.count_nonzero(b > 3))] + [int(np.count_nonzero(b == k)) for k in range(4)]
    means: list[float | None] = []
    for k in range(4):
        if intensities is None:
            means.append(None)
            continue
        v = intensities[b == k, k].astype(np.float64)
        v = v[np.isfinite(v)]
        means.append(float(v.mean()) if v.size else None)
    return means, counts


def corrected_int_metrics_record(lane: int, tile: int, cycle: int, called_intensity, counts) -> bytes:
    i, c = list(called_intensity), [int(x) for x in counts]
    if len(i) != 4 or len(c) != 5:
        raise ValueError("CorrectedIntMetrics version 3: 4 called intensities (A, C, G, T) and 5 counts (N, A, C, G, T)")
    return _CORRECTED_REC.pack(_u16("lane", lane), _u16("tile", tile), _u16("cycle", cycle),
                               *(_u16_intensity(v) for v in i), *c)


# -- ErrorMetricsOut.bin (version 4) ----------------------------------------------------------


def error_metrics_header() -> bytes:
    return _header(ERROR_VERSION, _ERROR_REC)


def error_rate(bases: np.ndarray, truth: np.ndarray) -> float:
    """Percent of the called bases (no-calls left out) that differ from ``truth``; NaN when
    nothing was called (InterOp leaves NaN out of its averages)."""
    b, t = np.asarray(bases), np.asarray(truth)
    called = b <= 3
    n = int(np.count_nonzero(called))
    if n == 0:
        return math.nan
    return 100.0 * int(np.count_nonzero(b[called] != t[called])) / n


def error_metrics_record(lane: int, tile: int, cycle: int, rate: float) -> bytes:
    if not 0 <= tile <= 0xFFFFFFFF:
        raise ValueError(f"tile={tile}: ErrorMetrics version 4 stores it as uint32")
    return _ERROR_REC.pack(_u16("lane", lane), int(tile), _u16("cycle", cycle), float(rate))
