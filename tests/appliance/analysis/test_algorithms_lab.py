"""One algorithm registry for the lab: the same registry on its two stores (the data root's file
and the lab's PostgreSQL database, a real private server from tests/pg.py), shared channels and
pins across data roots, serialised concurrent promotions, ``appliance algo pin/unpin``, the pin
deciding a run's algorithm, the schema refusing a newer release, and a lost database."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import threading

import pytest

from appliance.analysis.algorithms import (
    BUILTIN,
    PG_SCHEMA_TABLE,
    AlgorithmError,
    AlgorithmRegistry,
    RegistryUnavailable,
    read_run_record,
    run_algorithm,
    run_algorithm_info,
)
from appliance.cli import main
from tests.pg import pg_dsn, pg_server  # noqa: F401  (fixtures: a private PostgreSQL server)
from tests.runs import small_run_config


@pytest.fixture(params=["file", "postgresql"])
def target(request):
    """What ``offload.ledger`` says: "" (the registry is the data root's file) or the lab database."""
    return "" if request.param == "file" else request.getfixturevalue("pg_dsn")


def _db(dsn: str) -> str:
    return dsn.split("/")[3].split("?")[0]


def _run_config(root, dsn: str, instrument: str):
    cfg = small_run_config(root, f"run.instrument_id={instrument}")
    return dataclasses.replace(cfg, offload=dataclasses.replace(cfg.offload, ledger=dsn))


# -- one registry, two stores: the same test body -----------------------------------------------

def test_channels_pins_and_history_on_both_stores(tmp_path, target):
    with AlgorithmRegistry.open(tmp_path, target) as reg:
        assert reg.backend == ("postgresql" if target else "file")
        assert reg.production() == BUILTIN and reg.candidate() is None and reg.pins() == {}
        a = reg.register("chain", "2", {"chain": {"background_percentile": 25.0}, "basecall": {"lag": 1}})
        assert reg.register("chain", "2", {"basecall": {"lag": 1}, "chain": {"background_percentile": 25.0}}) == a
        with pytest.raises(AlgorithmError, match="versions never change"):
            reg.register("chain", "2", {"chain": {"background_percentile": 20.0}})
        reg.set_candidate("chain", "2")
        with AlgorithmRegistry.open(tmp_path, target) as again:  # a new instance reads the store
            assert again.candidate() == a and again.production() == BUILTIN
            assert again.promote() == a
        assert reg.production() == a and reg.candidate() is None
        assert reg.pin("SIM02", "chain", "1") == BUILTIN
        assert reg.pin("SIM02", "chain", "1") == BUILTIN  # the same pin again changes nothing
        with pytest.raises(AlgorithmError, match=r"cannot pin SIM03 to chain@9: it is not registered \(registered versions of chain: 1, 2"):
            reg.pin("SIM03", "chain", "9")
        with pytest.raises(AlgorithmError, match="no version of other is registered"):
            reg.pin("SIM03", "other", "1")
        with pytest.raises(AlgorithmError, match="instrument 'bad id' must be an instrument id"):
            reg.pin("bad id", "chain", "1")
        alg, pin = reg.resolve("SIM02")
        assert alg == BUILTIN and pin["instrument"] == "SIM02" and pin["algorithm"] == "chain@1" and pin["t"] > 0 and pin["by"]
        assert reg.resolve("SIM01") == (a, None)
        assert reg.status()["pins"] == {"SIM02": "chain@1"} and reg.status()["production"] == "chain@2"
        with pytest.raises(AlgorithmError, match="pinned to chain@1, not to a version of other"):
            reg.unpin("SIM02", "other")
        assert reg.unpin("SIM02", "chain") == "chain@1"
        with pytest.raises(AlgorithmError, match="instrument SIM02 has no pin"):
            reg.unpin("SIM02")
        assert reg.rollback() == {"dropped_candidate": None, "production": "chain@1"}
        events = [(h["event"], h["algorithm"], h.get("instrument")) for h in reg.history()]
        assert events == [("register", "chain@2", None), ("candidate", "chain@2", None), ("promote", "chain@2", None),
                          ("pin", "chain@1", "SIM02"), ("unpin", "chain@1", "SIM02"), ("rollback", "chain@1", None)]
        assert all(h["by"] for h in reg.history())
    # where the document lives
    assert (tmp_path / ".offload" / "algorithms.json").exists() == (not target)


def test_a_newer_document_format_is_refused(tmp_path):
    (tmp_path / ".offload").mkdir()
    path = tmp_path / ".offload" / "algorithms.json"
    path.write_text(json.dumps({"format": "appliance-algorithms", "version": 9, "algorithms": []}))
    with pytest.raises(AlgorithmError, match="format version 9, newer than this appliance's 2: upgrade the appliance"):
        AlgorithmRegistry(tmp_path).production()


def test_a_version_1_file_is_read_and_gains_pins(tmp_path):
    (tmp_path / ".offload").mkdir()
    path = tmp_path / ".offload" / "algorithms.json"
    path.write_text(json.dumps({"format": "appliance-algorithms", "version": 1, "algorithms": [], "production": "chain@1",
                                "candidate": None, "previous": [], "history": []}))
    reg = AlgorithmRegistry(tmp_path)
    assert reg.pins() == {}
    reg.pin("SIM01", "chain", "1")
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and doc["pins"]["SIM01"]["algorithm"] == "chain@1"


# -- the lab database ------------------------------------------------------------------------------

def test_two_data_roots_on_one_database_share_channels_and_pins(tmp_path, pg_dsn):
    a, b = AlgorithmRegistry(tmp_path / "inst-a", pg_dsn), AlgorithmRegistry(tmp_path / "inst-b", pg_dsn)
    with a, b:
        alg = a.register("chain", "2", {"basecall": {"window": 1}})
        b.set_candidate("chain", "2")
        assert a.candidate() == alg
        a.promote()
        a.pin("SIM02", "chain", "1")
        assert b.production() == alg and b.candidate() is None and b.pins() == {"SIM02": "chain@1"}
        assert b.resolve("SIM02")[0] == BUILTIN and b.resolve("SIM01")[0] == alg
        assert [h["event"] for h in b.history()] == ["register", "candidate", "promote", "pin"]
        assert a.schema_version() == 1
    assert not (tmp_path / "inst-a").exists() and not (tmp_path / "inst-b").exists()  # nothing in the data roots


def test_the_schema_refuses_a_newer_release(tmp_path, pg_dsn, pg_server):
    AlgorithmRegistry(tmp_path, pg_dsn).close()  # creates the tables at version 1
    pg_server.sql(f"UPDATE {PG_SCHEMA_TABLE} SET version = 7", db=_db(pg_dsn))
    with pytest.raises(AlgorithmError, match=r"schema version 7, newer than this appliance's 1: upgrade the appliance software"):
        AlgorithmRegistry(tmp_path, pg_dsn)
    assert main(["algo", "--root", str(tmp_path), "--ledger", pg_dsn, "ls"]) == 1


def _promote_many(root: str, target: str, prefix: str, n: int, out) -> None:
    promoted = []
    with AlgorithmRegistry.open(root, target) as reg:
        for i in range(n):
            reg.register(prefix, str(i))
            try:
                reg.set_candidate(prefix, str(i))
                promoted.append(reg.promote().key)
            except AlgorithmError:  # the other writer promoted our candidate first: fine
                pass
    out.put(promoted)


def _check_serialised(reg: AlgorithmRegistry, n_registered: int) -> None:
    """Every promotion read the production the one before it wrote: no lost update."""
    history = reg.history()
    promotes = [h for h in history if h["event"] == "promote"]
    assert promotes, history
    assert promotes[0]["previous"] == "chain@1"
    for before, after in zip(promotes, promotes[1:]):
        assert after["previous"] == before["algorithm"], (before, after)
    st = reg.status()
    assert st["production"] == promotes[-1]["algorithm"]
    assert st["previous"] == ["chain@1"] + [p["algorithm"] for p in promotes[:-1]]
    assert len(reg.ls()) == 1 + n_registered


def test_concurrent_promotions_from_two_processes_are_serialised(tmp_path, target):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_promote_many, args=(str(tmp_path), target, p, 12, q)) for p in ("a", "b")]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with AlgorithmRegistry.open(tmp_path, target) as reg:
        _check_serialised(reg, 24)
        promotes = [h["algorithm"] for h in reg.history() if h["event"] == "promote"]
        assert sorted(promotes) == sorted(k for r in results for k in r)  # each success is in the history once


