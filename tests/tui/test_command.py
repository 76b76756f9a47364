"""The ``appliance tui`` verb: its arguments and its errors (the screens are tested by pilot)."""

from __future__ import annotations

import pytest

from appliance.cli import build_parser, main
from appliance.commands.tui import make_source
from tui import LiveSource, ReplaySource


def test_arguments_make_the_right_source(real_run, tmp_path):
    _, state_dir = real_run
    parser = build_parser()
    src = make_source(parser.parse_args(["tui", "--replay", str(state_dir), "--speed", "3"]))
    assert isinstance(src, ReplaySource) and src.speed == 3
    src = make_source(parser.parse_args(["tui", "--socket-dir", str(tmp_path)]))
    assert isinstance(src, LiveSource) and src.endpoint == f"ipc://{tmp_path}/control.sock"
    src = make_source(parser.parse_args(["tui", "--connect", "tcp://127.0.0.1:5560"]))
    assert src.endpoint == "tcp://127.0.0.1:5560" and src.events_endpoint == "tcp://127.0.0.1:5561"
    with pytest.raises(SystemExit):
        parser.parse_args(["tui", "--replay", "x", "--connect", "tcp://h:1"])


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["tui", "--replay", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["tui", "--connect", "udp://h:1"]) == 2
    assert "only ipc:// and tcp://" in capsys.readouterr().err
    assert main(["tui", "--connect", "tcp://h:1", "--client-key", "k"]) == 2
    assert "go together" in capsys.readouterr().err
