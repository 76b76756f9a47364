"""What the transfer journal records, where an operator sees it: ``appliance jobs show`` and the
Prometheus metrics, read from a real journal written by real pushes to a path and to a real
S3 API (moto's server), and a pull of outputs back."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.cli import main
from appliance.metrics import JobsCollector, TransferCollector
from appliance.offload import Ledger
from appliance.offload.cloud import pull_outputs
from appliance.transfer import (
    Destination,
    Journal,
    default_journal_path,
    entries_of_dir,
    publish_outputs,
    push,
    read_transfers,
)
from appliance.runfolder import FileEntry
from appliance.transfer.errors import SourceMismatch
from tests.s3 import s3_bucket, s3_server  # noqa: F401 - fixtures


@pytest.fixture
def recorded(tmp_path, s3_server, s3_bucket):
    """A data root whose ledger has a job, and whose journal has that job's push to a shared
    path and to S3, a refused push (a read-only destination) and a pull of outputs back."""
    root = tmp_path / "root"
    src = root / "RUN1"
    src.mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(11 << 20))  # three 5 MiB parts
    (src / "b.txt").write_bytes(b"b" * 1000)
    entries = entries_of_dir(src)
    with Ledger(root / ".offload" / "ledger.sqlite") as led:
        job = led.submit("fastq", {"run": "RUN1"}, priority="batch").job
        other = led.submit("align-qc", {"run": "RUN1"}, priority="batch").job
    with Journal(default_journal_path(root)) as j:
        push(src, entries, Destination(str(tmp_path / "warm")), j, job_id=job.id, part_size=5 << 20)
        push(src, entries, Destination(f"s3://{s3_bucket}/in", s3_server.storage_options), j, job_id=job.id, part_size=5 << 20)
        wrong = [FileEntry(e.path, e.size, "00000000") if e.path == "b.txt" else e for e in entries]
        with pytest.raises(SourceMismatch):  # a source that is not what its manifest says: failed, held
            push(src, wrong, Destination(str(tmp_path / "elsewhere")), j, job_id=job.id)
        out = tmp_path / "remote-out"
        out.mkdir()
        (out / "qc.json").write_text(json.dumps({"ok": True}))
        publish_outputs(out, Destination(f"s3://{s3_bucket}/out", s3_server.storage_options), j, subject="job-2", job_id=other.id)
        pull_outputs(f"s3://{s3_bucket}/out", "job-2", job_id=other.id, key="k2", output_dir=root / "Analysis" / "RUN1" / "align-qc",
                     data_root=root, storage_options=s3_server.storage_options, journal=j)
    return root, job.id, other.id, sum(e.size for e in entries)


def test_jobs_show_lists_the_jobs_transfers(recorded, capsys):
    root, job_id, other_id, nbytes = recorded
    assert main(["jobs", "show", str(job_id), "--root", str(root), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    by_dest = {t["destination"].split("://")[0] if "://" in t["destination"] else "path": t for t in res["transfers"]
               if t["state"] == "verified"}
    s3, path = by_dest["s3"], by_dest["path"]
    for t in (s3, path):
        assert t["direction"] == "push" and t["bytes_sent"] == nbytes and t["bytes_reread"] == nbytes
        assert t["attempts"] == 1 and t["files"] == 2 and t["duration_s"] > 0 and "re-read CRC32C" in t["verification"]
    assert s3["egress_bytes"] == nbytes and path["egress_bytes"] == 0  # only an object store's re-reads are egress
    (failed,) = [t for t in res["transfers"] if t["state"] == "failed"]
    assert "SourceMismatch" in failed["error"] and "b.txt" in failed["error"]
    assert main(["jobs", "show", str(job_id), "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "transfers:" in text and f"sent {nbytes / 1e6:.1f} MB" in text and "egress 0.0 MB" in text
    assert f"egress {nbytes / 1e6:.1f} MB" in text and "attempts 1" in text
    # the other job: its publish and its pull (the pull's bytes are egress, nothing sent)
    assert main(["jobs", "show", str(other_id), "--root", str(root), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert sorted(t["direction"] for t in res["transfers"]) == ["publish", "pull"]
    pull = next(t for t in res["transfers"] if t["direction"] == "pull")
    assert pull["bytes_sent"] == 0 and pull["egress_bytes"] > 0


def test_jobs_show_without_a_journal_shows_no_transfers(tmp_path, capsys):
    with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
        job = led.submit("fastq", {"run": "RUN1"}, priority="batch").job
    assert main(["jobs", "show", str(job.id), "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["transfers"] == []
    assert main(["jobs", "show", str(job.id), "--root", str(tmp_path)]) == 0
    assert "transfers:" not in capsys.readouterr().out
    assert not default_journal_path(tmp_path).exists()  # showing never creates a journal
    assert read_transfers(tmp_path / "nowhere.sqlite") == []


def _samples(collector) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    out = {}
    for fam in reg.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    generate_latest(reg)  # and it renders
    return out


def test_transfer_metrics_come_from_the_journal(recorded):
    root, job_id, other_id, nbytes = recorded
    rows = read_transfers(default_journal_path(root))
    m = _samples(TransferCollector(default_journal_path(root)))
    push_ = (("direction", "push"),)
    assert m[("appliance_transfer_bytes_sent_total", push_)] == sum(r["bytes_sent"] for r in rows if r["direction"] == "push")
    assert m[("appliance_transfer_bytes_sent_total", push_)] >= 2 * nbytes
    assert m[("appliance_transfer_bytes_reread_total", push_)] == sum(r["bytes_reread"] for r in rows if r["direction"] == "push")
    assert m[("appliance_transfer_bytes_reread_total", push_)] > 2 * nbytes  # and the failed push's re-reads
    assert m[("appliance_transfer_egress_bytes_total", push_)] == nbytes  # the S3 re-read only
    pulled = next(r for r in rows if r["direction"] == "pull")
    assert m[("appliance_transfer_egress_bytes_total", (("direction", "pull"),))] == pulled["egress_bytes"] > 0
    assert m[("appliance_transfers", (("direction", "push"), ("state", "verified")))] == 2
    assert m[("appliance_transfers", (("direction", "push"), ("state", "failed")))] == 1
    assert m[("appliance_transfers", (("direction", "push"), ("state", "waiting")))] == 0
    assert m[("appliance_transfer_attempts_total", push_)] == sum(r["attempts"] for r in rows if r["direction"] == "push")
    # the jobs collector exports them too, from the journal it is given (or its orchestrator's data root's)
    jobs = _samples(JobsCollector(lambda: {"classes": {}}, transfers=default_journal_path(root)))
    assert jobs[("appliance_transfer_bytes_sent_total", push_)] == m[("appliance_transfer_bytes_sent_total", push_)]
    # as `appliance serve` registers it: over an orchestrator's stats, the journal of its data root
    from appliance.offload import OffloadConfig, Orchestrator

    orch = Orchestrator(OffloadConfig(workers=1), root, scan=False)
    try:
        served = _samples(JobsCollector(orch.stats))
    finally:
        orch.stop(5)
    assert served[("appliance_transfer_egress_bytes_total", push_)] == nbytes
    assert ("appliance_jobs", (("class", "batch"), ("state", "queued"))) in served


def test_transfer_metrics_without_a_journal_are_empty(tmp_path):
    assert _samples(TransferCollector(tmp_path / "none.sqlite")) == {}
    assert not (tmp_path / "none.sqlite").exists()


def test_each_transfer_is_a_span_with_its_figures(tmp_path, s3_server, s3_bucket):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from appliance.transfer import TransferVerifyFailed
    from appliance.tracing import span_id_for, trace_id_for

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    src = tmp_path / "RUNX"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    entries = entries_of_dir(src)
    store = f"s3://{s3_bucket}/t"
    try:
        with Journal(tmp_path / "transfers.sqlite") as j:
            rep = push(src, entries, Destination(str(tmp_path / "warm")), j, job_id=3, tracer=tracer, run_id="RUNX")
            publish_outputs(src, Destination(store, s3_server.storage_options), j, subject="out-3", job_id=3, tracer=tracer)
            pull_outputs(store, "out-3", job_id=3, key="k3", output_dir=tmp_path / "got", data_root=tmp_path,
                         storage_options=s3_server.storage_options, journal=j, tracer=tracer, run_id="RUNX")
            c = s3_server.client()
            c.put_object(Bucket=s3_bucket, Key="t/out-3/a.bin", Body=b"garbage")
            c.close()
            with pytest.raises(TransferVerifyFailed):
                pull_outputs(store, "out-3", job_id=3, key="k3-again", output_dir=tmp_path / "got2", data_root=tmp_path,
                             storage_options=s3_server.storage_options, journal=j, tracer=tracer)
        spans = {s.name + ("" if s.status.is_ok else " failed"): s for s in exporter.get_finished_spans()}
    finally:
        provider.shutdown()
    assert sorted(spans) == ["transfer publish", "transfer pull", "transfer pull failed", "transfer push"]
    p = spans["transfer push"]
    assert p.attributes["transfer.bytes"] == rep.bytes_sent == 300_000 and p.attributes["transfer.files"] == 1
    assert p.attributes["transfer.destination"] == str(tmp_path / "warm" / "RUNX")
    assert p.attributes["transfer.state"] == "verified" and "re-read CRC32C" in p.attributes["transfer.verification"]
    assert p.attributes["transfer.egress_bytes"] == 0 and p.attributes["job.id"] == 3
    # a child of its run's span, in the run's trace (the ids every process computes from the run id)
    assert p.context.trace_id == trace_id_for("RUNX") and p.parent.span_id == span_id_for("RUNX", "run")
    assert p.end_time >= p.start_time
    pub = spans["transfer publish"]
    assert pub.attributes["transfer.egress_bytes"] == 300_000 and pub.parent is None  # its own trace without a run
    pull = spans["transfer pull"]
    assert pull.attributes["transfer.state"] == "verified" and pull.attributes["transfer.egress_bytes"] == 300_000
    bad = spans["transfer pull failed"]
    assert bad.attributes["transfer.state"] == "failed" and "TransferVerifyFailed" in bad.attributes["transfer.error"]
