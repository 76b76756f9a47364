"""InterOp run metrics (``RUN/InterOp/``): the encoders byte for byte against Illumina's
documented layouts, the files through Illumina's own reader (the ``interop`` package, GPL, a
test-only dependency), a real run whose InterOp summary agrees with the appliance's own
figures, and a killed-then-resumed run whose InterOp files are the undisturbed run's bytes.

Tolerances (InterOp stores float32 and uint16): %PF within 0.001 percentage points (pp);
% >= Q30 within 0.01 pp; mean intensity per channel and tile-cycle within 0.5 + 1e-3 (the
uint16 rounding); the error rate per tile-cycle within 1e-4 pp of the appliance's scorer on
that tile, the run's (InterOp: mean over tiles of the mean over cycles but the last) within
1e-3 pp of the same mean of the appliance's per-tile figures.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from appliance.pipeline import Supervisor
from appliance.pipeline.handlers import interop_options
from appliance.runfolder import InterOpOptions, RunFolder, RunFolderWriter, RunInfo, formats
from appliance.runfolder import interop as iop

interop = pytest.importorskip("interop")

INFO = RunInfo(run_id="IOP", instrument="SIM01", flowcell="FC0001", lane=1, tiles=(1101, 1102), n_cycles=4, reads=((4, False),))
DIM = "source.synthetic.brightness=300"  # a dim flow cell: errors to score


# -- pure encoders, byte for byte ---------------------------------------------------------------


def test_tile_metrics_v2_bytes():
    data = iop.encode_tile_metrics(1, [(1101, 1000, 900)], 0.5)
    assert data[:2] == bytes([2, 10])  # version 2, record size 10
    recs = [struct.unpack_from("<HHHf", data, 2 + 10 * i) for i in range(4)]
    assert len(data) == 2 + 4 * 10
    assert recs == [(1, 1101, 100, 2000.0), (1, 1101, 101, 1800.0), (1, 1101, 102, 1000.0), (1, 1101, 103, 900.0)]
    assert iop.tile_area_mm2(256, 256, 0.375) == pytest.approx(256 * 256 * 0.375e-3 ** 2)


def test_q_metrics_v6_unbinned_bytes():
    assert iop.q_metrics_header() == bytes([6, 206, 0])  # version 6, record 206, no bins
    bases = np.array([0, 1, 4, 2, 3], np.uint8)
    quals = np.array([30, 40, 0, 63, 2], np.uint8)
    hist = iop.q_histogram(bases, quals)
    want = np.zeros(50, np.uint32)
    want[[29, 39, 1, 49]] = 1  # Q30, Q40, the no-call as Q2, Q63 as Q50 ...
    want[1] += 1  # ... and the Q2 call
    assert hist.tolist() == want.tolist()
    rec = iop.q_metrics_record(1, 1101, 7, hist)
    assert rec == struct.pack("<HHH", 1, 1101, 7) + want.astype("<u4").tobytes() and len(rec) == 206


def test_extraction_corrected_error_bytes():
    rec = iop.extraction_metrics_record(1, 1102, 3, [100.4, 100.6, -5.0, None])
    assert iop.extraction_metrics_header() == bytes([2, 38]) and len(rec) == 38
    lane, tile, cycle, *rest = struct.unpack("<HHH4f4HQ", rec)
    assert (lane, tile, cycle) == (1, 1102, 3)
    assert all(math.isnan(f) for f in rest[:4]) and rest[4:] == [100, 101, 0, 0, 0]  # NaN focus, 0 date-time

    bases = np.array([0, 0, 1, 4, 3], np.uint8)
    intens = np.array([[10, 0, 0, 0], [20, 0, 0, 0], [0, 7, 0, 0], [np.nan] * 4, [0, 0, 0, 9]], np.float32)
    called, counts = iop.called_figures(bases, intens)
    assert called == [15.0, 7.0, None, 9.0] and counts == [1, 2, 1, 0, 1]
    rec = iop.corrected_int_metrics_record(1, 1101, 2, called, counts)
    assert iop.corrected_int_metrics_header() == bytes([3, 34])
    assert rec == struct.pack("<HHH4H5I", 1, 1101, 2, 15, 7, 0, 9, 1, 2, 1, 0, 1)

    assert iop.error_metrics_header() == bytes([4, 12])
    rate = iop.error_rate(np.array([0, 1, 2, 4]), np.array([0, 1, 3, 3]))
    assert rate == pytest.approx(100 / 3)
    assert math.isnan(iop.error_rate(np.array([4, 4]), np.array([0, 0])))
    assert iop.error_metrics_record(1, 1101, 5, 2.5) == struct.pack("<HIHf", 1, 1101, 5, 2.5)


def test_run_parameters_and_runinfo_channels():
    xml = formats.encode_run_parameters(INFO, tile_px=(256, 256), pixel_um=0.375)
    assert xml == formats.encode_run_parameters(INFO, tile_px=(256, 256), pixel_um=0.375)
    assert b"<ApplicationName>Appliance</ApplicationName>" in xml and b"<PixelSizeUm>0.375</PixelSizeUm>" in xml
    ri = formats.encode_runinfo(INFO, ("A", "C", "G", "T"))
    assert b"<ImageChannels>" in ri and formats.decode_runinfo(ri) == INFO
    assert b"ImageChannels" not in formats.encode_runinfo(INFO)
    # what a reprocess reads back to write the run's files again
    assert formats.decode_image_channels(ri) == ("A", "C", "G", "T")
    assert formats.decode_image_channels(formats.encode_runinfo(INFO)) == ()
    kw = {"tile_px": (320, 240), "pixel_um": 0.5, "channels": ("A", "C", "G", "T"), "application": "Appliance", "version": "1.2"}
    xml = formats.encode_run_parameters(INFO, **kw)
    assert formats.decode_run_parameters(xml) == kw
    assert formats.encode_run_parameters(INFO, **formats.decode_run_parameters(xml)) == xml
    with pytest.raises(formats.RunFolderError, match="RunParameters.xml"):
        formats.decode_run_parameters(b"<RunParameters/>")


# -- the writer, through Illumina's reader ---------------------------------------------------------


N_SMALL = 200  # every array below is seeded by its tile (and cycle): the same whichever cycles are written


def _truth(tile: int) -> np.ndarray:
    return np.random.default_rng(tile).integers(0, 4, (N_SMALL, INFO.n_cycles)).astype(np.uint8)


def _cycle_files(w: RunFolderWriter, c: int) -> None:
    for t in INFO.tiles:
        rng = np.random.default_rng((t, c))
        bases = _truth(t)[:, c - 1].copy()
        bases[::7] = (bases[::7] + 1) % 4  # some errors
        bases[::31] = 4  # some no-calls
        w.write_bcl(t, c, bases, rng.choice([12, 22, 33, 38], N_SMALL).astype(np.uint8))
        w.write_intensities(t, c, rng.uniform(0, 1000, (N_SMALL, 4)).astype(np.float32))


def _filters(w: RunFolderWriter) -> None:
    for t in INFO.tiles:
        w.write_filter(t, np.arange(N_SMALL) % 5 != 0)


def _write_small_run(root: Path, cycles=range(1, 5), writer=None) -> RunFolderWriter:
    opts = InterOpOptions(tile_px=(128, 128), truth=lambda t, locs: (_truth(t), np.arange(len(locs)) % 10 != 0))
    w = writer or RunFolderWriter(root, INFO, interop=opts)
    for t in INFO.tiles:
        w.write_locs(t, np.random.default_rng(t).uniform(0, 128, (N_SMALL, 2)).astype(np.float32))
    for c in cycles:
        _cycle_files(w, c)
        if c == 2:  # the filters come after the first cycles complete, as in the pipeline
            _filters(w)
        w.complete_cycle(c)
    return w


def test_writer_interop_is_read_by_illumina_interop(tmp_path):
    w = _write_small_run(tmp_path)
    w.complete()
    run = tmp_path / INFO.run_id
    assert RunFolder(run).verify() == []
    listed = {e.path for e in RunFolder(run).manifest().files()}
    for rel in (iop.TILE_METRICS, iop.Q_METRICS, iop.EXTRACTION_METRICS, iop.CORRECTED_INT_METRICS, iop.ERROR_METRICS, iop.RUN_PARAMETERS):
        assert rel in listed
    rm = interop.read(str(run))
    assert rm.q_metric_set().size() == rm.error_metric_set().size() == 8  # 2 tiles x 4 cycles
    lane = interop.summary(rm, "Lane")[0]
    assert lane["Cluster Count"] == 200 and lane["% Pf"] == pytest.approx(80.0)
    assert lane["Density"] == pytest.approx(200 / iop.tile_area_mm2(128, 128), rel=1e-6)
    # the per-cycle files start with their header once, then whole records
    for rel, head, size in ((iop.Q_METRICS, 3, 206), (iop.EXTRACTION_METRICS, 2, 38), (iop.CORRECTED_INT_METRICS, 2, 34), (iop.ERROR_METRICS, 2, 12)):
        assert ((run / rel).stat().st_size - head) == 8 * size


def test_a_retried_or_resumed_append_starts_from_the_recorded_length(tmp_path):
    """A partial record (a full disk mid-append) is cut off when the append is tried again,
    and a writer resumed from an earlier state appends the same bytes again."""
    ref = _write_small_run(tmp_path / "ref")
    ref.complete()
    want = {rel: (tmp_path / "ref" / INFO.run_id / rel).read_bytes() for rel in ref._io_files()}

    w = _write_small_run(tmp_path / "x", cycles=range(1, 4))
    state = w.interop_state()
    run = tmp_path / "x" / INFO.run_id
    with open(run / iop.Q_METRICS, "ab") as f:
        f.write(b"\x01partial")  # what a failed append leaves
    w.complete_cycle(3)  # the retry (complete again): nothing doubled, nothing partial
    assert w.interop_state() == state
    # a resumed writer (after a crash) goes on from a checkpoint's state
    w.close_interop()
    w2 = RunFolderWriter(tmp_path / "x", INFO, interop=w.interop)
    w2.resume_interop(*state)
    _write_small_run(tmp_path / "x", cycles=[4], writer=w2)
    w2.complete()
    assert {rel: (run / rel).read_bytes() for rel in want} == want


def test_passthrough_runs_write_no_interop(tmp_path):
    from tests.runs import small_run_config

    assert interop_options(small_run_config(tmp_path, 'stages.kernel.algorithm="passthrough"')) is None
    opts = interop_options(small_run_config(tmp_path))
    assert opts.tile_px == (256, 256) and opts.truth is not None


# -- a real run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dim_run(tmp_path_factory):
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("dim")
    summary = Supervisor(small_run_config(root, DIM), run_id="DIM").run()
    return root, summary


# interop.imaging builds its table with numpy.core.records (deprecated in NumPy 2)
@pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning")
def test_interop_of_a_run_agrees_with_the_appliance_summary(dim_run):
    from appliance.analysis.cycle_qc import cycle_figures, tile_figures
    from appliance.pipeline import score_against_truth
    from tests.runs import small_run_config

    root, summary = dim_run
    run = root / "DIM"
    folder = RunFolder(run)
    assert folder.is_complete and folder.verify() == []
    cycle_names = {e.path for entries in folder.manifest().cycles.values() for e in entries}
    assert not any(p.startswith("InterOp/") for p in cycle_names)
    n_cycles, tiles = folder.info.n_cycles, folder.info.tiles
    rm = interop.read(str(run))
    total = interop.summary(rm)[0]
    acc = summary["accuracy"]

    # %PF
    assert total["Cluster Count"] == acc["clusters_detected"]
    assert 100 * total["Cluster Count Pf"] / total["Cluster Count"] == pytest.approx(100 * acc["pass_filter_fraction"], abs=1e-3)

    # % >= Q30: the appliance's QC figures over PF clusters, every cycle but the last (as InterOp)
    q30 = n = 0
    for t in tiles:
        pf = folder.read_filter(t)
        for c in range(1, n_cycles):
            b, q = folder.read_bcl(t, c)
            f = tile_figures(b[pf], q[pf], None)
            q30 += f["pct_q30"] * f["clusters"] / 100
            n += f["clusters"]
    assert total["% >= Q30"] == pytest.approx(100 * q30 / n, abs=0.01)

    # mean intensity per channel, per tile-cycle (InterOp's "P90" column holds our mean)
    table = interop.imaging(rm)
    for c in range(1, n_cycles + 1):
        figs = cycle_figures(folder, c)["tiles"]
        for t in tiles:
            row = table[(table["Tile"] == t) & (table["Cycle"] == c)][0]
            for ch in "ACGT":
                assert abs(row[f"P90/{ch}"] - figs[str(t)]["intensity"][ch]["mean"]) <= 0.5 + 1e-3

    # error rate: per tile-cycle as the appliance's scorer gives it for that tile
    errs = rm.error_metric_set()
    ours = {(errs.at(i).tile(), errs.at(i).cycle()): errs.at(i).error_rate() for i in range(errs.size())}
    tile_means = []
    for t in tiles:
        per_cycle = score_against_truth(small_run_config(root, DIM, f"run.tiles=[{t}]"), run)["per_cycle"]
        for pc in per_cycle:
            got = ours[(t, pc["cycle"])]
            if pc["bases_called"]:
                assert got == pytest.approx(100 * pc["error_rate"], abs=1e-4)
            else:
                assert math.isnan(got)
        tile_means.append(np.mean([100 * pc["error_rate"] for pc in per_cycle[:-1]]))
    assert total["Error Rate"] == pytest.approx(np.mean(tile_means), abs=1e-3)
    assert acc["error_rate"] > 0  # a dim run: something was scored
    # and the run's pooled error rate (errors / calls over every cycle) is the same figure weighted otherwise
    assert total["Error Rate"] == pytest.approx(100 * acc["error_rate"], abs=0.1)


# -- a total loss mid-way, then a resume --------------------------------------------------------


def test_sigkill_mid_interop_then_resume_gives_the_undisturbed_bytes(tmp_path):
    """The whole process group killed while the InterOp files are being appended (the writer
    slowed so the window is wide), then resumed: the InterOp files (and the whole folder) are
    the undisturbed run's, byte for byte."""
    from tests.appliance.pipeline.test_crash_resume import _kill_group_when
    from tests.appliance.pipeline.test_pipeline_e2e import RUN_ID, config, digest

    Supervisor(config(tmp_path / "base"), run_id=RUN_ID).run()
    want = digest(tmp_path / "base" / RUN_ID)
    assert any(k.startswith("InterOp/") for k in want)

    root = tmp_path / "data"
    q = root / RUN_ID / iop.Q_METRICS
    _kill_group_when(root, lambda: q.is_file() and q.stat().st_size > 3, slow_ms=40)
    assert not (root / RUN_ID / "RTAComplete.txt").exists()  # killed before the run completed
    Supervisor(config(root), run_id=RUN_ID, resume=True).run()
    got = digest(root / RUN_ID)
    assert {k: v for k, v in got.items() if k.startswith("InterOp/")} == {k: v for k, v in want.items() if k.startswith("InterOp/")}
    assert got == want
    assert RunFolder(root / RUN_ID).verify() == []


