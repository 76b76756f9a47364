"""Job kind ``align-qc``: align a run's FASTQ reads to its reference with minimap2 (``mappy``)
and report % aligned and the mismatch error rate, overall and per cycle.

Sequencing-by-synthesis errors are substitutions, and they grow towards the last cycles (the
read's 3' end), exactly where a local aligner soft-clips. So a read whose primary alignment
has no indel is compared base by base over its *whole* length, extended ungapped from the
aligned block into the reference (soft clips are counted, not hidden); a read whose alignment
has an indel is compared over its aligned (M) columns only and counted in ``indel_reads``.
No-calls (``N``) are neither matches nor errors: they are counted apart, as the ground-truth
scorer (:func:`appliance.pipeline.summary.score_against_truth`) does. Only pass-filter reads
are aligned (name flag ``N``); % aligned is of PF reads.

Short reads (< 100 bases, like the synthetic runs' 20-30 cycles) are too short for the ``sr``
preset's 21-mers: the index then uses k = clamp(length / 3, 10, 21), w = clamp(k / 3, 2, 11),
and a minimum chain and alignment score of k and the read length (half a perfect score).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.analysis._common import check_params, dump_json, file_sizes, fsync_tree, open_complete_run
from appliance.offload.errors import PermanentJobError

__all__ = ["ErrorProfile", "make_aligner", "align_reads", "reads_from_fastq", "reads_from_run_folder", "run_job"]

KIND = "align-qc"
RESULT_FILE = "align_qc.json"
PER_CYCLE_FILE = "align_qc_per_cycle.tsv"
_COMP = str.maketrans("ACGTN", "TGCAN")
_CIGAR_M, _CIGAR_I, _CIGAR_D = 0, 1, 2


@dataclass
class ErrorProfile:
    """Counts per cycle (index 0 = cycle 1 of the run) of aligned PF reads."""

    n_cycles: int
    reads: int = 0  #: PF reads offered to the aligner
    aligned: int = 0
    indel_reads: int = 0
    bases: np.ndarray = field(default=None)  # type: ignore[assignment]  #: called bases compared
    mismatches: np.ndarray = field(default=None)  # type: ignore[assignment]
    no_calls: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("bases", "mismatches", "no_calls"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.n_cycles, np.int64))

    @property
    def error_rate(self) -> float:
        return int(self.mismatches.sum()) / max(int(self.bases.sum()), 1)

    @property
    def aligned_fraction(self) -> float:
        return self.aligned / max(self.reads, 1)

    def per_cycle(self) -> list[dict]:
        return [
            {
                "cycle": c + 1,
                "bases": int(self.bases[c]),
                "mismatches": int(self.mismatches[c]),
                "no_calls": int(self.no_calls[c]),
                "error_rate": int(self.mismatches[c]) / max(int(self.bases[c]), 1),
            }
            for c in range(self.n_cycles)
        ]

    def summary(self) -> dict:
        return {
            "pf_reads": self.reads,
            "aligned": self.aligned,
            "pct_aligned": 100.0 * self.aligned_fraction,
            "indel_reads": self.indel_reads,
            "bases_compared": int(self.bases.sum()),
            "mismatches": int(self.mismatches.sum()),
            "no_calls": int(self.no_calls.sum()),
            "error_rate": self.error_rate,
        }


def make_aligner(reference: str | Path, read_length: int):
    """A ``mappy.Aligner`` on ``reference`` fit for reads of ``read_length`` (see the module
    docstring); PermanentJobError when the reference cannot be indexed."""
    import mappy

    if read_length >= 100:
        kw: dict = {}
    else:
        k = int(min(21, max(10, read_length // 3)))
        kw = dict(k=k, w=int(min(11, max(2, k // 3))), min_cnt=1, min_chain_score=k, min_dp_score=int(read_length))
    aligner = mappy.Aligner(str(reference), preset="sr", n_threads=1, **kw)
    if not aligner:
        raise PermanentJobError(f"{reference}: minimap2 could not index the reference (not a FASTA file?); check Reference/genome.fa")
    return aligner


def _load_reference(aligner) -> dict[str, str]:
    return {name: aligner.seq(name) for name in aligner.seq_names}


def align_reads(aligner, reads: Iterable[tuple[str, int]], n_cycles: int, ref: dict[str, str] | None = None) -> ErrorProfile:
    """Align ``(sequence, first_cycle)`` reads (``first_cycle`` 1-based: where the read starts
    in the run's cycles) and count mismatches per cycle (see the module docstring)."""
    ref = _load_reference(aligner) if ref is None else ref
    prof = ErrorProfile(n_cycles)
    for seq, first in reads:
        prof.reads += 1
        hit = next((h for h in aligner.map(seq) if h.is_primary), None)
        if hit is None:
            continue
        prof.aligned += 1
        L = len(seq)
        # Orient the read like the reference: reverse strand reads are reverse-complemented,
        # and position i of the oriented read is cycle first + (L - 1 - i).
        if hit.strand == 1:
            oriented, q_st = seq, hit.q_st
        else:
            oriented, q_st = seq.translate(_COMP)[::-1], L - hit.q_en
        cycle_of = (np.arange(L) if hit.strand == 1 else L - 1 - np.arange(L)) + first - 1
        rseq = ref[hit.ctg]
        if all(op == _CIGAR_M for _n, op in hit.cigar):
            start = hit.r_st - q_st
            if start < 0 or start + L > len(rseq):  # the extension runs off the contig: aligned part only
                cols = np.arange(q_st, q_st + (hit.r_en - hit.r_st))
                refcols = np.arange(hit.r_st, hit.r_en)
            else:
                cols = np.arange(L)
                refcols = np.arange(start, start + L)
        else:
            prof.indel_reads += 1
            qs, rs, qi, ri = [], [], q_st, hit.r_st
            for n, op in hit.cigar:
                if op == _CIGAR_M:
                    qs.append(np.arange(qi, qi + n))
                    rs.append(np.arange(ri, ri + n))
                    qi += n
                    ri += n
                elif op == _CIGAR_I:
                    qi += n
                elif op == _CIGAR_D:
                    ri += n
            cols, refcols = np.concatenate(qs), np.concatenate(rs)
        q = np.frombuffer(oriented.encode(), np.uint8)[cols]
        r = np.frombuffer(rseq.encode(), np.uint8)[refcols]
        cyc = cycle_of[cols]
        nc = q == ord("N")
        np.add.at(prof.no_calls, cyc[nc], 1)
        np.add.at(prof.bases, cyc[~nc], 1)
        np.add.at(prof.mismatches, cyc[~nc & (q != r)], 1)
    return prof


def reads_from_fastq(path: str | Path, first_cycle: int, pf_only: bool = True) -> Iterator[tuple[str, int]]:
    """``(sequence, first_cycle)`` of the reads of a FASTQ file (PF reads only: name flag ``N``)."""
    import mappy

    for _name, seq, _qual, comment in mappy.fastx_read(str(path), read_comment=True):
        flags = (comment or "").split(":")
        if pf_only and len(flags) > 1 and flags[1] == "Y":
            continue
        yield seq, first_cycle


def reads_from_run_folder(folder, read_cycles: range, tiles=None, pf_only: bool = True) -> Iterator[tuple[str, int]]:
    """``(sequence, first_cycle)`` straight from a run folder's base calls (no FASTQ needed)."""
    letters = np.frombuffer(b"ACGTN", np.uint8)
    for tile in folder.info.tiles if tiles is None else tiles:
        pf = folder.read_filter(tile)
        calls = np.stack([folder.read_bcl(tile, c)[0] for c in read_cycles], axis=1)
        seqs = letters[calls]
        for k in range(len(pf)):
            if pf[k] or not pf_only:
                yield seqs[k].tobytes().decode(), read_cycles.start


def _fastq_dir(data_root: Path, value) -> Path:
    if not isinstance(value, str) or not value:
        raise PermanentJobError(f"align-qc: fastq={value!r} must be the fastq job's output folder (a path)")
    path = Path(value)
    if not path.is_absolute():
        path = Path(data_root) / path
    if not path.is_dir():
        raise PermanentJobError(f"align-qc: the FASTQ folder {path} does not exist; run the fastq job for this run first and pass its output folder")
    return path


def run_job(params: dict, ctx) -> dict:
    """The ``align-qc`` job: params ``{"run": run_id, "fastq": fastq job output dir}`` (a path,
    absolute or under the data root); writes ``align_qc.json`` and a per-cycle TSV."""
    from appliance.analysis.fastq import fastq_name, read_files
    from appliance.runfolder.layout import REFERENCE

    check_params(KIND, params, ("run", "fastq"))
    # align-qc reads the FASTQs (the fastq job verified the run before writing them) and the
    # reference: only the reference is checked against the manifest, not the whole run again.
    folder = open_complete_run(ctx.data_root, params["run"], verify=False)
    fq_dir = _fastq_dir(ctx.data_root, params["fastq"])
    reference = folder.path / REFERENCE
    if not reference.is_file():
        raise PermanentJobError(f"{folder.path}: no reference ({REFERENCE}); write the reference FASTA into the run folder (synthetic runs do it) to align")
    problems = folder.verify_files((REFERENCE,))
    if problems:
        raise PermanentJobError(f"{folder.path}: {problems[0]}; restore the reference from a copy (appliance storage restore) and submit again")
    info = folder.info
    template = [(label, cycles) for label, cycles, _n in read_files(info) if label.startswith("R")]
    aligner = make_aligner(reference, max(len(c) for _l, c in template))
    ref = _load_reference(aligner)
    total = ErrorProfile(info.n_cycles)
    for label, cycles in template:
        path = fq_dir / fastq_name(info.run_id, info.lane, label)
        if not path.is_file():
            raise PermanentJobError(f"align-qc: {path} is missing; the fastq output {fq_dir} is not this run's (or is incomplete): run the fastq job again")
        prof = align_reads(aligner, reads_from_fastq(path, cycles.start), info.n_cycles, ref)
        total.bases += prof.bases
        total.mismatches += prof.mismatches
        total.no_calls += prof.no_calls
        if label == "R1":
            total.reads, total.aligned = prof.reads, prof.aligned
        total.indel_reads += prof.indel_reads
    result = {"run": info.run_id, "reference": REFERENCE, "aligner": f"minimap2 (mappy) sr, k={aligner.k} w={aligner.w}", **total.summary()}
    dump_json(Path(ctx.staging_dir) / RESULT_FILE, {**result, "per_cycle": total.per_cycle()})
    lines = ["cycle\tbases\tmismatches\tno_calls\terror_rate"]
    lines += [f"{r['cycle']}\t{r['bases']}\t{r['mismatches']}\t{r['no_calls']}\t{r['error_rate']:.6g}" for r in total.per_cycle()]
    (Path(ctx.staging_dir) / PER_CYCLE_FILE).write_text("\n".join(lines) + "\n")
    fsync_tree(ctx.staging_dir)
    result["files"] = file_sizes(ctx.staging_dir)
    return result
