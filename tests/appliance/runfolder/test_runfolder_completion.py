"""RunCompletionStatus.xml: the file, the decision of the status, and verify() accepting it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from appliance.runfolder import (
    COMPLETION_STATUS,
    RunCompletion,
    RunFolderError,
    completion_status,
    cycles_completed,
    read_completion,
    write_completion,
)
from appliance.runfolder.completion import decode_completion, encode_completion
from appliance.runfolder.layout import Layout


def test_status_decision():
    assert completion_status(run_complete=True, stop_requested=True, error=None) == "CompletedAsPlanned"
    assert completion_status(run_complete=False, stop_requested=True, error=None) == "StoppedByUser"
    assert completion_status(run_complete=False, stop_requested=True, error="writer-0 crashed") == "ExceptionEndedEarly"
    assert completion_status(run_complete=False, stop_requested=False, error=None) == "ExceptionEndedEarly"


def test_round_trip_and_the_elements_watchers_read(tmp_path):
    c = RunCompletion("R1", "ExceptionEndedEarly", 3, 26, "stage writer-0 crashed 4 times <&>")
    path = write_completion(tmp_path, c)
    assert path.name == COMPLETION_STATUS and read_completion(tmp_path) == c
    root = ET.parse(path).getroot()
    assert root.tag == "RunCompletionStatus" and root.find("CompletionStatus").text == "ExceptionEndedEarly"
    assert root.find("CyclesCompleted").text == "3" and root.find("RunId").text == "R1"
    ok = RunCompletion("R1", "CompletedAsPlanned", 26, 26)
    assert b"<ErrorDescription>None</ErrorDescription>" in encode_completion(ok)
    write_completion(tmp_path, ok)  # a resumed run replaces it
    assert read_completion(tmp_path) == ok and read_completion(tmp_path / "nothing") is None


def test_bad_values_and_a_damaged_file_are_named():
    with pytest.raises(ValueError, match="allowed CompletedAsPlanned, StoppedByUser, ExceptionEndedEarly"):
        RunCompletion("R1", "Done", 1, 1)
    with pytest.raises(ValueError, match="cycles_completed=5: allowed 0..4"):
        RunCompletion("R1", "StoppedByUser", 5, 4)
    with pytest.raises(RunFolderError, match="RunCompletionStatus.xml: not a run completion status"):
        decode_completion(b"<RunCompletionStatus><RunId>R1</RunId></RunCompletionStatus>")
    with pytest.raises(RunFolderError, match="not a run completion status"):
        decode_completion(b"<half")


def test_cycles_completed_counts_cycle_manifests_from_cycle_1_without_a_gap(tmp_path):
    for cycle in (1, 2, 4):
        p = tmp_path / Layout.cycle_manifest(cycle)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    assert cycles_completed(tmp_path, 26) == 2
    assert cycles_completed(tmp_path, 1) == 1
