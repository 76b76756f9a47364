"""Smoke run of ``appliance bench ledger``: both measurements, ratios, table and JSON."""

from __future__ import annotations

import argparse
import json


def test_bench_ledger_suite_smoke(tmp_path):
    from appliance.benchmarks import ledger as suite
    from distributed.utils import _offload_executor

    _offload_executor.submit(lambda: None).result()  # distributed's process-wide thread, see offload conftest
    parser = argparse.ArgumentParser()
    suite.configure(parser)
    out = tmp_path / "l.json"
    args = parser.parse_args(["--jobs", "50", "--dask-jobs", "8", "--no-local", "--json", str(out)])
    assert suite.run(args) == 0
    result = json.loads(out.read_text())
    led, dis = result["ledger"], result["dispatch"]
    assert led["jobs"] == 50 and led["ours_jobs_per_s"] > 0 and led["ratio_bare_over_ours"] > 0
    assert dis["jobs"] == 8 and dis["bare_client_submit_ms"] > 0 and dis["ours_dask_ms"] > 0
    assert dis["ratio_ours_over_bare"] == dis["ours_dask_ms"] / dis["bare_client_submit_ms"]
    assert "ratio ours/bare" in suite.format_table(result)
    assert suite.run(parser.parse_args(["--jobs", "0", "--json", str(out)])) == 2
