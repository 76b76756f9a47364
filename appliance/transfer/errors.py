"""Transfer errors, classified for the job ledger (see :func:`appliance.offload.is_transient`)."""

from __future__ import annotations

from appliance.offload.errors import OffloadError, PermanentJobError, TransientJobError

__all__ = ["DestinationRefused", "SourceMismatch", "TransferError", "TransferVerifyFailed"]


class TransferError(OffloadError):
    """The transfer journal cannot be opened or written."""


class DestinationRefused(TransientJobError):
    """The destination refuses writes (full, quota, read-only, access denied). The job waits
    (retried with backoff), an alert is raised, nothing verified is lost and the source is kept."""


class TransferVerifyFailed(TransientJobError):
    """The destination's copy did not verify (re-read checksum or part ETag) after a re-send."""


class SourceMismatch(PermanentJobError):
    """A source file does not match its manifest entry: re-sending cannot help."""
