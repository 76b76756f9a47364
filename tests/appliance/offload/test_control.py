"""``appliance jobs`` verbs and the jobs.* control commands on a real ledger file."""

from __future__ import annotations

import json

import pytest

from appliance.cli import main
from appliance.control import CommandError
from appliance.offload import Ledger, OffloadConfig, control_commands


@pytest.fixture
def root(tmp_path, jobs_plugin):
    with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
        a = led.submit("test-hash", {"path": "/nonexistent"}, priority="batch").job
        led.lease(a.id, "w", 10)
        led.fail(a.id, "w", "ENOENT", transient=False)
        led.submit("test-hash", {"path": "/x", "i": 2}, priority="reprocess")
    return tmp_path


def _json(capsys, *argv) -> tuple[int, dict]:
    rc = main(["jobs", *argv, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else {}


def test_cli_verbs(root, capsys):
    rc, res = _json(capsys, "ls", "--root", str(root))
    assert rc == 0 and [j["state"] for j in res["jobs"]] == ["queued", "held"]
    rc, res = _json(capsys, "ls", "--root", str(root), "--state", "held")
    assert [j["id"] for j in res["jobs"]] == [1]
    rc, res = _json(capsys, "show", "1", "--root", str(root))
    assert res["job"]["error"] == "ENOENT" and [e["to_state"] for e in res["events"]] == ["queued", "leased", "held"]
    rc, res = _json(capsys, "requeue", "1", "--root", str(root))
    assert rc == 0 and res["job"]["state"] == "queued" and res["job"]["attempts"] == 0
    rc, res = _json(capsys, "requeue", "1", "--root", str(root))
    assert rc == 1 and res["error"]["code"] == "bad_state"
    rc, res = _json(capsys, "cancel", "2", "--root", str(root), "--reason", "not needed")
    assert res["job"]["state"] == "cancelled"
    rc, res = _json(capsys, "show", "2", "--root", str(root))
    assert res["events"][-1]["reason"] == "not needed"
    rc, res = _json(capsys, "submit", "test-hash", "path=/y", "n=3", "--root", str(root), "--class", "realtime")
    assert rc == 0 and res["created"] and res["job"]["class"] == "realtime"
    rc, again = _json(capsys, "submit", "test-hash", "path=/y", "n=3", "--root", str(root), "--class", "realtime")
    assert not again["created"] and again["job"]["id"] == res["job"]["id"]
    rc, res = _json(capsys, "submit", "no-such-kind", "--root", str(root))
    assert rc == 1 and res["error"]["code"] == "unknown_kind"
    rc, res = _json(capsys, "retry", "99", "--root", str(root))
    assert rc == 1 and res["error"]["code"] == "no_such_job"
    rc, res = _json(capsys, "stats", "--root", str(root))
    assert res["depth"] == 2 and res["classes"]["realtime"]["queued"] == 1
    assert main(["jobs", "show", "x", "--root", str(root)]) == 2
    assert main(["jobs", "ls", "--root", str(root / "nowhere")]) == 3
    capsys.readouterr()
    assert main(["jobs", "ls", "--root", str(root)]) == 0
    assert "test-hash" in capsys.readouterr().out


def test_cli_rejects_a_corrupt_ledger(tmp_path, capsys):
    (tmp_path / ".offload").mkdir()
    (tmp_path / ".offload" / "ledger.sqlite").write_bytes(b"garbage" * 500)
    assert main(["jobs", "ls", "--root", str(tmp_path)]) == 3
    assert "not a readable SQLite database" in capsys.readouterr().err


def test_control_commands(root):
    with Ledger(root / ".offload" / "ledger.sqlite", config=OffloadConfig(depth_high=2)) as led:
        cmds = control_commands(led)
        assert set(cmds) == {"jobs.ls", "jobs.show", "jobs.submit", "jobs.retry", "jobs.requeue", "jobs.cancel", "jobs.stats"}
        cmds["jobs.ls"].validate({"state": "held"})
        with pytest.raises(CommandError) as e:
            cmds["jobs.ls"].validate({"state": "bogus"})
        assert e.value.code == "bad_args"
        assert cmds["jobs.retry"]({"id": 1})["job"]["state"] == "queued"  # held -> one more attempt
        # depth 2 >= depth_high 2: a batch submission is refused, a realtime one admitted
        with pytest.raises(CommandError) as e:
            cmds["jobs.submit"]({"kind": "test-hash", "params": {"z": 1}, "wait_s": 0.0})
        assert e.value.code == "admission_refused" and "offload.depth_high" in e.value.message
        assert cmds["jobs.submit"]({"kind": "test-hash", "params": {"z": 1}, "class": "realtime"})["created"]
        assert cmds["jobs.stats"]({})["backpressure"]["active"]
        json.dumps(cmds["jobs.show"]({"id": 1}))
