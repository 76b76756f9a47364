"""Verified data handoff: a job's inputs to an object store or shared path, its outputs back.

Multipart and resumable (per file, per part), verified at the destination by re-reading,
recorded in a transfer journal (bytes, egress, duration, verification, attempts), one
completion marker per destination. See docs/burst.md.
"""

from appliance.transfer._trace import transfer_span
from appliance.transfer._journal import Journal, default_journal_path, read_totals, read_transfers
from appliance.transfer.errors import DestinationRefused, SourceMismatch, TransferError, TransferVerifyFailed
from appliance.transfer.handoff import (
    ALERT_RULE,
    COMPLETE_MARKER,
    OUTPUTS_MANIFEST,
    Destination,
    TransferReport,
    entries_of_dir,
    fetch_file,
    inputs_verified,
    publish_outputs,
    pull_into_staging,
    push,
    run_entries,
)

__all__ = [
    "ALERT_RULE", "COMPLETE_MARKER", "DestinationRefused", "Destination", "Journal", "OUTPUTS_MANIFEST", "SourceMismatch",
    "TransferError", "TransferReport", "TransferVerifyFailed", "default_journal_path", "entries_of_dir", "fetch_file",
    "inputs_verified",
    "publish_outputs", "pull_into_staging", "push", "read_totals", "read_transfers", "run_entries", "transfer_span",
]