def test_concurrent_promotions_from_two_threads_are_serialised(tmp_path, pg_dsn):
    import queue

    q: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_promote_many, args=(str(tmp_path), pg_dsn, p, 12, q)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    results = [q.get_nowait() for _ in threads]
    with AlgorithmRegistry(tmp_path, pg_dsn) as reg:
        _check_serialised(reg, 24)
        assert len([h for h in reg.history() if h["event"] == "promote"]) == sum(len(r) for r in results)


def test_a_lost_connection_is_reopened_and_a_down_server_named(tmp_path, pg_dsn, pg_server):
    import psycopg

    reg = AlgorithmRegistry(tmp_path, pg_dsn)
    try:
        reg.register("chain", "2")
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            n = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                              "AND application_name = 'appliance-ledger'", (_db(pg_dsn),)).fetchone()[0]
        assert n == 1
        reg.set_candidate("chain", "2")  # the dead connection is noticed before the row is locked: reopened, applied
        assert reg.candidate().key == "chain@2" and reg.production() == BUILTIN
        pg_server.stop()
        try:
            with pytest.raises(RegistryUnavailable, match=r"cannot be reached .*nothing was (read|changed).*offload.ledger.*pg_isready") as err:
                reg.promote()
            assert _db(pg_dsn) in str(err.value)
            with pytest.raises(RegistryUnavailable, match="cannot be reached"):
                reg.pins()
            assert main(["algo", "--root", str(tmp_path), "--ledger", pg_dsn, "ls"]) == 3
        finally:
            pg_server.start()
        assert reg.promote().key == "chain@2"  # back: the same object works again
    finally:
        reg.close()


