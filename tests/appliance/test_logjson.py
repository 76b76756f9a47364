"""JSON-lines logging: every record is one line that json.loads reads back, with its extras
and exceptions, from this process and from a spawned stage process."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import socket
import struct
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


# --- the journal's native protocol ------------------------------------------------------------


def parse_native(data: bytes) -> dict[str, list[bytes]]:
    """journald's side of https://systemd.io/JOURNAL_NATIVE_PROTOCOL/: ``NAME=value\\n``, or
    ``NAME\\n`` + 64-bit little-endian length + value + ``\\n``."""
    fields: dict[str, list[bytes]] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = nl + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n", "a binary field ends with a newline"
            i = nl + 10 + size
        assert name and name.decode().isupper() or name.decode().replace("_", "").isalnum(), name
        fields.setdefault(name.decode(), []).append(value)
    return fields


class JournalSocket:
    """A bound datagram socket standing in for /run/systemd/journal/socket; receives the
    memfd a too-big entry comes in too, as journald does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(20.0)

    def entry(self) -> dict[str, list[bytes]]:
        data, ancdata, _flags, _addr = self.sock.recvmsg(1 << 17, socket.CMSG_SPACE(4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fd = struct.unpack("i", payload[:4])[0]
                try:
                    assert data == b""
                    size = os.fstat(fd).st_size
                    data = os.pread(fd, size, 0)
                finally:
                    os.close(fd)
        return parse_native(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal(tmp_path):
    j = JournalSocket(str(tmp_path / "journal.sock"))
    yield j
    j.close()


def _one(fields, name):
    assert len(fields[name]) == 1, fields[name]
    return fields[name][0].decode()


def test_records_reach_the_journal_with_their_fields(journal, tmp_path, monkeypatch):
    from appliance.logjson import JournalHandler, set_log_fields

    stream = tmp_path / "stderr"
    with open(stream, "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        handler = configure_logging(json=True, stream=f, journal_socket=journal.path)
        assert isinstance(handler, JournalHandler)
        set_log_fields(run_id="261202_SIM01_0007_FC0001")
        try:
            log = logging.getLogger("appliance.test")
            log.warning("ring %s 78%% full", "calls.0.0", extra={"alert": "ring_full", "stage": "basecall-0", "occupancy": 0.78, "tiles": [1101]})
            try:
                raise KeyError("tile")
            except KeyError:
                log.exception("two\nlines")
        finally:
            set_log_fields(run_id=None)
        log.info("after the run")
    assert stream.read_text() == ""  # nothing on stderr: it all went to the journal
    first = journal.entry()
    assert _one(first, "MESSAGE") == "ring calls.0.0 78% full"
    assert _one(first, "PRIORITY") == "4"
    assert _one(first, "RUN_ID") == "261202_SIM01_0007_FC0001"
    from appliance.tracing import trace_hex, trace_id_for

    # a log line leads to its trace: the run's trace id, as every process computes it
    assert _one(first, "TRACE_ID") == trace_hex("261202_SIM01_0007_FC0001") == f"{trace_id_for('261202_SIM01_0007_FC0001'):032x}"
    assert _one(first, "STAGE") == "basecall-0" and _one(first, "ALERT") == "ring_full"
    assert _one(first, "OCCUPANCY") == "0.78" and json.loads(_one(first, "TILES")) == [1101]
    assert _one(first, "LOGGER") == "appliance.test" and _one(first, "SYSLOG_IDENTIFIER") == "appliance"
    assert _one(first, "CODE_FUNC") == "test_records_reach_the_journal_with_their_fields"
    second = journal.entry()
    message = _one(second, "MESSAGE")  # a newline: the length-prefixed form
    assert message.startswith("two\nlines\nTraceback") and "KeyError: 'tile'" in message
    assert _one(second, "PRIORITY") == "3" and _one(second, "EXC_TYPE") == "KeyError"
    assert _one(second, "RUN_ID") == "261202_SIM01_0007_FC0001"
    after = journal.entry()
    assert _one(after, "MESSAGE") == "after the run" and "RUN_ID" not in after  # cleared
    logging.getLogger().removeHandler(handler)
    handler.close()


def test_an_entry_too_big_for_a_datagram_goes_through_a_memfd(journal):
    from appliance.logjson import JournalHandler

    journal.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    handler = JournalHandler(journal.path)
    try:
        big = "x" * (1 << 20)  # larger than any datagram the kernel takes here
        handler.emit(logging.LogRecord("appliance.test", logging.INFO, __file__, 1, "%s", (big,), None))
        fields = journal.entry()
    finally:
        handler.close()
    assert _one(fields, "MESSAGE") == big and _one(fields, "PRIORITY") == "6"


def test_without_the_journal_socket_json_lines_stay(tmp_path, monkeypatch):
    stream = tmp_path / "stderr"
    with open(stream, "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(json=True, stream=f, journal_socket=str(tmp_path / "no-such.sock"))
        logging.getLogger("appliance.test").info("kept", extra={"run_id": "R1"})
    line = stream.read_text()
    assert line.startswith("<6>{") and json.loads(line[3:])["run_id"] == "R1"
    from appliance.tracing import trace_hex

    assert json.loads(line[3:])["trace_id"] == trace_hex("R1")


def test_run_id_reaches_a_spawned_process_through_the_environment(tmp_path):
    from appliance.logjson import log_fields, set_log_fields

    set_log_fields(run_id="R42")
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            inherited = pool.apply(log_fields)
    finally:
        set_log_fields(run_id=None)
    assert inherited == {"run_id": "R42"} and "run_id" not in log_fields()
    with pytest.raises(ValueError, match="allowed fields are run_id, stage"):
        set_log_fields(tile=1)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_tty_for_warnings_and_errors_and_no_color_respected(monkeypatch):
    from appliance.logjson import use_colour

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tty = _Tty()
    configure_logging(json=False, stream=tty)
    log = logging.getLogger("appliance.test")
    log.info("plain")
    log.warning("careful")
    log.error("broken")
    info, warning, error = tty.getvalue().splitlines()
    assert "\033[" not in info
    assert warning.startswith("\033[33m") and warning.endswith("\033[0m") and "careful" in warning
    assert error.startswith("\033[1;31m") and "broken" in error
    monkeypatch.setenv("NO_COLOR", "1")
    quiet = _Tty()
    configure_logging(json=False, stream=quiet)
    log.error("broken")
    assert "\033[" not in quiet.getvalue() and "broken" in quiet.getvalue()
    assert use_colour(io.StringIO(), {}) is False  # not a terminal
    assert use_colour(_Tty(), {"NO_COLOR": ""}) is True and use_colour(_Tty(), {"TERM": "dumb"}) is False
