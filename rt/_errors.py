"""The ring's exceptions: one base, one class per situation a caller handles differently."""

from __future__ import annotations

__all__ = [
    "RingError",
    "WouldBlock",
    "RingTimeout",
    "RingClosed",
    "EndOfStream",
    "PeerGone",
    "ProducerGone",
    "ConsumerGone",
    "RingBusy",
    "RingNotFound",
    "RingFormatError",
    "UnsupportedPlatform",
]


class RingError(Exception):
    """Base of every error raised by :mod:`rt` rings."""


class WouldBlock(RingError):
    """A ``*_nowait`` call could not complete at once: the ring is full (producer) or empty
    (consumer). Retry later or use the blocking twin."""


class RingTimeout(WouldBlock):
    """A blocking call's ``timeout`` elapsed before a slot (producer) or a frame (consumer)
    became available. The ring is intact; the peer is alive but slow."""


class RingClosed(RingError):
    """This end was closed (``close()`` or its ``with`` block ended) and cannot be used."""


class EndOfStream(RingError):
    """The consumer has read every frame and the producer marked end of stream."""


class PeerGone(RingError):
    """The process at the other end died without closing its end.

    Raised while waiting, within ``peer_check_interval`` of the peer's death (or at the
    timeout, whichever is first). The ring and its unreleased frames survive: a restarted
    peer resumes at the shared counters.
    """

    def __init__(self, message: str, pid: int = 0) -> None:
        super().__init__(message)
        self.pid = pid


class ProducerGone(PeerGone):
    """The consumer waited on an empty ring whose producer process is dead (no end of stream)."""


class ConsumerGone(PeerGone):
    """The producer's wait on a full ring timed out and the consumer process is dead."""


class RingBusy(RingError):
    """Another live process already holds this end of the ring (the ring is single-producer,
    single-consumer). Stop that process first, or open another ring."""


class RingNotFound(RingError, FileNotFoundError):
    """No ring of that name exists (in /dev/shm or on a hugetlbfs mount)."""


class RingFormatError(RingError):
    """The named segment is not a ring of this version, or its geometry differs from what the
    caller expected: a wrong name, a stale segment from an older build, or a corrupt one.
    ``appliance clean`` removes stale rings of dead owners."""


class UnsupportedPlatform(RingError):
    """The ring's memory-ordering argument does not hold on this CPU architecture."""
