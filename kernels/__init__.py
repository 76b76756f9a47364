"""Pure array kernels (NumPy and CuPy) and the synthetic flow-cell instrument.

No processes and no I/O beyond what a caller asks for.
"""

from kernels.synthetic import InstrumentParams, SyntheticInstrument, TileTruth
from kernels.basecall import (
    BasecallModel,
    BasecallResult,
    CycleCalls,
    StreamingBasecaller,
    call_argmax,
    call_bases,
    chastity,
    estimate_model,
    pass_filter,
)
from kernels.crosstalk import correct_crosstalk, estimate_crosstalk
from kernels.phasing import correct_phasing, estimate_phasing, phasing_matrix
from kernels.quality import QualityTable, default_quality_table, train_quality_table

from kernels.backend import (
    Backend,
    BackendUnavailableError,
    get_array_module,
    get_backend,
    to_host,
)
from kernels.background import (
    background_grid,
    estimate_background,
    sample_background,
    subtract_background,
)
from kernels.bandpass import BandPass, difference_of_gaussians, gaussian_laplace
from kernels.chain import ChainConfig, CycleResult, TileChain
from kernels.correct import FlatFieldCorrector, correct_frame
from kernels.deconvolution import RichardsonLucy, WienerFilter, richardson_lucy, wiener
from kernels.detect import ClusterDetector, TemplateBuilder, detect_clusters, find_peaks
from kernels.extract import extract_channels, extract_intensities
from kernels.registration import PhaseCorrelator, fourier_shift, phase_correlate

__all__: list[str] = []
__all__ += [
    "Backend", "BackendUnavailableError", "get_array_module", "get_backend", "to_host",
    "background_grid", "estimate_background", "sample_background", "subtract_background",
    "BandPass", "difference_of_gaussians", "gaussian_laplace",
    "ChainConfig", "CycleResult", "TileChain",
    "FlatFieldCorrector", "correct_frame",
    "RichardsonLucy", "WienerFilter", "richardson_lucy", "wiener",
    "ClusterDetector", "TemplateBuilder", "detect_clusters", "find_peaks",
    "extract_channels", "extract_intensities",
    "PhaseCorrelator", "fourier_shift", "phase_correlate",
]
__all__ += ["InstrumentParams", "SyntheticInstrument", "TileTruth"]
__all__ += [
    "BasecallModel", "BasecallResult", "CycleCalls", "StreamingBasecaller", "call_argmax",
    "call_bases", "chastity", "estimate_model", "pass_filter",
    "correct_crosstalk", "estimate_crosstalk",
    "correct_phasing", "estimate_phasing", "phasing_matrix",
    "QualityTable", "default_quality_table", "train_quality_table",
]