def test_an_unreachable_database_names_it_with_the_password_masked(tmp_path, capsys):
    dsn = f"postgresql://bob:s3cret@/nodb?host={tmp_path}/nosocket&user=bob"
    with pytest.raises(RegistryUnavailable, match=r"lab algorithm registry: cannot connect .*bob:\*\*\*@.*check offload.ledger") as err:
        AlgorithmRegistry(tmp_path, dsn)
    assert "s3cret" not in str(err.value)
    assert main(["algo", "--root", str(tmp_path), "--ledger", dsn, "ls"]) == 3
    assert "s3cret" not in capsys.readouterr().err
    assert main(["algo", "--root", str(tmp_path), "--ledger", "postgresql:/x", "ls"]) == 2


# -- appliance algo pin / unpin ---------------------------------------------------------------------

def test_pin_and_unpin_through_the_cli(tmp_path, target, capsys):
    base = ["algo", "--root", str(tmp_path), "--ledger", target]

    def algo(*args):
        rc = main([*base, *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    assert algo("register", "chain", "2")[0] == 0
    assert algo("candidate", "chain", "2")[0] == 0
    assert algo("promote") == (0, "production: chain@2\n", "")
    rc, out, err = algo("pin", "SIM02", "chain", "9")
    assert rc == 1 and "cannot pin SIM02 to chain@9" in err and "registered versions of chain: 1, 2" in err
    rc, out, err = algo("pin", "no/such", "chain", "1")
    assert rc == 2 and "must be an instrument id" in err
    rc, out, err = algo("pin", "SIM02", "chain", "1")
    assert rc == 0 and "pinned SIM02 to chain@1" in out and "instead of production chain@2" in out
    rc, out, _ = algo("ls")
    assert rc == 0 and "* chain@2" in out and "chain@1" in out and "pinned: SIM02" in out
    assert "SIM02" in out.split("pins")[1] and "-> chain@1" in out
    rc, out, _ = algo("--json", "ls")
    doc = json.loads(out)
    assert rc == 0 and doc["pins"] == {"SIM02": "chain@1"} and doc["production"] == "chain@2"
    assert doc["backend"] == ("postgresql" if target else "file")
    rc, out, _ = algo("history")
    assert rc == 0 and "pin" in out and "(instrument SIM02)" in out
    rc, out, err = algo("unpin", "SIM02", "other")
    assert rc == 1 and "pinned to chain@1, not to a version of other" in err
    rc, out, _ = algo("--json", "unpin", "SIM02")
    assert rc == 0 and json.loads(out) == {"instrument": "SIM02", "unpinned": "chain@1", "production": "chain@2"}
    rc, out, err = algo("unpin", "SIM02")
    assert rc == 1 and "instrument SIM02 has no pin" in err
    assert json.loads(algo("--json", "ls")[1])["pins"] == {}


def test_the_help_teaches_pin_and_unpin(capsys):
    with pytest.raises(SystemExit):
        main(["algo", "--help"])
    out = capsys.readouterr().out
    assert "pin INSTRUMENT NAME VERSION" in out and "appliance algo pin SIM02 chain 1" in out
    assert "appliance algo unpin SIM02" in out and "--ledger" in out


# -- a run's algorithm ------------------------------------------------------------------------------

def test_a_pinned_instrument_runs_its_pinned_algorithm(tmp_path, target):
    with AlgorithmRegistry.open(tmp_path, target) as reg:
        reg.register("chain", "2", {"basecall": {"window": 1}})
        reg.register("chain", "3", {"basecall": {"window": 2}})
        reg.set_candidate("chain", "3")
        reg.promote()
        reg.pin("SIM02", "chain", "2")
    pinned = _run_config(tmp_path, target, "SIM02")
    alg, settings = run_algorithm(tmp_path, tmp_path / ".state" / "RUN2", pinned)
    assert alg.key == "chain@2" and alg.basecall_kwargs() == {"window": 1} and settings["cycles"] == pinned.run.cycles
    record = json.loads((tmp_path / ".state" / "RUN2" / "algorithm.json").read_text())
    assert record["source"] == "pin" and record["instrument"] == "SIM02" and record["key"] == "chain@2"
    assert record["pin"]["instrument"] == "SIM02" and record["pin"]["algorithm"] == "chain@2"
    assert run_algorithm_info(tmp_path, "RUN2") == {"algorithm": "chain@2", "algorithm_source": "pin", "pinned_instrument": "SIM02"}
    other = _run_config(tmp_path, target, "SIM01")
    assert run_algorithm(tmp_path, tmp_path / ".state" / "RUN1", other)[0].key == "chain@3"
    assert run_algorithm_info(tmp_path, "RUN1") == {"algorithm": "chain@3", "algorithm_source": "production", "pinned_instrument": None}
    assert run_algorithm_info(tmp_path, "NOPE") is None
    # the run keeps its algorithm: unpinning changes the next run, not this one
    with AlgorithmRegistry.open(tmp_path, target) as reg:
        reg.unpin("SIM02")
    assert run_algorithm(tmp_path, tmp_path / ".state" / "RUN2", pinned)[0].key == "chain@2"
    assert run_algorithm(tmp_path, tmp_path / ".state" / "RUN3", pinned)[0].key == "chain@3"
    assert read_run_record(tmp_path / ".state" / "RUN3" / "algorithm.json")[0].key == "chain@3"


def test_a_run_starts_from_the_last_copy_when_the_lab_database_is_down(tmp_path, pg_dsn):
    with AlgorithmRegistry(tmp_path, pg_dsn) as reg:
        reg.register("chain", "2")
        reg.pin("SIM02", "chain", "2")
    assert run_algorithm(tmp_path, tmp_path / ".state" / "R1", _run_config(tmp_path, pg_dsn, "SIM02"))[0].key == "chain@2"
    assert (tmp_path / ".offload" / "algorithms.lab.json").is_file()
    down = f"postgresql:///nodb?host={tmp_path}/nosocket&user=postgres"
    alg, _ = run_algorithm(tmp_path, tmp_path / ".state" / "R2", _run_config(tmp_path, down, "SIM02"))
    record = json.loads((tmp_path / ".state" / "R2" / "algorithm.json").read_text())
    assert alg.key == "chain@2" and record["source"] == "pin" and "unreachable, the copy of" in record["registry"]
    with pytest.raises(RegistryUnavailable, match="cannot connect"):  # no copy on a fresh instrument: a clear error
        run_algorithm(tmp_path / "fresh", tmp_path / "fresh" / ".state" / "R", _run_config(tmp_path / "fresh", down, "SIM02"))


def test_instrument_roles_use_the_registry_their_owner_created(tmp_path, pg_server):
    """docs/lab.md's grants: the owner creates the tables; an instrument role (SELECT, INSERT,
    UPDATE) pins and reads; a read-only role reads and is refused a change with a message."""
    import uuid

    import psycopg

    tag = uuid.uuid4().hex[:8]
    owner, inst, viewer, db = f"owner_{tag}", f"sim_{tag}", f"view_{tag}", f"lab_{tag}"
    for role in (owner, inst, viewer):
        pg_server.sql(f"CREATE ROLE {role} LOGIN")
    pg_server.sql(f"CREATE DATABASE {db} OWNER {owner}")
    try:
        pg_server.sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", db=db)
        base = f"postgresql:///{db}?host={pg_server.folder}"
        with pytest.raises(AlgorithmError, match="needs its tables created .*open it once as the database's owner role"):
            AlgorithmRegistry(tmp_path, f"{base}&user={inst}")
        AlgorithmRegistry(tmp_path, f"{base}&user={owner}").close()
        with psycopg.connect(f"{base}&user={owner}", autocommit=True) as c:
            c.execute(f"GRANT SELECT, INSERT, UPDATE ON algorithm_registries TO {inst}")
            c.execute(f"GRANT SELECT ON algorithm_registry_schema TO {inst}, {viewer}")
            c.execute(f"GRANT SELECT ON algorithm_registries TO {viewer}")
        with AlgorithmRegistry(tmp_path, f"{base}&user={inst}") as reg:
            reg.register("chain", "2")
            reg.pin("SIM02", "chain", "2")
        with AlgorithmRegistry(tmp_path, f"{base}&user={viewer}") as reg:
            assert reg.pins() == {"SIM02": "chain@2"}
            with pytest.raises(AlgorithmError, match="the database refused to change the registry .*permission denied.*grants"):
                reg.unpin("SIM02")
            assert reg.pins() == {"SIM02": "chain@2"}
    finally:
        pg_server.drop_database(db)
        for role in (inst, viewer, owner):
            pg_server.sql(f"DROP ROLE IF EXISTS {role}")
