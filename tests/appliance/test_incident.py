"""``appliance incident``: the bundle of a real run with a fault (a killed stage), its manifest,
the absence of secrets, and the round trip through the TUI's replay and the report."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard

from appliance.cli import main
from appliance.config import load_config
from appliance.control.curve import create_client_keys, create_server_keys
from appliance.incident import FORMAT, MANIFEST, REDACTED, IncidentError, find_run, open_bundle, redact_dsn, redact_obj, redact_text
from appliance.logjson import JsonFormatter
from appliance.offload import Ledger
from appliance.pipeline import Supervisor
from appliance.pipeline.supervisor import record_invocation
from tests.runs import small_run_overrides
from tui import ReplaySource, RunModel

RUN_ID = "INCIDENT"
DSN_PASSWORD = "Pw-s3cret-DSN-9f2"
DSN = f"postgresql://lab:{DSN_PASSWORD}@db.lab.invalid/lab"
AWS_KEY_ID = "AKIAIOSFODNN7INCIDNT"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYINCIDENTKEY"
DASK_PASSWORD = "Dask-pw-4471"


def _z85_secret(key_secret_file: Path) -> str:
    for line in key_secret_file.read_text().splitlines():
        if line.strip().startswith("secret-key"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"no secret-key in {key_secret_file}")


@pytest.fixture(scope="module")
def incident(tmp_path_factory):
    """A real run (2 tiles x 4 cycles) whose basecall-0 is killed once (a crash alert and a
    stage_restarted alert), with secrets planted everywhere a bundle reads: the run's config
    (a scheduler URL with a password, an S3 URL with AWS credentials, CURVE key files; a lab
    ledger's DSN cannot be set there: the run would use its algorithm registry), the JSON log
    (the DSN with its password), the ledger's jobs and their errors, and a profile folder."""
    base = tmp_path_factory.mktemp("incident")
    root = base / "runs"
    _, server_secret = create_server_keys(base / "curve")
    _, client_secret = create_client_keys(base / "keys", "lab")
    secrets = {DSN_PASSWORD, DASK_PASSWORD, AWS_KEY_ID, AWS_SECRET, _z85_secret(server_secret), _z85_secret(client_secret)}
    conf = base / "appliance.toml"
    conf.write_text(
        "[lab.instruments.SIM02]\n"
        'connect = "tcp://sim02.lab:5555"\n'
        f'client_key = "{client_secret}"\n'
        f'server_key = "{base / "curve" / "server.key"}"\n'
    )
    overrides = small_run_overrides(root, "run.cycles=4", "control.enabled=false", f'control.curve_dir="{base / "curve"}"',
                                    'offload.executor="dask"', f'offload.dask_address="tcp://lab:{DASK_PASSWORD}@scheduler.lab.invalid:8786"',
                                    f'storage.cold="s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/cold"')
    cfg = load_config(conf, overrides)
    # the supervisor's log records as the headless JSON log file has them
    logs = base / "logs"
    logs.mkdir()
    handler = logging.FileHandler(logs / "appliance.jsonl", encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        sup = Supervisor(cfg, run_id=RUN_ID, faults={"basecall-0": {"kill_after": 10}})
        summary = sup.run()
        logging.getLogger("appliance.offload").warning(
            "ledger %s unreachable; secret-key = \"%s\"; aws_secret_access_key=%s", DSN, _z85_secret(client_secret), AWS_SECRET,
            extra={"run_id": RUN_ID})
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    # what `appliance run` writes besides: the summary, and the invocation (config file and overrides)
    (sup.state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    record_invocation(sup.state_dir, conf, overrides)
    # a profile (appliance profile stores them here), with key material that must not survive,
    # and a key file that must never go in; a trace file
    prof = sup.state_dir / "profiles"
    prof.mkdir()
    (prof / "py-spy-writer-0.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><text>writer loop</text></svg>\n')
    (prof / "notes.txt").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{AWS_SECRET}\n-----END OPENSSH PRIVATE KEY-----\ntoken={AWS_SECRET}\n")
    (prof / "copied.key_secret").write_bytes(client_secret.read_bytes())
    (sup.state_dir / "traces.jsonl").write_text(json.dumps({"trace_id": "ab" * 16, "name": "run", "run_id": RUN_ID}) + "\n")
    # spans other processes wrote (the SDK's span JSON, one per line): the orchestrator's and the
    # storage manager's, each with one span of this run's trace and one of another run's
    from appliance.tracing import trace_hex

    for where, name in ((".offload", "job fastq"), (".storage", "storage move hot->warm")):
        folder = root / where / "traces"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{where[1:]}-1.jsonl").write_text("".join(
            json.dumps({"name": f"{name} {rid}", "context": {"trace_id": "0x" + trace_hex(rid), "span_id": "0x" + "1" * 16}}) + "\n"
            for rid in (RUN_ID, "ANOTHER_RUN")) + '{"torn')
    # the offload ledger (SQLite) with two jobs of the run, one failed with the DSN in its error
    ledger_path = root / ".offload" / "ledger.sqlite"
    with Ledger(ledger_path) as led:
        a = led.submit("cycle-qc", {"run": RUN_ID, "cycle": 1, "aws_secret_access_key": AWS_SECRET}).job
        led.submit("fastq", {"run": RUN_ID, "note": f"s3://{AWS_KEY_ID}:{AWS_SECRET}@bucket/x"})
        led.submit("cycle-qc", {"run": "ANOTHER_RUN", "cycle": 1})
        led.lease(a.id, "w1", 30)
        led.fail(a.id, "w1", f"cannot reach {DSN}", transient=True)
    out = base / "out" / "incident.tar.zst"
    args = ["incident", str(sup.state_dir), "-o", str(out), "--config", str(conf), *(a for o in overrides for a in ("--set", o)),
            "--set", f'offload.ledger="{ledger_path}"', "--logs", str(logs), "--no-journal", "--json"]
    return {"base": base, "root": root, "sup": sup, "summary": summary, "out": out, "args": args, "secrets": secrets,
            "client_secret": client_secret, "server_secret": server_secret, "conf": conf, "overrides": overrides}


@pytest.fixture(scope="module")
def bundle(incident, tmp_path_factory):
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(incident["args"])
    assert code == 0
    summary = json.loads(buf.getvalue())
    extracted = open_bundle(incident["out"], tmp_path_factory.mktemp("extracted"))
    return summary, extracted


def _tar_names(path: Path) -> list[str]:
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as zr, tarfile.open(fileobj=zr, mode="r|") as tar:
        return [m.name for m in tar if m.isfile()]


def test_the_bundle_has_a_manifest_of_every_member(incident, bundle):
    summary, b = bundle
    out = incident["out"]
    assert summary["bundle"] == str(out) and summary["run_id"] == RUN_ID
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # written atomically: no temporary left
    names = _tar_names(out)
    top = f"incident-{RUN_ID}"
    assert names[0] == f"{top}/{MANIFEST}"  # the manifest first: `tar -xOf ... MANIFEST.json` reads it at once
    m = b.manifest
    assert m["format"] == FORMAT and m["run_id"] == RUN_ID
    assert b.problems == []  # every member's size and sha256 as listed
    listed = {row["path"] for row in m["members"]}
    assert len(listed) == len(m["members"]) == len(names) - 1  # each once
    assert {f"{top}/{p}" for p in listed} == set(names[1:])
    for row in m["members"]:
        data = (b.top / row["path"]).read_bytes()
        assert row["size"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    state, run = f"runs/.state/{RUN_ID}", f"runs/{RUN_ID}"
    for want in (f"{state}/config.json", f"{state}/algorithm.json", f"{state}/summary.json", f"{state}/stats.jsonl",
                 f"{run}/RunCompletionStatus.xml", f"{run}/RunInfo.xml", "runs/.state/recorder/flight-00000000.jsonl",
                 "alerts.json", "logs/appliance.jsonl", "ledger.json", "host/topology.json", "host/sysconfig-verify.json",
                 "rings.json", f"{state}/profiles/py-spy-writer-0.svg", f"{state}/traces.jsonl"):
        assert want in listed, want
    assert not any(p.endswith((".key_secret", ".key", ".ckpt")) for p in listed)
    assert {"what": f"{state}/profiles/copied.key_secret", "why": "a key file: key material is never put in a bundle"} in m["missing"]
    assert m["parts"]["ledger"] == "ok" and m["parts"]["profiles"] == "ok" and m["parts"]["traces"] == "ok"
    for where, name in (("offload", "job fastq"), ("storage", "storage move hot->warm")):  # only this run's spans
        spans = [json.loads(x) for x in (b.top / f"{state}/traces-{where}.jsonl").read_text().splitlines()]
        assert [sp["name"] for sp in spans] == [f"{name} {RUN_ID}"]
    assert m["parts"]["topology"] == "ok" and m["parts"]["sysconfig"] == "ok"
    assert any(row["what"] == "logs/stderr" for row in m["missing"])  # said what was not available
    # the parts hold what they say
    ledger = json.loads((b.top / "ledger.json").read_text())
    assert ledger["backend"] == "sqlite" and {j["kind"] for j in ledger["jobs"]} == {"cycle-qc", "fastq"}
    assert all(j["params"]["run"] == RUN_ID for j in ledger["jobs"])  # only this run's jobs
    failed = next(j for j in ledger["jobs"] if j["state"] == "retrying")
    assert [h["to_state"] for h in failed["history"]] == ["queued", "leased", "retrying"]
    assert failed["error"] == "cannot reach postgresql://lab:***@db.lab.invalid/lab"
    topo = json.loads((b.top / "host/topology.json").read_text())
    assert "cpus" in json.dumps(topo) or "nodes" in topo
    verify = json.loads((b.top / "host/sysconfig-verify.json").read_text())
    assert verify["profile"] == "instrument" and "exit_code" in verify
    rings = json.loads((b.top / "rings.json").read_text())
    assert {k.split(".")[0] for k in rings["rings"]} == {"raw", "corrected", "intensities", "calls"}
    assert all(r["written"] > 0 for r in rings["rings"].values()) and rings["live"] == []  # the run is over
    cfg = json.loads((b.top / state / "config.json").read_text())
    assert cfg["run"]["cycles"] == 4 and cfg["offload"]["dask_address"] == "tcp://lab:***@scheduler.lab.invalid:8786"
    assert cfg["storage"]["cold"] == "s3://AKIA***:***@bucket/cold"
    assert cfg["lab"]["instruments"]["SIM02"]["client_key"] == str(incident["client_secret"])  # the path, never the file
    logs = [json.loads(line) for line in (b.top / "logs/appliance.jsonl").read_text().splitlines()]
    assert any("crashed" in r["msg"] for r in logs) and any("unreachable" in r["msg"] for r in logs)


def test_no_secret_is_anywhere_in_the_bundle(incident, bundle):
    _, b = bundle
    secrets = incident["secrets"]
    assert len(secrets) == 6
    # what went in: the planted secrets were really in the sources
    state = incident["sup"].state_dir
    assert DASK_PASSWORD in (state / "config.json").read_text() and AWS_SECRET in (state / "config.json").read_text()
    assert AWS_SECRET in (state / "invocation.json").read_text()
    blobs = {"<tar>": zstandard.ZstdDecompressor().stream_reader(incident["out"].read_bytes()).read()}
    blobs.update({str(p): p.read_bytes() for p in b.top.rglob("*") if p.is_file()})
    for name, data in blobs.items():
        for s in secrets:
            assert s.encode() not in data, (s, name)
        assert b"-----BEGIN" not in data, name
    assert b.manifest["redactions"] >= 8
    notes = (b.top / f"runs/.state/{RUN_ID}/profiles/notes.txt").read_text()
    assert "PEM block" in notes and f"token={REDACTED}" in notes


def test_the_replayed_bundle_shows_the_same_alerts(incident, bundle):
    _, b = bundle

    def alerts(path):
        """Play ``path`` through the TUI's replay source (as fast as it goes) into its model."""
        source = ReplaySource(path, speed=0)
        model, done, stop = RunModel(), threading.Event(), threading.Event()

        def emit(u):
            if u.kind == "stats":
                model.update(u.body)
            elif u.kind in ("event", "alert"):
                model.add_event(u.kind, u.body)
            elif u.kind == "status" and "(finished)" in u.text:
                done.set()

        t = threading.Thread(target=source.run, args=(emit, stop))
        t.start()
        try:
            assert done.wait(30)
        finally:
            stop.set()
            t.join(10)
        return model, sorted((round(n.t, 3), n.kind, n.text) for n in model.alerts if n.severe)

    original, want = alerts(incident["sup"].state_dir)
    replayed, got = alerts(b.state_dir)
    assert any("basecall-0 crashed" in text for _, _, text in want)
    assert any(kind == "alert" and "restarted" in text for _, kind, text in want)
    assert got == want
    assert replayed.state == original.state == "done" and replayed.samples == original.samples
    # the recorder folder of the bundle replays too (ReplaySource's other shape)
    assert len(ReplaySource(b.state_dir.parent / "recorder", speed=0).samples) == original.samples
    # the bundle's alerts.json has the same alerts as the run's summary
    doc = json.loads((b.top / "alerts.json").read_text())
    ran = {e["message"] for e in incident["summary"]["events"] if e.get("kind") == "alert"}
    assert ran and ran <= {a["message"] for a in doc["alerts"]}


def test_replay_headless_writes_the_report(incident, tmp_path, capsys):
    into = tmp_path / "x"
    assert main(["incident", "--replay", str(incident["out"]), "--into", str(into), "--no-tui", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run_id"] == RUN_ID and doc["problems"] == []
    report = Path(doc["report"])
    assert report.is_file() and report.is_relative_to(into)
    text = report.read_text()
    assert RUN_ID in text and "basecall-0 crashed" in text
    # a file that is not a bundle is named
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"not zstd")
    assert main(["incident", "--replay", str(junk), "--no-tui"]) == 2
    assert "not an incident bundle" in capsys.readouterr().err


def test_the_run_is_found_by_id_folder_state_folder_or_as_the_latest(incident):
    cfg = load_config(incident["conf"], incident["overrides"])
    sup = incident["sup"]
    refs = [find_run(x, cfg) for x in (None, RUN_ID, sup.run_dir, sup.state_dir)]
    assert {(r.run_id, r.run_dir, r.state_dir) for r in refs} == {(RUN_ID, sup.run_dir, sup.state_dir)}
    with pytest.raises(IncidentError, match="no such run"):
        find_run("NOPE", cfg)


def test_a_failing_part_is_recorded_and_the_bundle_still_written(incident, tmp_path, capsys):
    """An unreachable lab ledger (its DSN with a password) fails that part only, and the
    password appears neither in the message nor anywhere else."""
    out = tmp_path / "b.tar.zst"
    args = [a for a in incident["args"] if a != "--json"]
    args[args.index("-o") + 1] = str(out)
    args += ["--set", f'offload.ledger="postgresql://lab:{DSN_PASSWORD}@127.0.0.1:1/lab"', "--no-host"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "missing ledger: LedgerError" in printed and DSN_PASSWORD not in printed
    b = open_bundle(out, tmp_path / "x")
    assert b.manifest["parts"]["ledger"].startswith("failed: LedgerError") and "lab:***@127.0.0.1" in b.manifest["parts"]["ledger"]
    assert b.manifest["parts"]["topology"] == "skipped" and "ledger.json" not in {m["path"] for m in b.members}
    assert DSN_PASSWORD.encode() not in (b.top / MANIFEST).read_bytes()
    assert main(["incident", "NOPE", "-o", str(tmp_path / "c.tar.zst"), "--set", f'output.root="{incident["root"]}"']) == 2


def test_redaction_rules():
    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    assert len(key) == 40
    text = (f"conn postgresql://u:hunter2@db:5432/x and postgres://only@host/db; libpq host=db password=hunter3 user=u\n"
            f"aws_access_key_id = AKIAABCDEFGHIJKLMNOP\naws_secret_access_key={AWS_SECRET}\n"
            f'secret-key = "{key}"\ncommit 0123456789abcdef0123456789abcdef01234567\n'
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\ntail")
    red, n = redact_text(text)
    for secret in ("hunter2", "hunter3", "AKIAABCDEFGHIJKLMNOP", AWS_SECRET, key, "MIIE", "BEGIN"):
        assert secret not in red, secret
    assert "postgresql://u:***@db:5432/x" in red and "postgres://only@host/db" in red  # no password: unchanged
    assert "0123456789abcdef0123456789abcdef01234567" in red  # a SHA-1, not a key
    path = "/var/lib/appliance/runs/.state/R1/a.json"  # 40 Z85 characters too, but a path
    assert len(path) == 40 and redact_text(f'"{path}"') == (f'"{path}"', 0)
    assert red.endswith("tail") and n >= 7
    assert redact_dsn("postgresql://lab:pw@h/db") == "postgresql://lab:***@h/db"
    assert redact_text(red) == (red, 0)  # redacting twice changes nothing more
    obj, n = redact_obj({"offload": {"ledger": "postgresql://a:b@h/d", "password": "x", "empty_token": ""},
                         "creds": [{"AWS_SECRET_ACCESS_KEY": "y", "Token": 5, "tokens_per_s": 3.0}], "public": key})
    assert obj == {"offload": {"ledger": "postgresql://a:***@h/d", "password": REDACTED, "empty_token": ""},
                   "creds": [{"AWS_SECRET_ACCESS_KEY": REDACTED, "Token": REDACTED, "tokens_per_s": 3.0}],
                   "public": f"[{REDACTED} curve key]"}
    assert n == 5


def test_the_console_replays_the_bundle(bundle):
    """What `appliance incident --replay FILE` opens: the operator console on the bundle's run."""
    from tests.tui.conftest import drive, screen_text, wait_until
    from tui import ApplianceApp

    _, b = bundle
    app = ApplianceApp(ReplaySource(b.state_dir, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the end of the replay")
        await pilot.pause(0.3)
        assert f"run {RUN_ID}  DONE" in screen_text(app)
        assert any("basecall-0 crashed" in n.text for n in app.model.alerts)

    drive(app, script)
