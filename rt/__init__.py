"""Real-time plumbing: the shared-memory SPSC ring, the frame header, and process helpers
(topology, pinning, memory locking, real-time scheduling, parent-death detection).

Nothing here imports from ``appliance`` or ``tui``; importing ``rt`` has no side effects.
"""

from rt._errors import (
    ConsumerGone,
    EndOfStream,
    PeerGone,
    ProducerGone,
    RingBusy,
    RingClosed,
    RingError,
    RingFormatError,
    RingNotFound,
    RingTimeout,
    UnsupportedPlatform,
    WouldBlock,
)
from rt.frame import (
    FRAME_HEADER_DTYPE,
    FRAME_HEADER_SIZE,
    FrameFlags,
    checksum,
    stamp_acquisition,
    stamp_trace,
)
from rt.ring import (
    POLICIES,
    WAIT_STRATEGIES,
    Consumer,
    Observer,
    Producer,
    Ring,
    RingGeometry,
    RingStatistics,
    Slot,
    clean_dead_rings,
    list_rings,
)

__all__ = [
    "ConsumerGone",
    "EndOfStream",
    "PeerGone",
    "ProducerGone",
    "RingBusy",
    "RingClosed",
    "RingError",
    "RingFormatError",
    "RingNotFound",
    "RingTimeout",
    "UnsupportedPlatform",
    "WouldBlock",
    "FRAME_HEADER_DTYPE",
    "FRAME_HEADER_SIZE",
    "FrameFlags",
    "checksum",
    "stamp_acquisition",
    "stamp_trace",
    "POLICIES",
    "WAIT_STRATEGIES",
    "Consumer",
    "Observer",
    "Producer",
    "Ring",
    "RingGeometry",
    "RingStatistics",
    "Slot",
    "clean_dead_rings",
    "list_rings",
]
