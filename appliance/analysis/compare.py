"""Job kind ``compare``: a candidate algorithm's reprocessed output against production on the
same tiles, and the verdict ``promote`` or ``rollback``.

Production is the run folder itself (what the real-time pipeline wrote with the production
algorithm), restricted to the candidate's tiles; ``production`` in params may name a
reprocess output of production instead. Clusters are matched by position (the ``.locs``, within
``match_radius_px``), because different chain parameters may detect different clusters. The
report holds: base-call agreement of clusters matched and pass-filter in both (% identical
calls, overall and per cycle); each side's mismatch error rate against the reference (both
aligned with :mod:`appliance.analysis.align_qc`, PF reads); the relative intensity difference
per channel (median and p95 of ``|cand - prod| / |prod|`` over matched clusters); PF rates.

Verdict: ``promote`` when the candidate's error rate is at most production's plus
``max_error_increase`` (absolute, default 0.001) *and* agreement is at least ``min_agreement``
(default 0.98) *and* at least ``min_matched`` (default 0.9) of production's clusters have a
candidate cluster; otherwise ``rollback``, with the failed conditions listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.analysis._common import check_params, dump_json, fsync_tree, open_complete_run
from appliance.offload.errors import PermanentJobError

__all__ = ["DEFAULT_THRESHOLDS", "compare_folders", "format_report", "run_job"]

KIND = "compare"
RESULT_FILE = "compare.json"
REPORT_FILE = "compare.md"
DEFAULT_THRESHOLDS = {"max_error_increase": 0.001, "min_agreement": 0.98, "min_matched": 0.9, "match_radius_px": 1.0}
_CHANNELS = ("A", "C", "G", "T")


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def compare_folders(prod, cand, tiles=None, thresholds: dict | None = None) -> dict:
    """Compare two :class:`~appliance.runfolder.RunFolder` of the same run on ``tiles``
    (default: the candidate's); returns the report (see the module docstring)."""
    from scipy.spatial import cKDTree

    from appliance.analysis.align_qc import align_reads, make_aligner, reads_from_run_folder
    from appliance.runfolder.layout import REFERENCE

    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    tiles = list(cand.info.tiles if tiles is None else tiles)
    missing = [t for t in tiles if t not in prod.info.tiles]
    if missing:
        raise PermanentJobError(f"compare: tiles {missing} of the candidate are not in the production run {prod.info.run_id}")
    n_cycles = prod.info.n_cycles
    if cand.info.n_cycles != n_cycles:
        raise PermanentJobError(f"compare: the candidate has {cand.info.n_cycles} cycles, production {n_cycles}; not the same run")
    agree = np.zeros(n_cycles, np.int64)
    compared = 0
    matched = prod_n = cand_n = prod_pf = cand_pf = 0
    rel: list[list[np.ndarray]] = [[] for _ in _CHANNELS]
    for tile in tiles:
        p_locs, c_locs = prod.read_locs(tile), cand.read_locs(tile)
        p_pf, c_pf = prod.read_filter(tile), cand.read_filter(tile)
        prod_n += len(p_locs)
        cand_n += len(c_locs)
        prod_pf += int(p_pf.sum())
        cand_pf += int(c_pf.sum())
        if not len(p_locs) or not len(c_locs):
            continue
        dist, idx = cKDTree(c_locs).query(p_locs, distance_upper_bound=th["match_radius_px"])
        ok = np.isfinite(dist)
        matched += int(ok.sum())
        pi = np.flatnonzero(ok)
        ci = idx[ok]
        both_pf = p_pf[pi] & c_pf[ci]
        compared += int(both_pf.sum())
        for cycle in range(1, n_cycles + 1):
            pb = prod.read_bcl(tile, cycle)[0][pi]
            cb = cand.read_bcl(tile, cycle)[0][ci]
            agree[cycle - 1] += int(np.count_nonzero((pb == cb) & both_pf))
            pin = prod.read_intensities(tile, cycle)[pi]
            cin = cand.read_intensities(tile, cycle)[ci]
            for k in range(min(len(_CHANNELS), pin.shape[1])):
                p, c = pin[:, k].astype(np.float64), cin[:, k].astype(np.float64)
                good = np.isfinite(p) & np.isfinite(c) & (np.abs(p) > 1e-6)
                rel[k].append(np.abs(c[good] - p[good]) / np.abs(p[good]))
    if not matched:
        raise PermanentJobError("compare: no cluster of the candidate lies near a production cluster; are both outputs of the same run and tiles?")
    reference = prod.path / REFERENCE
    errors = {}
    if reference.is_file():
        aligner = make_aligner(reference, n_cycles)
        for side, folder in (("production", prod), ("candidate", cand)):
            prof = align_reads(aligner, reads_from_run_folder(folder, range(1, n_cycles + 1), tiles), n_cycles)
            errors[side] = {**prof.summary(), "per_cycle_error_rate": [r["error_rate"] for r in prof.per_cycle()]}
    intens = {}
    for k, ch in enumerate(_CHANNELS):
        v = np.concatenate(rel[k]) if rel[k] else np.zeros(0)
        intens[ch] = {"median_rel_diff": _pct(v, 50), "p95_rel_diff": _pct(v, 95), "values": int(v.size)}
    agreement = float(agree.sum()) / max(compared * n_cycles, 1)
    matched_fraction = matched / max(prod_n, 1)
    reasons = []
    if errors:
        pe, ce = errors["production"]["error_rate"], errors["candidate"]["error_rate"]
        if ce > pe + th["max_error_increase"]:
            reasons.append(f"error rate {ce:.5f} exceeds production's {pe:.5f} by more than {th['max_error_increase']}")
    else:
        reasons.append(f"no reference ({REFERENCE}) to measure error rates against")
    if agreement < th["min_agreement"]:
        reasons.append(f"base-call agreement {agreement:.4f} is below {th['min_agreement']}")
    if matched_fraction < th["min_matched"]:
        reasons.append(f"only {matched_fraction:.3f} of production's clusters have a candidate cluster (need {th['min_matched']})")
    return {
        "run": prod.info.run_id,
        "tiles": tiles,
        "thresholds": th,
        "clusters": {"production": prod_n, "candidate": cand_n, "matched": matched, "matched_fraction": matched_fraction, "compared_pf_both": compared},
        "pf_rate": {"production": prod_pf / max(prod_n, 1), "candidate": cand_pf / max(cand_n, 1)},
        "agreement": agreement,
        "agreement_per_cycle": [int(a) / max(compared, 1) for a in agree],
        "error": errors,
        "intensity": intens,
        "verdict": "promote" if not reasons else "rollback",
        "reasons": reasons,
    }


def format_report(doc: dict) -> str:
    """The report as Markdown (compare.md)."""
    e = doc.get("error", {})
    lines = [
        f"# Algorithm comparison: {doc.get('candidate_algorithm', 'candidate')} vs {doc.get('production_algorithm', 'production')}",
        "",
        f"Run `{doc['run']}`, tiles {', '.join(map(str, doc['tiles']))}.",
        "",
        f"**Verdict: {doc['verdict']}**" + ("" if not doc["reasons"] else " (" + "; ".join(doc["reasons"]) + ")"),
        "",
        "| | production | candidate |",
        "|---|---|---|",
        f"| clusters | {doc['clusters']['production']} | {doc['clusters']['candidate']} |",
        f"| PF rate | {doc['pf_rate']['production']:.4f} | {doc['pf_rate']['candidate']:.4f} |",
    ]
    if e:
        lines += [
            f"| % aligned (PF reads) | {e['production']['pct_aligned']:.2f} | {e['candidate']['pct_aligned']:.2f} |",
            f"| error rate | {e['production']['error_rate']:.5f} | {e['candidate']['error_rate']:.5f} |",
        ]
    th = doc["thresholds"]
    lines += [
        "",
        f"Clusters matched by position (within {th['match_radius_px']} px): {doc['clusters']['matched']} "
        f"({doc['clusters']['matched_fraction'] * 100:.1f}% of production's).",
        f"Base-call agreement (matched clusters PF in both): {doc['agreement'] * 100:.3f}% "
        f"(threshold {th['min_agreement'] * 100:.1f}%); error-rate increase allowed: {th['max_error_increase']}.",
        "",
        "| channel | median relative intensity difference | p95 |",
        "|---|---|---|",
    ]
    for ch, v in doc["intensity"].items():
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        lines.append(f"| {ch} | {fmt(v['median_rel_diff'])} | {fmt(v['p95_rel_diff'])} |")
    lines += ["", "| cycle | agreement | production error | candidate error |", "|---|---|---|---|"]
    for i, a in enumerate(doc["agreement_per_cycle"]):
        pe = e["production"]["per_cycle_error_rate"][i] if e else None
        ce = e["candidate"]["per_cycle_error_rate"][i] if e else None
        lines.append(f"| {i + 1} | {a * 100:.2f}% | {'-' if pe is None else f'{pe:.5f}'} | {'-' if ce is None else f'{ce:.5f}'} |")
    return "\n".join(lines) + "\n"


def _output_folder(data_root: Path, value, run: str, what: str):
    from appliance.runfolder import RunFolder, RunFolderError

    if not isinstance(value, str) or not value:
        raise PermanentJobError(f"compare: {what}={value!r} must be a reprocess job's output folder (a path)")
    path = Path(value)
    if not path.is_absolute():
        path = Path(data_root) / path
    for cand in (path / run, path):
        if (cand / "RunInfo.xml").is_file():
            try:
                folder = RunFolder(cand)
                if folder.is_complete and not folder.verify():
                    return folder
            except RunFolderError:
                pass
            raise PermanentJobError(f"compare: {cand} is not a complete, intact run folder; run the reprocess job again")
    raise PermanentJobError(f"compare: {path} holds no reprocessed run folder for {run}; run the reprocess job for it first and pass its output folder")


def run_job(params: dict, ctx) -> dict:
    """The ``compare`` job: params ``{"run", "candidate": reprocess output dir, "algorithm",
    "version"}`` plus optional ``production`` (a reprocess output of production) and threshold
    overrides (``max_error_increase``, ``min_agreement``, ``min_matched``, ``match_radius_px``).
    Writes compare.json and compare.md; returns the verdict and the headline figures."""
    check_params(KIND, params, ("run", "candidate", "algorithm", "version"), ("production", *DEFAULT_THRESHOLDS))
    thresholds = {}
    for k in DEFAULT_THRESHOLDS:
        if k in params:
            v = params[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise PermanentJobError(f"compare: {k}={v!r} must be a number >= 0")
            thresholds[k] = float(v)
    run = params["run"]
    prod = open_complete_run(ctx.data_root, run)
    if "production" in params:
        prod = _output_folder(ctx.data_root, params["production"], run, "production")
    cand = _output_folder(ctx.data_root, params["candidate"], run, "candidate")
    doc = compare_folders(prod, cand, thresholds=thresholds)
    from appliance.analysis.algorithms import AlgorithmError, AlgorithmRegistry

    doc["candidate_algorithm"] = f"{params['algorithm']}@{params['version']}"
    try:
        with AlgorithmRegistry.open(ctx.data_root, ctx.ledger) as registry:
            doc["production_algorithm"] = registry.production().key
    except AlgorithmError:
        doc["production_algorithm"] = "production"
    dump_json(Path(ctx.staging_dir) / RESULT_FILE, doc)
    (Path(ctx.staging_dir) / REPORT_FILE).write_text(format_report(doc))
    fsync_tree(ctx.staging_dir)
    e = doc["error"]
    return {
        "run": run,
        "candidate": doc["candidate_algorithm"],
        "production": doc["production_algorithm"],
        "verdict": doc["verdict"],
        "reasons": doc["reasons"],
        "agreement": doc["agreement"],
        "error_rate": {k: v["error_rate"] for k, v in e.items()},
        "matched_fraction": doc["clusters"]["matched_fraction"],
    }
