"""The config file's error and reader: a leaf module (standard library only), so that the
config sections of other packages (offload, storage, lab) use them without importing
``appliance.config``, which builds those sections."""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["ConfigError", "read_toml"]


class ConfigError(ValueError):
    """A run configuration is malformed; the message names the key and the allowed values."""


def read_toml(path: Path, what: str, *, error: type[ConfigError] = ConfigError, hint: str = "") -> dict:
    """The TOML document in ``path``; ``error`` naming ``what`` (e.g. "run config") when the
    file cannot be read (with ``hint``, the fix) or is not valid TOML."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}{hint}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
