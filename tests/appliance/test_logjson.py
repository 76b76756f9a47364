"""JSON-lines logging: every record is one line that json.loads reads back, with its extras
and exceptions, from this process and from a spawned stage process."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
from datetime import datetime, timedelta, timezone

import pytest

from appliance.logjson import JsonFormatter, configure_logging, parse_level


@pytest.fixture(autouse=True)
def restore_root_logger():
    """configure_logging replaces the root logger's handlers (pytest's included): put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _records(text: str) -> list[dict]:
    lines = text.splitlines()
    assert text.endswith("\n") and all(lines)
    return [json.loads(line) for line in lines]


def test_each_record_is_one_json_line_with_extras_and_exceptions():
    stream = io.StringIO()
    configure_logging(json=True, level="debug", stream=stream, syslog_prefix=False)
    log = logging.getLogger("appliance.test.stage")
    before = datetime.now(timezone.utc)
    log.info("frame %d of tile %s", 7, "1101", extra={"tile": 1101, "cycle": 3, "ratio": 4.5, "ids": [1, 2]})
    log.warning("two\nlines and \"quotes\" and ünïcode")
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed", extra={"frame": 9})
    log.debug("odd extra", extra={"obj": object(), "level": "shadowed", "path": os.sep})
    info, warning, error, debug = _records(stream.getvalue())

    assert info["msg"] == "frame 7 of tile 1101"
    assert (info["level"], info["logger"]) == ("INFO", "appliance.test.stage")
    assert (info["tile"], info["cycle"], info["ratio"], info["ids"]) == (1101, 3, 4.5, [1, 2])
    assert info["pid"] == os.getpid() and info["process"] == "MainProcess" and info["thread"] == "MainThread"
    ts = datetime.fromisoformat(info["ts"])
    assert info["ts"].endswith("Z") and ts.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= ts <= datetime.now(timezone.utc)
    assert "exc" not in info and "args" not in info and "created" not in info

    assert warning["msg"] == 'two\nlines and "quotes" and ünïcode'

    assert error["level"] == "ERROR" and error["frame"] == 9
    assert error["exc_type"] == "KeyError"
    assert error["exc"].startswith("Traceback (most recent call last):") and "KeyError: 'missing'" in error["exc"]

    assert debug["obj"].startswith("<object object at")  # not JSON-encodable: repr
    assert debug["level"] == "DEBUG" and debug["extra_level"] == "shadowed"
    assert debug["path"] == os.sep


def test_level_filters_and_configure_twice_keeps_one_handler():
    first, second = io.StringIO(), io.StringIO()
    configure_logging(json=True, level="warning", stream=first, syslog_prefix=False)
    configure_logging(json=True, level=logging.WARNING, stream=second, syslog_prefix=False)
    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1
    log = logging.getLogger("appliance.test")
    log.info("dropped")
    log.error("kept")
    assert first.getvalue() == ""
    assert [r["msg"] for r in _records(second.getvalue())] == ["kept"]


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"), (logging.DEBUG, "<7>")],
)
def test_syslog_priority_prefix_for_journald(level, prefix):
    record = logging.LogRecord("appliance", level, __file__, 1, "message", None, None)
    line = JsonFormatter(syslog_prefix=True).format(record)
    assert line.startswith(prefix) and json.loads(line[len(prefix):])["msg"] == "message"
    assert json.loads(JsonFormatter().format(record))["msg"] == "message"


def test_prefix_is_automatic_only_on_the_journal_stream(tmp_path, monkeypatch):
    journal, other = tmp_path / "journal", tmp_path / "other"
    with open(journal, "w") as j, open(other, "w") as o:
        st = os.fstat(j.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(json=True, stream=j)
        logging.getLogger("appliance.test").warning("to the journal")
        configure_logging(json=True, stream=o)
        logging.getLogger("appliance.test").warning("to a file")
        configure_logging(json=False, stream=j)
        logging.getLogger("appliance.test").error("plain, to the journal")
    journal_lines = journal.read_text().splitlines()
    assert journal_lines[0].startswith("<4>{") and json.loads(journal_lines[0][3:])["msg"] == "to the journal"
    assert journal_lines[1].startswith("<3>") and "ERROR" in journal_lines[1] and "plain, to the journal" in journal_lines[1]
    assert json.loads(other.read_text())["msg"] == "to a file"


def test_plain_text_mode_is_one_readable_line():
    stream = io.StringIO()
    configure_logging(json=False, level="info", stream=stream)
    logging.getLogger("appliance.test").info("ready after %.1f s", 1.25)
    line = stream.getvalue()
    assert line.count("\n") == 1 and " INFO MainProcess appliance.test: ready after 1.2 s" in line


def test_bad_level_names_the_allowed_values():
    assert parse_level("Info") == logging.INFO and parse_level(15) == 15
    with pytest.raises(ValueError, match=r"'loud' is not one of critical, error, warning, info, debug"):
        configure_logging(json=True, level="loud", stream=io.StringIO())


def _stage_logs(path: str) -> None:
    """A stage process: configures JSON logging to a file and logs, as the supervisor's children do."""
    with open(path, "w") as stream:
        configure_logging(json=True, level="info", stream=stream, syslog_prefix=False)
        logging.getLogger("appliance.stage.writer").info("wrote cycle", extra={"cycle": 26, "bytes": 1 << 20})
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            logging.getLogger("appliance.stage.writer").exception("disk full")


def test_records_from_a_spawned_stage_process(tmp_path):
    path = tmp_path / "stage.jsonl"
    proc = multiprocessing.get_context("spawn").Process(target=_stage_logs, args=(str(path),), name="stage-writer")
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    wrote, failed = _records(path.read_text())
    assert wrote["process"] == failed["process"] == "stage-writer"
    assert wrote["pid"] == failed["pid"] == proc.pid != os.getpid()
    assert (wrote["cycle"], wrote["bytes"]) == (26, 1 << 20)
    assert failed["exc_type"] == "OSError" and "No space left on device" in failed["exc"]
