"""Control-plane commands of the algorithm registry (``algo.*``), for ``appliance serve``."""

from __future__ import annotations

__all__ = ["control_commands"]


def control_commands(data_root, ledger=None) -> dict:
    """Control-plane commands on the registry of ``data_root`` (or the lab's, with a PostgreSQL
    ``ledger``): algo.ls, algo.candidate,
    algo.promote, algo.rollback. Replies: ls -> {"production", "candidate", "previous",
    "algorithms": [Algorithm dicts]}; candidate/promote -> {"candidate"|"production": key};
    rollback -> {"dropped_candidate", "production"}. Refusals are CommandError("algorithm_refused", ...)."""
    from appliance.analysis.algorithms import AlgorithmError, AlgorithmRegistry
    from appliance.control import Arg, Command, CommandError

    def guarded(fn):
        def handler(args):
            try:
                # ``ledger``: offload.ledger, the lab database when it is PostgreSQL
                with AlgorithmRegistry.open(data_root, ledger) as registry:
                    return fn(registry, args)
            except AlgorithmError as exc:
                raise CommandError("algorithm_refused", str(exc)) from None
        return handler

    name_args = (Arg("name", "str", True, "algorithm name"), Arg("version", "str", True, "algorithm version"))
    return {
        "algo.ls": Command(guarded(lambda r, a: {**r.status(), "algorithms": [x.to_dict() for x in r.ls()]}), "list algorithms, production and candidate"),
        "algo.candidate": Command(guarded(lambda r, a: {"candidate": r.set_candidate(a["name"], a["version"]).key}), "make an algorithm the candidate", name_args),
        "algo.promote": Command(guarded(lambda r, a: {"production": r.promote().key}), "promote the candidate to production"),
        "algo.rollback": Command(guarded(lambda r, a: r.rollback()), "drop the candidate, or restore the previous production"),
    }
