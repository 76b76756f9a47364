"""The shipped Prometheus rules and Grafana dashboards (sysconfig/prometheus, sysconfig/grafana):
promtool accepts the rules and their unit tests pass, every appliance alert has a rule with a
runbook link that exists, and every metric they reference is one the exporter serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from appliance.alerts import RULES
from appliance.metrics import JobsCollector, MetricsExporter, StorageCollector
from appliance.offload.admission import ALERT_RULE as OFFLOAD_ALERT
from appliance.storage import ALERTS as STORAGE_ALERTS

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "sysconfig" / "prometheus" / "appliance-rules.yml"
RULES_TEST = ROOT / "sysconfig" / "prometheus" / "appliance-rules.test.yml"
DASHBOARDS = sorted((ROOT / "sysconfig" / "grafana").glob("*.json"))
RUNBOOK = ROOT / "docs" / "runbook.md"
_METRIC = re.compile(r"\b((?:appliance|process|python)_[a-z0-9_]+)\b")

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool is not installed (Debian package prometheus)")


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]


@needs_promtool
def test_promtool_checks_the_rules():
    out = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    out = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_appliance_alert_has_a_rule_with_its_runbook_entry():
    alerts = {**RULES, OFFLOAD_ALERT: None, **{a: None for a in STORAGE_ALERTS}}
    by_name = {r["alert"]: r for r in _rules()}
    assert set(alerts) <= set(by_name), f"alerts without a Prometheus rule: {sorted(set(alerts) - set(by_name))}"
    anchors = set(re.findall(r"^## `([a-z0-9_]+)`", RUNBOOK.read_text(), re.M))
    for name, rule in by_name.items():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/runbook.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{name}: runbook anchor {url} does not exist in docs/runbook.md"
        if name in alerts:
            assert url == f"docs/runbook.md#{name}"
        if alerts.get(name):  # the appliance's own severity, so routing agrees with the alert topic
            assert rule["labels"]["severity"] == alerts[name]


@pytest.fixture(scope="module")
def served() -> set[str]:
    """Every metric name the exporter serves (the service's: run stats, jobs, storage)."""
    sample = {"state": "acquiring", "rings": {}, "stages": {"writer-0": {"alive": True, "restarts": 0}}, "alerts": []}
    jobs = {"classes": {"realtime": {"queued": 1, "depth": 1, "oldest_queued_age_s": 2.0}}, "backpressure": {"active": False}}
    storage = {"tiers": {"hot": {"bytes": 1, "files": 1}}, "hot_free_fraction": 0.5, "watermarks": {"high": 0.15, "critical": 0.05}}
    exp = MetricsExporter(lambda: (sample, []), port=0)
    exp.registry.register(JobsCollector(lambda: jobs))
    exp.registry.register(StorageCollector(lambda: storage))
    with exp:
        text = urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=10).read().decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "histogram":  # served once a latency is recorded
            names.update(fam.name + sfx for sfx in ("_bucket", "_sum", "_count"))
        if fam.type == "counter":
            names.add(fam.name + "_total")
    return names


def test_rules_reference_only_served_metrics(served):
    for rule in _rules():
        used = set(_METRIC.findall(rule["expr"]))
        assert used and used <= served, f"{rule['alert']}: {sorted(used - served)} are not served"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_parse_and_reference_only_served_metrics(path, served):
    dash = json.loads(path.read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for expr in exprs:
        used = set(_METRIC.findall(expr))
        assert used, f"{path.name}: {expr!r} references no appliance metric"
        assert used <= served, f"{path.name}: {expr!r} uses {sorted(used - served)}, which the exporter does not serve"


def test_both_dashboards_are_shipped():
    assert {p.name for p in DASHBOARDS} == {"appliance-instrument.json", "appliance-lab.json"}
