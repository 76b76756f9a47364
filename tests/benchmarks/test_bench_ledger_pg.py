"""Smoke run of ``appliance bench ledger --backend postgresql``: ours beside pgqueuer on a real
private PostgreSQL server (tests/pg.py), every job done once on both sides."""

from __future__ import annotations

import argparse

import pytest

from tests.pg import pg_server  # noqa: F401  (the session's private server)


def test_pg_ledger_beside_pgqueuer_smoke(pg_server):  # noqa: F811
    pytest.importorskip("pgqueuer", reason="pip install -e '.[dev]' installs pgqueuer")
    from appliance.benchmarks.ledger_pg import bench_postgres, format_pg

    result = bench_postgres(pg_server.dsn(), 20, (1, 2))
    assert [r["workers"] for r in result["rows"]] == [1, 2]
    for r in result["rows"]:
        assert r["ours"]["jobs_s"] > 0 and r["pgqueuer"]["jobs_s"] > 0
        assert r["ratio"] == r["ours"]["jobs_s"] / r["pgqueuer"]["jobs_s"]
    assert "ours/pgqueuer" in format_pg(result)
    import psycopg

    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:  # its databases are dropped again
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'bench_%'").fetchone()[0] == 0


def test_postgresql_backend_needs_a_dsn(tmp_path, capsys):
    from appliance.benchmarks import ledger as suite

    parser = argparse.ArgumentParser()
    suite.configure(parser)
    assert suite.run(parser.parse_args(["--backend", "postgresql", "--json", str(tmp_path / "x.json")])) == 2
    assert "needs --dsn" in capsys.readouterr().err
