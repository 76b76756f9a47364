"""Shared settings for tests that start real runs: small, lossless, unthrottled."""

from __future__ import annotations

from pathlib import Path

from appliance.config import RunConfig, load_config


def small_run_config(root: Path, *extra: str) -> RunConfig:
    """256 px tiles, the camera unthrottled and lossless (block), quick restarts; ``extra``
    overrides (``section.key=value``) come last and win."""
    return load_config(
        overrides=[
            f'output.root="{root}"',
            "source.synthetic.tile_size=256",
            "source.rate_hz=0",
            'edges.raw.policy="block"',
            "supervisor.backoff_s=0.1",
            *extra,
        ]
    )
