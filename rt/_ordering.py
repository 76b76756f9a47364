"""Why the ring is correct without explicit fences, and the check that refuses other CPUs.

The ring publishes data with plain stores: the producer writes a slot (payload and header)
and then stores the new write counter; the consumer loads the write counter and then reads
the slot. It hands a slot back by storing the read counter after its last read of the slot;
the producer loads the read counter before it writes into that slot again.

This is correct on x86-64 because of its memory model (TSO, Intel SDM vol. 3 §9.2.2):

* stores are not reordered with other stores, so the payload stores become visible to the
  other core before the counter store that publishes them;
* loads are not reordered with other loads, so a consumer that sees the new counter then
  sees the payload written before it;
* loads are not reordered with later stores, so the consumer's reads of a slot complete
  before its read-counter store lets the producer overwrite that slot.

The only reordering x86-64 allows (a later load passing an earlier store) is never relied
on: the kernel-wait doorbell, the one place it could matter, re-checks on a bounded timeout
slice so a missed wakeup costs at most one slice, never a lost frame.

The compiler cannot reorder either: every counter access is a separate call into the
interpreter (``memoryview`` item get/set), an opaque function boundary for the C compiler,
and each is one aligned 8-byte ``mov`` (memcpy of a constant 8 bytes), hence single-copy
atomic: a reader sees the old or the new counter, never a torn mix.

On weakly ordered CPUs (ARM, POWER, RISC-V) the first two guarantees do not hold without
barriers that Python cannot emit, so :func:`check_platform` refuses to create or open a
ring there.
"""

from __future__ import annotations

import platform
import sys

from rt._errors import UnsupportedPlatform

__all__ = ["check_platform", "SUPPORTED_MACHINES"]

SUPPORTED_MACHINES = frozenset({"x86_64", "amd64", "AMD64"})


def check_platform(machine: str | None = None, byteorder: str | None = None) -> None:
    """Raise :class:`UnsupportedPlatform` where the ring's ordering argument does not hold."""
    machine = machine or platform.machine()
    byteorder = byteorder or sys.byteorder
    if machine not in SUPPORTED_MACHINES:
        raise UnsupportedPlatform(
            f"the shared-memory ring relies on x86-64 store ordering (TSO); this CPU is "
            f"{machine!r}, where stores may be reordered without barriers Python cannot emit. "
            f"Run on x86-64, or port the ring's counter accesses to a C extension with "
            f"release/acquire atomics (see rt/_ordering.py)."
        )
    if byteorder != "little":
        raise UnsupportedPlatform(f"the frame header is little-endian; this host is {byteorder}-endian")
