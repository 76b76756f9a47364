"""The cloud pool on a real stand-in cloud: a Dask scheduler and workers as separate processes
(as ``nobody``, the data root unreadable to them; tests/cloud.py) that reach only a real S3 API
(moto's server, tests/s3.py). A run's fastq and align-qc equal the local pool's byte for byte;
a refused store makes the job wait with an alert and lose nothing; the live burst policy starts
a burst when the local pool is saturated and stops it when the backlog drains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.offload import Orchestrator
from appliance.offload.burst import read_log
from appliance.offload.cloud import DECISION_LOG, stage_plan
from appliance.offload.config import load_offload
from appliance.offload.executors import MARKER
from appliance.transfer import COMPLETE_MARKER, Journal
from tests.appliance.offload.conftest import PLUGIN, wait_for
from tests.cloud import cloud_cluster  # noqa: F401  (fixture)
from tests.s3 import s3_bucket, s3_server  # noqa: F401  (fixtures)

# Run as nobody, the workers' interpreter may be another patch release of Python 3.11 than ours
# (ours can sit under /root, out of nobody's reach, and the venv then runs on the system's):
# distributed warns about the mismatch; the packages are the same venv's.
pytestmark = pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")
RUN = "CLOUD"


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("cloud-runs")
    Supervisor(small_run_config(root, "run.cycles=5", "run.tiles=[1101]", "control.enabled=false"), run_id=RUN).run()
    return root


def _outputs(root: Path) -> dict[str, bytes]:
    out = {}
    for kind in ("fastq", "align-qc"):
        for p in sorted((root / "Analysis" / RUN / kind).rglob("*")):
            if p.is_file() and p.name != MARKER:
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _cloud(cluster, server, store: str, **kw) -> dict:
    return {"kind": "cloud", "address": cluster.address, "store": store, "endpoint_url": server.endpoint,
            "region": "us-east-1", "slots": 2, **kw}


def _config(ledger: Path, pools: dict, **kw) -> object:
    return load_offload({"ledger": str(ledger), "lease_s": 20.0, "heartbeat_s": 0.5, "tick_s": 0.1, "poll_s": 0.5,
                         "plugins": [PLUGIN], "limits": {"realtime": 4, "batch": 4, "reprocess": 1}, "reserved_realtime": 0,
                         "pools": pools, **kw})


def test_stage_plan_sends_the_run_as_its_manifests_list_it_and_the_job_outputs_it_names(one_run, tmp_path):
    out = one_run / "Analysis" / RUN / "fastq"
    out.mkdir(parents=True, exist_ok=True)
    (out / "x.fastq.gz").write_bytes(b"reads")
    (out / MARKER).write_text("{}")
    sets, params = stage_plan({"run": RUN, "fastq": str(out), "n": 3}, one_run, "inst-1")
    try:
        assert [s.rel for s in sets] == [RUN, f"Analysis/{RUN}/fastq"]
        assert [s.subject for s in sets] == [f"inst-1/{RUN}", f"inst-1/Analysis/{RUN}/fastq"]
        assert params == {"run": RUN, "fastq": f"Analysis/{RUN}/fastq", "n": 3}  # relative: resolves on the worker
        assert "RunInfo.xml" in {e.path for e in sets[0].entries}
        outside = tmp_path / "elsewhere.bin"
        outside.write_bytes(b"x")
        with pytest.raises(Exception, match="outside the data root"):
            stage_plan({"path": str(outside)}, one_run, "inst-1")
    finally:
        shutil.rmtree(one_run / "Analysis")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_runs_fastq_and_align_qc_on_the_cloud_pool_equal_the_local_pools(one_run, cloud_cluster, s3_server, s3_bucket,  # noqa: F811
                                                                            tmp_path):
    if not cloud_cluster.isolated:
        pytest.skip("needs root (setpriv to nobody) to make the data root unreadable to the cloud workers")
    root = tmp_path / "root"
    shutil.copytree(one_run / RUN, root / RUN)
    local = Orchestrator(_config(tmp_path / "local.sqlite", {}), root, runs=[RUN])
    local.start()
    try:
        jobs, ended = local.wait_for_run(RUN, 600)
    finally:
        local.stop(20)
    assert ended and all(j.state == "succeeded" for j in jobs), [(j.kind, j.state, j.error) for j in jobs]
    want = _outputs(root)
    assert any("/fastq/" in k for k in want) and any("/align-qc/" in k for k in want)
    shutil.rmtree(root / "Analysis")
    # the workers cannot even list the data root: everything they read came from the store
    denied = cloud_cluster_run(cloud_cluster, _listdir, str(root))
    assert denied and all(v == "PermissionError" for v in denied.values()), denied
    # cycle-qc reads the hot tier only: a local pool serves realtime; the cheaper cloud pool takes the rest
    pools = {"aws": _cloud(cloud_cluster, s3_server, f"s3://{s3_bucket}/lab", cost=0.5, burst=False),
             "here": {"kind": "local", "slots": 1, "classes": ["realtime"]}}
    started: dict[int, str] = {}
    from appliance.config import load_config

    orch = Orchestrator(_config(tmp_path / "cloud.sqlite", pools), root, runs=[RUN], instrument_id="inst-7",
                        on_event=lambda ev: ev.get("event") == "job_started" and started.__setitem__(ev["job"], ev["pool"]),
                        tracing=load_config(overrides=["tracing.enabled=true"]).tracing)
    orch.start(timeout=60)
    try:
        jobs, ended = orch.wait_for_run(RUN, 600)
    finally:
        orch.stop(20)
    assert ended and all(j.state == "succeeded" for j in jobs), [(j.kind, j.state, j.error) for j in jobs]
    cloud_jobs = {j.kind: j for j in jobs if started.get(j.id) == "aws"}
    assert set(cloud_jobs) == {"fastq", "align-qc"}, {j.kind: started.get(j.id) for j in jobs}
    assert _outputs(root) == want  # byte for byte
    fq = cloud_jobs["fastq"]
    assert fq.result["cloud"]["pool"] == "aws" and fq.result["cloud"]["worker"]
    assert fq.result["cloud"]["egress_bytes"] > 0  # the pull from the store is counted as egress
    assert json.loads((Path(fq.output_dir) / MARKER).read_text())["key"] == fq.key
    with Journal(root / ".offload" / "transfers.sqlite") as j:
        rows = j.transfers()
    pushes = [r for r in rows if r["direction"] == "push"]
    assert {r["subject"] for r in pushes} == {f"inst-7/{RUN}", f"inst-7/Analysis/{RUN}/fastq"}
    assert all(r["state"] == "verified" for r in rows), rows
    # align-qc's run folder was not sent again: fastq's transfer of it had verified
    run_pushes = [r for r in pushes if r["subject"] == f"inst-7/{RUN}"]
    assert sum(r["bytes_sent"] for r in run_pushes) == sum(e.size for e in stage_plan({"run": RUN}, root, "x")[0][0].entries)
    c = s3_server.client()
    keys = {o["Key"] for o in c.list_objects_v2(Bucket=s3_bucket, Prefix=f"lab/inst-7/{RUN}/").get("Contents", [])}
    c.close()
    assert f"lab/inst-7/{RUN}/{COMPLETE_MARKER}" in keys
    # each push and pull of a cloud job is a span of the run's trace, under the run's span
    from appliance.tracing import read_spans, span_id_for, trace_id_for

    spans = [s for s in read_spans(root / ".offload") if s["name"].startswith("transfer ")]
    assert {s["name"] for s in spans} == {"transfer push", "transfer pull"}, spans
    assert all(s["context"]["trace_id"] == f"0x{trace_id_for(RUN):032x}" for s in spans)
    assert all(s["parent_id"] == f"0x{span_id_for(RUN, 'run'):016x}" for s in spans)
    pulls = [s for s in spans if s["name"] == "transfer pull"]
    assert len(pulls) == 2 and all(s["attributes"]["transfer.files"] > 0 for s in pulls), pulls


def _listdir(path: str) -> str:
    try:
        os.listdir(path)
        return "listed"
    except Exception as exc:
        return type(exc).__name__


def cloud_cluster_run(cluster, fn, *args) -> dict:
    from distributed import Client

    with Client(cluster.address, timeout=30, set_as_default=False) as c:
        return c.run(fn, *args)


@pytest.fixture
def full_store():
    """A shared-path store on a 1 MiB tmpfs the cloud workers can read (mounted outside any data root)."""
    import tempfile

    mnt = Path(tempfile.mkdtemp(prefix="cloud-store-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_store_that_refuses_writes_makes_the_job_wait_with_an_alert_and_loses_nothing(one_run, cloud_cluster, s3_server,  # noqa: F811
                                                                                       full_store, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(one_run / RUN, root / RUN)
    # the workers (nobody) publish outputs under the instrument's prefix: the lab makes it writable to them
    (full_store / "inst-9" / "outputs").mkdir(parents=True)
    os.chmod(full_store / "inst-9" / "outputs", 0o777)
    ballast = full_store / "ballast"
    st = os.statvfs(full_store)
    ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize))  # the store is full
    pools = {"aws": _cloud(cloud_cluster, s3_server, str(full_store), burst=False, refused_backoff_s=1.0,
                           classes=["realtime", "batch"])}
    cfg = _config(tmp_path / "ledger.sqlite", pools)
    orch = Orchestrator(cfg, root, scan=False, instrument_id="inst-9")
    orch.start(timeout=60)
    try:
        job = orch.submit("fastq", {"run": RUN}).job
        wait_for(lambda: [a for a in orch.alerts if a["rule"] == "transfer_refused" and a["action"] == "raised"], 60,
                 "the transfer_refused alert")
        wait_for(lambda: any("refused" in (e["reason"] or "") for e in orch.ledger.events(job.id)), 30,
                 "the job to go back to the queue")
        waiting = orch.ledger.get(job.id)
        assert waiting.state in ("queued", "leased", "running") and waiting.attempts <= 1  # waits; no attempt spent
        assert (root / RUN / "RunInfo.xml").is_file()  # nothing lost at the source
        ballast.unlink()  # the operator frees space
        done = wait_for(lambda: (x := orch.ledger.get(job.id)).state in ("succeeded", "held") and x, 180,
                        "the job once the store takes writes")
        cleared = [a for a in orch.alerts if a["rule"] == "transfer_refused" and a["action"] == "cleared"]
    finally:
        orch.stop(20)
    assert done.state == "succeeded", done.error
    assert cleared
    assert (Path(done.output_dir) / "fastq.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_burst_starts_when_the_local_pool_is_saturated_and_stops_when_the_backlog_drains(cloud_cluster, s3_server,  # noqa: F811
                                                                                            s3_bucket, tmp_path):
    burst = {"slo_s": {"batch": 20}, "enter_ratio": 0.8, "exit_ratio": 0.2, "min_dwell_s": 2, "slot_cores": 1, "max_slots": 2,
             "daily_budget": 1000.0}
    pools = {"aws": _cloud(cloud_cluster, s3_server, f"s3://{s3_bucket}/burst", cost=5.0, burst=burst),
             "here": {"kind": "local", "slots": 1}}
    started: dict[int, str] = {}
    orch = Orchestrator(_config(tmp_path / "ledger.sqlite", pools), tmp_path, scan=False,
                        on_event=lambda ev: ev.get("event") == "job_started" and started.__setitem__(ev["job"], ev["pool"]))
    log_path = tmp_path / ".offload" / DECISION_LOG
    orch.start(timeout=60)
    try:
        # an idle lab does not burst: one job runs on the local pool
        first = orch.submit("test-sleep", {"seconds": 2, "n": -1}).job
        wait_for(lambda: orch.ledger.get(first.id).state == "succeeded", 60, "the first job")
        assert started[first.id] == "here"
        # then 12 jobs of 2 s each: 24 s of work for one local core, past 0.8 x the 20 s SLO
        ids = [orch.submit("test-sleep", {"seconds": 2, "n": i}).job.id for i in range(12)]
        during = wait_for(lambda: (x := orch.stats()).get("burst") and x["burst"][0]["slots"] > 0 and x, 60, "the burst to start")
        done = wait_for(lambda: all(orch.ledger.get(i).state == "succeeded" for i in ids) and True, 240, "the backlog to drain")
        stopped = wait_for(lambda: (r := read_log(log_path, 200)) and r[-1]["slots"] == 0 and r, 30,
                           "the burst to stop once the backlog drained")
        stats = orch.stats()
        outs = [orch.ledger.get(i) for i in ids]
    finally:
        orch.stop(20)
    assert done
    on = [r for r in stopped if r["slots"] > 0]
    assert on and "batch" in on[0]["classes"] and "burst" in on[0]["reason"], stopped
    assert on[0]["inputs"]["waiting"]["batch"]["jobs"] >= 2
    assert stopped.index(on[0]) < len(stopped) - 1 and stopped[-1]["classes"] == []
    pools_used = {started[i] for i in ids}
    assert pools_used == {"here", "aws"}, started  # both pools worked the backlog
    assert all(json.loads((Path(j.output_dir) / MARKER).read_text())["key"] == j.key for j in outs)
    assert all((Path(j.output_dir) / "done.txt").read_text() == f"{j.params['n']}\n" for j in outs)
    assert stats["burst"][0]["pool"] == "aws" and stats["burst"][0]["spent_today"] > 0
    # the jobs pane and the metrics say so, while it bursts and after
    text, fams = _shown_and_exported(during)
    assert "burst aws" in text and "BURSTING batch" in text, text
    assert {s.labels["class"]: s.value for s in fams["appliance_burst_bursting"].samples}["batch"] == 1.0
    assert fams["appliance_burst_slots"].samples[0].value >= 1
    text, fams = _shown_and_exported(stats)
    assert "not bursting" in text and fams["appliance_burst_spent_today"].samples[0].value > 0


# -- without processes: the pool's config and the policy's gate ---------------------------------

def test_a_cloud_pool_needs_an_address_and_a_store_and_reads_only_the_object_store():
    from appliance.configfile import ConfigError
    from appliance.offload.pools import load_pools

    classes = ("realtime", "batch", "reprocess")
    ok = load_pools({"aws": {"kind": "cloud", "address": "tls://s:8786", "store": "s3://b/p"}, "here": {"kind": "local"}},
                    classes=classes)
    assert ok["aws"].reads == ("object",) and ok["aws"].burst is not None  # the burst policy is on by default
    assert ok["aws"].storage_options()["client_kwargs"] == {}  # AWS: the endpoint and credentials from the AWS chain
    off = load_pools({"aws": {"kind": "cloud", "address": "tls://s:8786", "store": "s3://b/p", "burst": False}}, classes=classes)
    assert off["aws"].burst is None
    for bad, key in ((dict(store="s3://b/p"), "offload.pools.aws.address"), (dict(address="tcp://s:1"), "offload.pools.aws.store"),
                     (dict(address="tcp://s:1", store="s3://b", reads=["hot"]), "offload.pools.aws.reads"),
                     (dict(address="tcp://s:1", store="s3://b", burst={"max_slots": -1}), "offload.pools.aws.burst.max_slots")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_pools({"aws": {"kind": "cloud", **bad}}, classes=classes)
    with pytest.raises(ConfigError, match=r"offload\.pools\.here\.store"):
        load_pools({"here": {"kind": "local", "store": "s3://b"}}, classes=classes)


def test_only_the_jobs_the_policy_chose_may_read_the_object_store(tmp_path):
    from appliance.offload.burst import BurstConfig
    from appliance.offload.cloud import BurstController
    from appliance.offload.pools import PoolConfig, PoolSet
    from appliance.offload.scheduler import Candidate

    pool = PoolConfig("aws", kind="cloud", address="tcp://x:1", store="s3://b", reads=("object",), burst=BurstConfig())
    ctl = BurstController(pool, tmp_path)
    ctl.allowed = frozenset({2})
    ps = PoolSet({"aws": pool}, {"aws": object()}, {"aws": ctl})
    cands = [Candidate(1, "batch", inputs=("hot", "object")), Candidate(2, "batch", inputs=("hot", "object")),
             Candidate(3, "batch", inputs=("object",))]
    gated = {c.id: c.inputs for c in ps.gate(cands)}
    assert gated == {1: ("hot",), 2: ("hot", "object"), 3: ("object",)}  # 3 reads only the store: left as it is


def test_the_controllers_state_survives_a_restart_and_stays_small(tmp_path):
    from appliance.offload.burst import BurstConfig
    from appliance.offload.cloud import STATE_FILE, BurstController
    from appliance.offload.kinds import JobKind
    from appliance.offload.pools import PoolConfig

    pool = PoolConfig("aws", kind="cloud", address="tcp://x:1", store="s3://b", reads=("object",),
                      burst=BurstConfig(slo_s={"realtime": 600.0, "batch": 60.0, "reprocess": 86400.0}, slot_cores=1))
    kind = JobKind("k", "m:f", "batch", expected_s=30.0, inputs=("hot", "object"))

    class J:  # a ready ledger row, as the controller reads it
        def __init__(self, i):
            self.id, self.kind, self.priority, self.params, self.created_at = i, "k", "batch", {}, 0.0

    ctl = BurstController(pool, tmp_path, interval_s=0)
    for n in range(50):
        ctl.observe("k", 30.0)
    alerts = ctl.step(100.0, [J(i) for i in range(10)], lambda name: kind, tmp_path, local_cores=1, running_core_hours=0,
                      cloud_running=0, usage={"core_seconds": 3600.0})
    assert alerts == [] and ctl.decision.slots >= 1 and "batch" in ctl.decision.classes and ctl.allowed
    size = (tmp_path / STATE_FILE).stat().st_size
    again = BurstController(pool, tmp_path)
    assert again.state == ctl.state and again.snapshot.spent == pytest.approx(pool.burst.core_hour_price)
    assert again.expected_s(kind) == pytest.approx(30.0)
    unknown = J(99)
    unknown.kind = "not-a-kind"

    def kinds(name):
        if name != "k":
            raise KeyError(name)
        return kind

    ctl.step(150.0, [J(1), unknown], kinds, tmp_path, local_cores=1, running_core_hours=0, cloud_running=0,
             usage={"core_seconds": 3600.0})  # a ready job of an unknown kind never bursts and stops nothing
    assert 99 not in ctl.allowed
    for n in range(200):  # many more decisions: the state file does not grow
        ctl.step(200.0 + n, [J(i) for i in range(10)], lambda name: kind, tmp_path, local_cores=1, running_core_hours=0,
                 cloud_running=0, usage={"core_seconds": 3600.0})
    assert (tmp_path / STATE_FILE).stat().st_size <= size + 64


def _shown_and_exported(stats: dict) -> tuple[str, dict]:
    """The jobs pane's text and the Prometheus samples for an orchestrator's stats."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from appliance.metrics import JobsCollector
    from tui._model import JobsView
    from tui.app import ApplianceApp

    reg = CollectorRegistry()
    reg.register(JobsCollector(lambda: stats, transfers=None))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    return ApplianceApp._render_queues(JobsView.from_stats(stats)).plain, fams
