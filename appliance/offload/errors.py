"""Errors of the offload layer: job outcomes and ledger refusals, under one base.

A job function raises :class:`PermanentJobError` when running it again cannot help (its input
is missing, corrupt or not complete; its parameters are invalid) and :class:`TransientJobError`
when a later attempt may succeed (a busy file system, a lost connection). The executor decides
for any other exception with :func:`is_transient`.
"""

from __future__ import annotations

import errno

__all__ = [
    "AdmissionRefused",
    "JobError",
    "LedgerError",
    "OffloadError",
    "PermanentJobError",
    "TransientJobError",
    "is_transient",
]


class OffloadError(Exception):
    """Base of every error raised by ``appliance.offload``."""


class LedgerError(OffloadError):
    """The ledger file cannot be opened, migrated or written (the message says which and why)."""


class AdmissionRefused(OffloadError):
    """A batch or reprocess submission refused because the ledger is past a watermark
    (depth or oldest-job age); the message names the watermark and how to relieve it."""


class JobError(OffloadError):
    """Base of the errors a job function raises to say how its failure should be treated."""


class TransientJobError(JobError):
    """Raised by a job when a later attempt may succeed: the job is retried with backoff."""


class PermanentJobError(JobError):
    """Raised by a job when retrying cannot help: the job is held (dead-letter) at once."""


# errno values of an OSError that a retry cannot fix (the path is wrong, not busy).
_PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EINVAL})


def is_transient(exc: BaseException) -> bool:
    """Whether a failure with ``exc`` is worth retrying.

    Explicit job errors decide for themselves; time-outs, connection errors and I/O errors other
    than "no such file"/"permission denied" are transient (a full disk is freed, a share comes
    back); programming and input errors (``ValueError``, ``KeyError``, ``TypeError``, ...) are
    permanent, because the same input fails the same way again.
    """
    if isinstance(exc, TransientJobError):
        return True
    if isinstance(exc, PermanentJobError):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    if isinstance(exc, MemoryError):
        return True
    return False
