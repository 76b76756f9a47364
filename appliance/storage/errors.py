"""The storage tiers' error, in a leaf module: the manager, restore and scrub raise it."""

__all__ = ["StorageError"]


class StorageError(RuntimeError):
    """A storage operation cannot be done (unknown run, no good copy, ...); says what to do."""
