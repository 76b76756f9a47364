"""Control-plane commands of the storage manager (``storage.*``), for ``appliance serve``."""

from __future__ import annotations

__all__ = ["control_commands"]


def control_commands(manager) -> dict:
    """name -> Command: storage.ls, storage.status, storage.verify, storage.restore,
    storage.gc, storage.scrub. Replies are the manager's dicts (docs/storage.md)."""
    from appliance.control import Arg, Command, CommandError
    from appliance.storage.manager import StorageError

    def guard(fn):
        def handler(args):
            try:
                return fn(args)
            except StorageError as exc:
                raise CommandError("storage_error", str(exc)) from None

        return handler

    return {
        "storage.ls": Command(guard(lambda a: {"runs": manager.ls()} if not a.get("run") else {"run": a["run"], "files": manager.ls(a["run"])}),
                              "runs with their state and verified copies per tier, or one run's files",
                              (Arg("run", "str", help="a run id: list its files and their copies"),)),
        "storage.status": Command(guard(lambda a: manager.status()), "bytes per tier, hot free space vs watermarks, pending moves, verification failures"),
        "storage.verify": Command(guard(lambda a: manager.verify(a["run"])), "re-read every copy of a run on every tier (mismatches are repaired)",
                                  (Arg("run", "str", required=True),)),
        "storage.restore": Command(guard(lambda a: manager.restore(a["run"], a.get("to", "hot"))), "bring a run back to hot from its best verified copies",
                                   (Arg("run", "str", required=True), Arg("to", "str", choices=("hot", "warm")))),
        "storage.gc": Command(guard(lambda a: manager.gc(dry_run=bool(a.get("dry_run", False)))), "apply the tiering policy once (dry_run: only the plan)",
                              (Arg("dry_run", "bool"),)),
        "storage.scrub": Command(guard(lambda a: manager.scrub(a.get("sample"))), "one scrub pass now: re-read warm and cold copies, repair mismatches",
                                 (Arg("sample", "int", help="copies to re-read (default: the policy's scrub.sample)"),)),
    }