def test_a_full_disk_mid_append_leaves_no_partial_record_and_the_retry_completes(tmp_path):
    """A real (tmpfs) disk that fills while the InterOp files are appended: RunFolderFull,
    no partial record left, and once space is freed the retried complete_cycle gives the
    bytes of a run that never met a full disk."""
    from appliance.runfolder import RunFolderFull
    from tests.appliance.pipeline.test_pipeline_e2e import small_tmpfs

    ref = _write_small_run(tmp_path / "ref")
    ref.complete()
    want = {rel: (tmp_path / "ref" / INFO.run_id / rel).read_bytes() for rel in ref._io_files()}
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        w = _write_small_run(disk, cycles=[1])
        run = disk / INFO.run_id
        _cycle_files(w, 2)
        _filters(w)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk, then give one page back: the cycle manifest fits, InterOp does not
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        os.ftruncate(fd, os.fstat(fd).st_size - 4096)
        os.close(fd)
        with pytest.raises(RunFolderFull):
            w.complete_cycle(2)
        assert (run / "Manifest" / "cycle_0002.json").is_file()  # the disk filled in the InterOp append
        assert w.interop_state() == (0, ())  # nothing counted ...
        for rel in w._io_files():  # ... and nothing partial on disk
            assert not (run / rel).exists() or (run / rel).stat().st_size == 0
        filler.unlink()  # space is freed: the writer stage's retry
        w.complete_cycle(2)
        _write_small_run(disk, cycles=[3, 4], writer=w)
        w.complete()
        assert {rel: (run / rel).read_bytes() for rel in want} == want
        assert RunFolder(run).verify() == []
