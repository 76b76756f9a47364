"""Where each file of a run folder lives (paths relative to the run folder, POSIX style).

Lane folders are zero-padded (``L001``), the lane inside file names is not (``s_1_1101``),
as Illumina's software and picard expect.
"""

from __future__ import annotations

from dataclasses import dataclass

RUNINFO = "RunInfo.xml"
MANIFEST_DIR = "Manifest"
RUN_MANIFEST = f"{MANIFEST_DIR}/run.json"
INTENSITIES_INDEX = "Data/Intensities/intensities.json"
REFERENCE = "Reference/genome.fa"
RTA_COMPLETE = "RTAComplete.txt"
COPY_COMPLETE = "CopyComplete.txt"
#: raw audit frames kept by the preprocess stage (output.keep_raw_every); not in the manifest:
#: they are written during acquisition, before any cycle is complete
RAW_DIR = "Raw"


@dataclass(frozen=True)
class Layout:
    """Relative paths of one lane's files."""

    lane: int

    @property
    def lane_dir(self) -> str:
        return f"L{self.lane:03d}"

    def _stem(self, tile: int) -> str:
        return f"s_{self.lane}_{tile}"

    def locs(self, tile: int) -> str:
        return f"Data/Intensities/{self.lane_dir}/{self._stem(tile)}.locs"

    def filter(self, tile: int) -> str:
        return f"Data/Intensities/BaseCalls/{self.lane_dir}/{self._stem(tile)}.filter"

    def bcl(self, tile: int, cycle: int) -> str:
        return f"Data/Intensities/BaseCalls/{self.lane_dir}/C{cycle}.1/{self._stem(tile)}.bcl"

    def intensities(self, tile: int, cycle: int) -> str:
        return f"Data/Intensities/{self.lane_dir}/C{cycle}.1/{self._stem(tile)}.npy"

    @property
    def intensities_pattern(self) -> str:
        """The intensities path with ``{cycle}`` and ``{tile}`` placeholders (for the index)."""
        return f"Data/Intensities/{self.lane_dir}/C{{cycle}}.1/s_{self.lane}_{{tile}}.npy"

    @staticmethod
    def cycle_manifest(cycle: int) -> str:
        return f"{MANIFEST_DIR}/cycle_{cycle:04d}.json"

    @staticmethod
    def read_complete(read: int) -> str:
        return f"RTARead{read}Complete.txt"
