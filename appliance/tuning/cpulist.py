"""Linux CPU-list ("0-3,8,10-11") and CPU-mask ("ff,00000001") syntax, both directions.

The kernel prints CPU sets in these two forms (``cpulist`` files and ``smp_affinity``
masks). The cpulist parser is :mod:`rt.topology`'s (one parser for the whole project, so
tuning and pinning read CPU lists alike); the hex-mask forms, which only tuning writes, are
here.
"""

from __future__ import annotations

from collections.abc import Iterable

from rt.topology import format_cpulist, parse_cpulist

__all__ = ["parse_cpulist", "format_cpulist", "parse_cpumask", "format_cpumask"]


def parse_cpumask(text: str) -> frozenset[int]:
    """Parse a hex CPU mask as in ``/proc/irq/*/smp_affinity`` (``"ffffffff,00000003"``)."""
    digits = text.strip().replace(",", "")
    if not digits:
        return frozenset()
    try:
        value = int(digits, 16)
    except ValueError:
        raise ValueError(f"bad CPU mask {text!r}: expected hex digits in 32-bit groups") from None
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def format_cpumask(cpus: Iterable[int], nbits: int) -> str:
    """Format CPU ids as the kernel prints a mask of ``nbits`` CPUs (32-bit groups, commas)."""
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    ndigits = max(1, (max(nbits, value.bit_length()) + 3) // 4)
    hexed = format(value, f"0{ndigits}x")
    groups = []
    while hexed:
        groups.insert(0, hexed[-8:])
        hexed = hexed[:-8]
    return ",".join(groups)
