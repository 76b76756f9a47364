"""``RunCompletionStatus.xml``: how a run ended, in the file that run-folder watchers read.

Illumina instruments write it at the end of every run, completed or not, and lab automation
(demultiplexing triggers, transfer agents) reads its ``CompletionStatus`` before it acts on a
folder. The appliance writes it in the NextSeq form, with the cycles actually acquired:

.. code-block:: xml

    <RunCompletionStatus>
      <CompletionStatus>StoppedByUser</CompletionStatus>
      <RunId>R1</RunId>
      <CyclesCompleted>12</CyclesCompleted>
      <CyclesPlanned>26</CyclesPlanned>
      <ErrorDescription>None</ErrorDescription>
    </RunCompletionStatus>

``CompletedAsPlanned`` only with the completion markers (every cycle written and the run
manifest final); ``StoppedByUser`` for a drain (``ctl stop``, SIGTERM) before the last cycle;
``ExceptionEndedEarly`` when the run failed, with the reason. Like the markers it is not a
data file and is not in the manifest; a resumed run replaces it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from appliance.runfolder._atomic import write_atomic
from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.layout import Layout

COMPLETION_STATUS = "RunCompletionStatus.xml"
COMPLETED = "CompletedAsPlanned"
STOPPED = "StoppedByUser"
FAILED = "ExceptionEndedEarly"
STATUSES = (COMPLETED, STOPPED, FAILED)


@dataclass(frozen=True)
class RunCompletion:
    """How a run ended: ``status`` (one of :data:`STATUSES`), the complete cycles (cycle
    manifests written, from cycle 1 on) of those planned, and the error of a failed run."""

    run_id: str
    status: str
    cycles_completed: int
    cycles_planned: int
    error: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status={self.status!r}: allowed {', '.join(STATUSES)}")
        if not 0 <= self.cycles_completed <= self.cycles_planned:
            raise ValueError(f"cycles_completed={self.cycles_completed}: allowed 0..{self.cycles_planned} (cycles_planned)")


def completion_status(*, run_complete: bool, stop_requested: bool, error: str | None) -> str:
    """The status of a run that ended (a pure decision): complete wins, then a failure, then a
    requested stop; a run that ended short with neither (the source ran out) failed."""
    if run_complete:
        return COMPLETED
    if error:
        return FAILED
    return STOPPED if stop_requested else FAILED


def encode_completion(c: RunCompletion) -> bytes:
    root = ET.Element("RunCompletionStatus")
    for tag, text in (("CompletionStatus", c.status), ("RunId", c.run_id), ("CyclesCompleted", str(c.cycles_completed)),
                      ("CyclesPlanned", str(c.cycles_planned)), ("ErrorDescription", c.error or "None")):
        ET.SubElement(root, tag).text = text
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def decode_completion(data: bytes) -> RunCompletion:
    try:
        root = ET.fromstring(data)
        fields = {child.tag: (child.text or "") for child in root}
        error = fields.get("ErrorDescription", "None")
        return RunCompletion(fields["RunId"], fields["CompletionStatus"], int(fields["CyclesCompleted"]),
                             int(fields["CyclesPlanned"]), "" if error == "None" else error)
    except (ET.ParseError, KeyError, ValueError) as exc:
        raise RunFolderError(f"{COMPLETION_STATUS}: not a run completion status ({exc})") from None


def write_completion(run_dir: str | Path, completion: RunCompletion) -> Path:
    """Write (atomically, replacing a previous one) the run folder's completion status."""
    path = Path(run_dir) / COMPLETION_STATUS
    data = encode_completion(completion)
    write_atomic(path, [data], len(data))
    return path


def read_completion(run_dir: str | Path) -> RunCompletion | None:
    """The run folder's completion status, or None while the run has not ended."""
    try:
        data = (Path(run_dir) / COMPLETION_STATUS).read_bytes()
    except FileNotFoundError:
        return None
    return decode_completion(data)


def cycles_completed(run_dir: str | Path, cycles_planned: int) -> int:
    """Cycles complete from cycle 1 on: the cycle manifests on disk, without a gap."""
    n = 0
    while n < cycles_planned and (Path(run_dir) / Layout.cycle_manifest(n + 1)).is_file():
        n += 1
    return n
