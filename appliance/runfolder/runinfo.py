"""The identity and geometry of one run: what RunInfo.xml says, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Tools split command lines on spaces and treat '/' as a path separator; keep ids plain.
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RunInfo:
    """One run: ids, the lane, its tiles, and the read structure.

    ``reads`` is one ``(cycles, is_index)`` pair per read, in sequencing order; their cycles
    add up to ``n_cycles``. ``number`` and ``date`` (``YYMMDD`` or ``""``) only go into
    RunInfo.xml; no clock is read, so the XML is the same bytes every time.
    """

    run_id: str
    instrument: str
    flowcell: str
    lane: int
    tiles: tuple[int, ...]
    n_cycles: int
    reads: tuple[tuple[int, bool], ...]
    number: int = 1
    date: str = field(default="")

    def __post_init__(self) -> None:
        for key in ("run_id", "instrument", "flowcell"):
            v = getattr(self, key)
            if not isinstance(v, str) or not _ID_RE.match(v):
                raise ValueError(
                    f"RunInfo.{key}={v!r}: must be a non-empty string of letters, digits, "
                    "'_', '-' or '.' (no spaces or slashes)"
                )
        if (
            isinstance(self.lane, bool)
            or not isinstance(self.lane, int)
            or not 1 <= self.lane <= 99
        ):
            raise ValueError(f"RunInfo.lane={self.lane!r}: must be an integer from 1 to 99")
        try:
            tiles = tuple(self.tiles)
        except TypeError:
            raise ValueError(
                f"RunInfo.tiles={self.tiles!r}: must be a sequence of tile numbers"
            ) from None
        if not tiles or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tiles):
            raise ValueError(
                f"RunInfo.tiles={self.tiles!r}: must be a non-empty sequence of positive integers "
                "(Illumina numbering, e.g. 1101, 1102)"
            )
        if len(set(tiles)) != len(tiles):
            raise ValueError(f"RunInfo.tiles={self.tiles!r}: tile numbers must be unique")
        object.__setattr__(self, "tiles", tiles)
        if (
            isinstance(self.n_cycles, bool)
            or not isinstance(self.n_cycles, int)
            or self.n_cycles < 1
        ):
            raise ValueError(f"RunInfo.n_cycles={self.n_cycles!r}: must be a positive integer")
        try:
            reads = tuple((int(c), bool(ix)) for c, ix in self.reads)
        except (TypeError, ValueError):
            raise ValueError(
                f"RunInfo.reads={self.reads!r}: must be a sequence of (cycles, is_index) pairs, "
                "e.g. ((26, False),)"
            ) from None
        if not reads or any(c < 1 for c, _ in reads):
            raise ValueError(
                f"RunInfo.reads={self.reads!r}: needs at least one read, each of >= 1 cycle"
            )
        if sum(c for c, _ in reads) != self.n_cycles:
            raise ValueError(
                f"RunInfo.reads={self.reads!r}: the reads' cycles add up to "
                f"{sum(c for c, _ in reads)}, but n_cycles={self.n_cycles}; make them agree"
            )
        object.__setattr__(self, "reads", reads)
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 0:
            raise ValueError(f"RunInfo.number={self.number!r}: must be a non-negative integer")
        if self.date and not re.match(r"^\d{6}$", self.date):
            raise ValueError(f"RunInfo.date={self.date!r}: must be YYMMDD (six digits) or empty")

    @property
    def read_structure(self) -> str:
        """Picard's READ_STRUCTURE for these reads, e.g. ``26T`` or ``151T8B151T``."""
        return "".join(f"{c}{'B' if ix else 'T'}" for c, ix in self.reads)

    def read_of_cycle(self, cycle: int) -> int:
        """The 1-based read number that ``cycle`` (1-based) belongs to."""
        end = 0
        for i, (c, _) in enumerate(self.reads, 1):
            end += c
            if cycle <= end:
                return i
        raise ValueError(f"cycle {cycle} is outside 1..{self.n_cycles}")

    def read_cycles(self, read: int) -> range:
        """The cycles (1-based) of read ``read`` (1-based)."""
        start = sum(c for c, _ in self.reads[: read - 1]) + 1
        return range(start, start + self.reads[read - 1][0])
