"""The priority classes of offload jobs, highest first: a leaf module, so that the scheduler,
the pools and the config all name them without importing each other."""

__all__ = ["CLASSES"]

CLASSES = ("realtime", "batch", "reprocess")
