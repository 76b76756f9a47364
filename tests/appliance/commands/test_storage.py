"""``appliance storage``: every action through the real CLI entry point, human and --json
output, exit statuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.cli import main

RUN = "CLIRUN"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("cli-pristine")
    Supervisor(small_run_config(root, "run.cycles=5", "output.keep_raw_every=1", "control.enabled=false"), run_id=RUN).run()
    return root


@pytest.fixture
def config(tmp_path, pristine) -> Path:
    hot = tmp_path / "hot"
    shutil.copytree(pristine, hot)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[output]\nroot = "{hot}"\n[storage]\nwarm = "{tmp_path / "warm"}"\ncold = "{tmp_path / "cold"}"\n')
    return cfg


def storage(capsys, cfg: Path, *argv: str, json_out: bool = True):
    rc = main(["storage", "--config", str(cfg), *(["--json"] if json_out else []), *argv])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if json_out else out)


def test_gc_dry_run_then_gc_then_ls_status_verify_scrub_restore(capsys, config, tmp_path):
    # the embedded default policy waits an hour before the first copy: a real plan is empty now
    rc, plan = storage(capsys, config, "gc", "--dry-run")
    assert rc == 0 and plan["dry_run"] and plan["plan"] == []
    fast = tmp_path / "fast.toml"
    fast.write_text("[mover]\nbandwidth_mb_s = 0\n" + "".join(
        f'[rules.{c}]\nwarm = 0\ncold = 0\n' for c in ("raw", "basecalls", "intensities", "reports", "logs")))
    config.write_text(config.read_text() + f'policy = "{fast}"\n')
    rc, plan = storage(capsys, config, "gc", "--dry-run")
    assert rc == 0 and {a["op"] for a in plan["plan"]} == {"copy", "archive"}
    assert not (tmp_path / "warm").exists()
    rc, done = storage(capsys, config, "gc")
    assert rc == 0 and done["errors"] == [] and len(done["done"]) == len(plan["plan"])
    rc, runs = storage(capsys, config, "ls")
    assert rc == 0 and runs[0]["run"] == RUN and runs[0]["state"] == "offloaded"
    rc, files = storage(capsys, config, "ls", RUN)
    assert rc == 0 and all(f["copies"]["warm"]["state"] == "verified" for f in files)
    rc, status = storage(capsys, config, "status")
    assert rc == 0 and status["tiers"]["warm"]["files"] == len(files) and status["level"] == "ok"
    rc, text = storage(capsys, config, "status", json_out=False)
    assert rc == 0 and "pending moves 0" in text and "hot free" in text
    rc, text = storage(capsys, config, "ls", json_out=False)
    assert rc == 0 and RUN in text and "offloaded" in text
    rc, ver = storage(capsys, config, "verify", RUN)
    assert rc == 0 and ver["ok"]
    rc, sc = storage(capsys, config, "scrub", "--sample", "4")
    assert rc == 0 and sc["checked"] == 4
    hot = tmp_path / "hot"
    (hot / RUN / "RunInfo.xml").unlink()
    rc, res = storage(capsys, config, "restore", RUN, "--to", "hot")
    assert rc == 0 and res["ok"] and res["restored"] == 1 and (hot / RUN / "RunInfo.xml").exists()


def test_errors_and_exit_statuses(capsys, config, tmp_path):
    rc, err = storage(capsys, config, "verify", "NOPE")
    assert rc == 1 and "not in the catalog" in err["error"]
    rc = main(["storage", "--set", "storage.high=7", "status"])
    assert rc == 2 and "storage.high" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.raw]\nwhen = "later"\n')
    rc = main(["storage", "--config", str(config), "--set", f'storage.policy="{bad}"', "status"])
    assert rc == 2 and "rules.raw.when" in capsys.readouterr().err


def test_work_stops_cleanly_on_sigterm_mid_copy(config, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from appliance.storage.catalog import Catalog

    slow = tmp_path / "slow.toml"
    slow.write_text("[mover]\nbandwidth_mb_s = 1.0\ninterval_s = 0.2\n" + "".join(
        f'[rules.{c}]\nwarm = 0\n' for c in ("raw", "basecalls", "intensities", "reports", "logs")))
    config.write_text(config.read_text() + f'policy = "{slow}"\n')
    warm = tmp_path / "warm"
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "storage", "--config", str(config), "work"],
                            cwd=Path(__file__).resolve().parents[3], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (warm.exists() and any(".tmp." in p.name for p in warm.rglob("*"))):
            assert time.monotonic() < deadline and proc.poll() is None, "the tierer never started copying"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not [p for p in warm.rglob("*") if ".tmp." in p.name]  # the copy in flight was cleaned up
    with Catalog(tmp_path / "hot" / ".storage" / "catalog.sqlite") as cat:
        assert all(c.tmp is None for _, c in cat.in_state("copying"))
        assert cat.tier_totals()["warm"].get("verified_files", 0) < len(cat.files())  # it did stop early
