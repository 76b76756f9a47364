"""The appliance: supervisor, stages, run configuration, run folder, control plane.

Public names are re-exported here as the parts land.
"""

from appliance._version import __version__

__all__ = ["__version__"]
