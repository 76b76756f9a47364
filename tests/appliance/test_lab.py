"""``appliance lab status``: real services on private sockets, one lab ledger, one instrument
that does not answer; and the pure parts (the [lab] section, the rows)."""

from __future__ import annotations

import json
import time

import pytest

from appliance.cli import main
from appliance.config import ConfigError, load_config
from appliance.lab import fleet_rows, format_fleet
from appliance.offload import Ledger


def test_the_lab_section_is_validated_naming_the_key():
    cfg = load_config(overrides=['lab.instruments={SIM01={connect="/run/appliance"}}'])
    assert cfg.lab.instruments["SIM01"].connect == "/run/appliance"
    assert load_config().lab.instruments == {}
    for override, message in [
        ('lab.instruments={SIM01={connect="tcp://h:5555"}}', "lab.instruments.SIM01: tcp:// needs client_key and server_key"),
        ('lab.instruments={SIM01={connect="http://h"}}', "lab.instruments.SIM01.connect = 'http://h' is invalid"),
        ('lab.instruments={SIM01={connect="/x", port=1}}', "unknown config key lab.instruments.SIM01.port"),
        ("lab.instruments={SIM01={}}", "lab.instruments.SIM01.connect = None is invalid"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            load_config(overrides=[override])


def test_rows_from_two_status_samples_and_the_backlog():
    a = {"t": 100.0, "run_id": "R1", "state": "acquiring", "frames_acquired": 40, "frames_planned": 208, "tiles": [1101, 1102],
         "cycles": 26, "rings": {"raw.0.0": {"drops": 2}}, "alerts": [{"rule": "x"}]}
    b = {**a, "t": 101.0, "frames_acquired": 60}
    backlog = {"A": {"waiting": {"realtime": 1, "batch": 5, "reprocess": 0}, "in_flight": 2, "oldest_waiting_age_s": 300.0},
               "GHOST": {"waiting": {"realtime": 0, "batch": 1, "reprocess": 0}, "in_flight": 0, "oldest_waiting_age_s": 5.0}}
    rows = fleet_rows({"A": (a, b, None), "B": (None, None, "tcp://b:5555: no reply in 2 s")}, backlog)
    assert [r["instrument"] for r in rows] == ["A", "B", "GHOST"]
    ra, rb, rg = rows
    assert ra["state"] == "acquiring" and ra["frames"] == 60 and ra["frames_per_s"] == pytest.approx(20.0)
    assert ra["cycle"] == 8 and ra["drops"] == 2 and ra["alerts"] == 1 and ra["waiting"]["batch"] == 5 and ra["in_flight"] == 2
    assert rb["state"] == "unreachable" and "no reply" in rb["error"] and rb["waiting"] == {"realtime": 0, "batch": 0, "reprocess": 0}
    assert rg["error"] == "not in [lab.instruments]" and rg["waiting"]["batch"] == 1
    text = format_fleet(rows)
    assert text.splitlines()[0].startswith("INSTRUMENT  STATE") and "20.0" in text and "5 min" in text
    assert "B: tcp://b:5555: no reply in 2 s" in text


def test_lab_status_over_real_services_and_one_lab_ledger(tmp_path, capsys):
    from appliance.service import Service

    ledger = tmp_path / "lab.sqlite"
    common = [f'offload.ledger="{ledger}"', "offload.enabled=false", "source.synthetic.tile_size=128", "source.rate_hz=20"]
    svcs = {}
    try:
        for name in ("SIM01", "SIM02"):
            svcs[name] = Service(None, [f'output.root="{tmp_path / name}"', f'control.socket_dir="{tmp_path / name / "sock"}"',
                                        f'run.instrument_id="{name}"', *common]).start()
        with Ledger(ledger, instrument_id="SIM02") as led:
            for i in range(3):
                led.submit("k", {"i": i}, priority="batch")
            led.submit("k", {"i": "r"}, priority="realtime", instrument_id="SIM01")
        svcs["SIM01"].start_run(["run.cycles=20"], "LAB1")
        deadline = time.monotonic() + 120
        while (svcs["SIM01"].status_sample().get("frames_acquired") or 0) < 8:
            assert time.monotonic() < deadline, "the run did not start acquiring"
            time.sleep(0.2)
        (tmp_path / "lab.toml").write_text(
            f'[offload]\nledger = "{ledger}"\n'
            f'[lab.instruments.SIM01]\nconnect = "{tmp_path / "SIM01" / "sock"}"\n'
            f'[lab.instruments.SIM02]\nconnect = "{tmp_path / "SIM02" / "sock"}"\n'
            f'[lab.instruments.SIM03]\nconnect = "{tmp_path / "nowhere"}"\n')
        assert main(["lab", "status", "--config", str(tmp_path / "lab.toml"), "--json"]) == 1  # SIM03 does not answer
        rows = {r["instrument"]: r for r in json.loads(capsys.readouterr().out)["instruments"]}
    finally:
        for svc in svcs.values():
            svc.shutdown()
    assert set(rows) == {"SIM01", "SIM02", "SIM03"}
    one, two, three = rows["SIM01"], rows["SIM02"], rows["SIM03"]
    assert one["state"] == "acquiring" and one["run_id"] == "LAB1" and one["frames"] >= 8 and one["frames_per_s"] > 0
    assert one["waiting"]["realtime"] == 1 and one["error"] is None
    assert two["state"] == "idle" and two["waiting"] == {"realtime": 0, "batch": 3, "reprocess": 0} and two["oldest_waiting_age_s"] >= 0
    assert three["state"] == "unreachable" and three["error"]
