"""The synthetic instrument's parameters for a run config: a leaf module, used by the stages,
the summary's ground-truth scoring and the algorithm registry alike."""

from __future__ import annotations

__all__ = ["synthetic_params"]


def synthetic_params(config):
    """The synthetic instrument's parameters for a run config."""
    from kernels.synthetic import InstrumentParams

    s = config.source.synthetic
    return InstrumentParams(
        tile_shape=(s.tile_size, s.tile_size),
        layout=s.layout,
        density=s.density,
        psf_sigma=s.psf_sigma,
        n_cycles=config.run.cycles,
        phasing=s.phasing,
        prephasing=s.prephasing,
        brightness_median=float(s.brightness),
    )
