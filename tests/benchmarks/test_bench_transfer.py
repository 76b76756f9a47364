"""Smoke run of the transfer benchmark against the session's moto server: every tool measured,
the ratio, the table and the JSON."""

from __future__ import annotations

import argparse
import json

from tests.s3 import s3_server  # noqa: F401 - fixture


def test_bench_transfer_suite_smoke(tmp_path, s3_server):
    from appliance.benchmarks import transfer as suite

    parser = argparse.ArgumentParser()
    suite.configure(parser)
    out = tmp_path / "t.json"
    args = parser.parse_args(["--endpoint", s3_server.endpoint, "--size", "12", "--files", "3", "--repeat", "1",
                              "--part-mb", "5", "--dir", str(tmp_path), "--json", str(out)])
    assert suite.run(args) == 0
    r = json.loads(out.read_text())
    assert r["files"] == 3 and r["bytes"] == 12_000_000
    ours = r["tools"]["appliance"]
    assert ours["mb_s"] > 0 and r["tools"]["s3transfer"]["mb_s"] > 0
    best = max(v["mb_s"] for k, v in r["tools"].items() if k != "appliance" and "mb_s" in v)
    assert r["ratio_to_best"] == ours["mb_s"] / best
    assert "appliance / best other" in suite.format_table(r)
    assert list(tmp_path.iterdir()) == [out]  # the scratch folder is removed
    assert suite.run(parser.parse_args(["--endpoint", s3_server.endpoint, "--part-mb", "4", "--json", str(out)])) == 2
