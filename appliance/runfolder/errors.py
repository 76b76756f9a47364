"""The run folder's exceptions: one base class, and a distinct one for a full disk."""

from __future__ import annotations

import errno as _errno


class RunFolderError(Exception):
    """A run folder cannot be written or read as asked (bad input, a different run, a
    completed run that would change, a corrupt file). The message names the fix."""


class RunFolderFull(RunFolderError, OSError):
    """The filesystem under the run folder is full (ENOSPC) or over quota (EDQUOT).

    Also an :class:`OSError` (with ``errno`` set) so code that handles disk errors
    generically still sees it. Nothing partial is left behind when it is raised: the write
    can simply be retried once space has been freed.
    """

    def __init__(
        self,
        path: str,
        needed: int | None,
        free: int | None,
        filesystem: str | None,
        errno: int = _errno.ENOSPC,
    ) -> None:
        self.path = path
        self.needed = needed
        self.free = free
        self.filesystem = filesystem
        what = "over quota" if errno == _errno.EDQUOT else "disk full"
        needed_s = f"{needed} bytes needed" if needed is not None else "size unknown"
        free_s = f"{free} bytes free" if free is not None else "free space unknown"
        fs = f" on the filesystem mounted at {filesystem}" if filesystem else ""
        self.message = (
            f"run folder {what}: could not write {path} ({needed_s}, {free_s}{fs}). "
            "Nothing partial was left behind. Fix: free space there (offload or delete "
            "completed runs) or point the output root at a larger disk, then retry the write "
            "(writes are idempotent)."
        )
        OSError.__init__(self, errno, self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable across processes (OSError's default loses our fields)
        return (type(self), (self.path, self.needed, self.free, self.filesystem, self.errno))
