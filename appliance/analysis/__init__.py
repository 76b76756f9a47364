"""Secondary analysis job kinds (fastq, align-qc, cycle-qc, reprocess, compare) and the
registry of named, versioned algorithms (the data root's file, or the lab database's). Each
job module exposes ``run_job(params, ctx)`` (see :class:`appliance.offload.context.JobContext`);
the offload layer imports them by name. See docs/analysis.md."""

from appliance.analysis.algorithms import (
    Algorithm,
    AlgorithmError,
    AlgorithmRegistry,
    RegistryUnavailable,
    run_algorithm,
    run_algorithm_info,
)
from appliance.analysis.align_qc import ErrorProfile, align_reads, make_aligner
from appliance.analysis.compare import compare_folders
from appliance.analysis.cycle_qc import cycle_figures
from appliance.analysis.fastq import write_fastq
from appliance.analysis.reprocess import reprocess_run

__all__ = [
    "Algorithm",
    "AlgorithmError",
    "AlgorithmRegistry",
    "ErrorProfile",
    "RegistryUnavailable",
    "align_reads",
    "compare_folders",
    "cycle_figures",
    "make_aligner",
    "reprocess_run",
    "run_algorithm",
    "run_algorithm_info",
    "write_fastq",
]
