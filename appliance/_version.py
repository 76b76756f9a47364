"""The package version, read from the installed distribution metadata."""

from importlib import metadata

try:
    __version__ = metadata.version("flowcell-appliance")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
