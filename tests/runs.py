"""Shared settings for tests that start real runs: small, lossless, unthrottled."""

from __future__ import annotations

from pathlib import Path

from appliance.config import RunConfig, load_config


def small_run_overrides(root: Path, *extra: str) -> list[str]:
    """256 px tiles, the camera unthrottled and lossless (block), frames rendered as they are
    sent (no pre-render: a second or two less per run, and the suite starts ~50 runs), quick
    restarts, as ``section.key=value`` overrides (what ``appliance serve --set`` takes);
    ``extra`` come last and win."""
    return [
        f'output.root="{root}"',
        "source.synthetic.tile_size=256",
        "source.rate_hz=0",
        "source.prerender=false",
        'edges.raw.policy="block"',
        "supervisor.backoff_s=0.1",
        *extra,
    ]


def small_run_config(root: Path, *extra: str) -> RunConfig:
    """The config of :func:`small_run_overrides`."""
    return load_config(overrides=small_run_overrides(root, *extra))
