"""JSON-lines logging for headless operation: one JSON object per record, one record per line.

``appliance run --headless`` logs through :class:`JsonFormatter` so journald stores one entry
per record and ``journalctl -u appliance -o cat | jq`` reads them back. When stderr is the
journal stream systemd connected (``$JOURNAL_STREAM``), each line also starts with a syslog
priority prefix such as ``<4>``, which journald strips and stores as the entry's priority, so
``journalctl -p warning`` filters appliance records too.

When stderr is the journal and journald's native socket is there, records go to the journal
as structured entries instead (:class:`JournalHandler`): ``MESSAGE=``, ``PRIORITY=`` and one
upper-case field per ``extra=`` key, plus ``RUN_ID=``, ``STAGE=`` and ``ALERT=``, so
``journalctl RUN_ID=...`` selects one run. It uses ``systemd.journal`` (Debian's
``python3-systemd``) when importable, else writes the documented native protocol
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) to ``/run/systemd/journal/socket`` itself.
Without a TTY nothing is coloured; on a TTY, warnings and errors of the plain format are
coloured unless ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import array
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
import traceback
from datetime import datetime, timezone
from typing import IO, Any

__all__ = [
    "JOURNAL_SOCKET",
    "JournalHandler",
    "JsonFormatter",
    "configure_logging",
    "encode_journal_fields",
    "log_fields",
    "parse_level",
    "set_log_fields",
    "use_colour",
]

#: journald's native protocol socket (man systemd-journald.service)
JOURNAL_SOCKET = "/run/systemd/journal/socket"

# Process-wide fields every record carries (the run id, the stage). Spawned stage processes
# inherit them through these environment variables.
_FIELD_ENV = {"run_id": "APPLIANCE_RUN_ID", "stage": "APPLIANCE_STAGE"}
_fields_lock = threading.Lock()
_fields: dict[str, str] = {}


def set_log_fields(**fields: str | None) -> None:
    """Set (or, with None, clear) fields added to every record of this process and of the
    processes it spawns afterwards: ``set_log_fields(run_id="260101_SIM01_0001_FC0001")``.
    Allowed: ``run_id``, ``stage``. They become ``run_id``/``stage`` in JSON lines and
    ``RUN_ID=``/``STAGE=`` in the journal."""
    for key, value in fields.items():
        if key not in _FIELD_ENV:
            raise ValueError(f"set_log_fields({key}=...): allowed fields are {', '.join(_FIELD_ENV)}")
        with _fields_lock:
            if value is None:
                _fields.pop(key, None)
                os.environ.pop(_FIELD_ENV[key], None)
            else:
                _fields[key] = str(value)
                os.environ[_FIELD_ENV[key]] = str(value)


def log_fields() -> dict[str, str]:
    """The process-wide fields: those set here, else inherited through the environment."""
    with _fields_lock:
        out = {k: os.environ[v] for k, v in _FIELD_ENV.items() if os.environ.get(v)}
        out.update(_fields)
        return out


# Attributes every LogRecord has; anything else in record.__dict__ came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

# logging level -> syslog priority (man syslog(3)): what sd-daemon(3) prefixes mean
_SYSLOG_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON.

    Keys: ``ts`` (ISO-8601 UTC, microseconds), ``level``, ``logger``, ``msg`` (the formatted
    message), ``pid``, ``process`` (the process name, e.g. a stage's), ``thread``; ``exc_type``
    and ``exc`` (the traceback) when the record carries an exception; ``stack`` for
    ``stack_info=True``; then every ``extra=`` field; then ``trace_id`` and ``span_id`` (W3C
    hex) of the OpenTelemetry span active where the record was written, or outside a span the
    run's ``trace_id`` alone (appliance.tracing). An extra whose name collides with one of
    these keys is kept as ``extra_<name>``. Values JSON cannot encode are written with ``repr``.
    ``syslog_prefix=True`` starts each line with ``<N>`` (the record's syslog priority) for
    journald.
    """

    def __init__(self, *, syslog_prefix: bool = False) -> None:
        super().__init__()
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            "process": record.processName,
            "thread": record.threadName,
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        for key, value in log_fields().items():
            out[key] = value
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            if key in _FIELD_ENV and key in out:
                out[key] = value  # a record's own run_id/stage beats the process-wide one
                continue
            out[f"extra_{key}" if key in out else key] = value
        if "trace_id" not in out and "span_id" not in out:
            trace_id, span_id = _trace_ids(out.get("run_id"))
            if trace_id:
                out["trace_id"] = trace_id
            if span_id:
                out["span_id"] = span_id
        # json.dumps escapes newlines inside strings, so a record is always exactly one line
        line = json.dumps(out, ensure_ascii=False, default=repr)
        if self.syslog_prefix:
            return f"<{_syslog_priority(record.levelno)}>{line}"
        return line


def _trace_ids(run_id: Any) -> tuple[str | None, str | None]:
    """(trace id, span id) of a record: the active OpenTelemetry span's when there is one,
    else the run's trace (no span), else neither (appliance.tracing). Costs a dict lookup
    when nothing in the process traces (``opentelemetry.trace`` never imported)."""
    if "opentelemetry.trace" in sys.modules:
        from appliance.tracing import current_span_ids

        ids = current_span_ids()
        if ids is not None:
            return ids
    if isinstance(run_id, str) and run_id:
        from appliance.tracing import trace_hex

        return trace_hex(run_id), None
    return None, None


def _syslog_priority(levelno: int) -> int:
    for threshold, priority in _SYSLOG_PRIORITY:
        if levelno >= threshold:
            return priority
    return 7  # debug


def parse_level(level: int | str) -> int:
    """A logging level from an int or a name such as ``"info"``; a clear error otherwise."""
    if isinstance(level, int):
        return level
    name = str(level).strip().upper()
    if name not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(n.lower() for n in _LEVELS)} (or a number)")
    return getattr(logging, name)


_HANDLER_NAME = "appliance-console"
_FILE_HANDLER_NAME = "appliance-file"
#: ``log_file`` rotation: 32 MiB per file, 4 old files kept
LOG_FILE_BYTES = 32 << 20
LOG_FILE_KEEP = 4


def configure_logging(
    json: bool,
    level: int | str = logging.INFO,
    *,
    stream: IO[str] | None = None,
    syslog_prefix: bool | None = None,
    journal_socket: str | None = JOURNAL_SOCKET,
    colour: bool | None = None,
    log_file: str | os.PathLike | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (default ``sys.stderr``), as JSON lines when
    ``json`` is true, else as plain ``time level logger: message`` lines.

    Replaces the root logger's handlers with one (so it can be called after
    ``logging.basicConfig``, and twice) and sets the root level. When ``stream`` is the
    journal stream systemd connected (``$JOURNAL_STREAM``) and ``journal_socket`` exists,
    ``json=True`` logs to the journal's native protocol instead (:class:`JournalHandler`,
    fields intact). Otherwise ``syslog_prefix=None`` turns the ``<N>`` priority prefix on
    exactly when ``stream`` is the journal stream. ``colour=None`` colours warnings and
    errors of the plain format when ``stream`` is a TTY and ``NO_COLOR`` is unset
    (:func:`use_colour`). ``log_file`` also writes JSON lines to that file, rotated at
    ``LOG_FILE_BYTES`` with ``LOG_FILE_KEEP`` old files (``appliance.jsonl.1`` ...): call it
    from one process only (the supervisor). Returns the (main) handler.
    """
    stream = sys.stderr if stream is None else stream
    from appliance.systemd import NotifyConfigError, SystemdEnvironment

    try:
        on_journal = SystemdEnvironment.from_environ().stream_is_journal(stream)
    except NotifyConfigError:
        on_journal = False  # the notifier reports the bad variable; logging still works
    if syslog_prefix is None:
        syslog_prefix = on_journal
    handler: logging.Handler
    if json and on_journal and journal_socket and os.path.exists(journal_socket):
        handler = JournalHandler(journal_socket)
    else:
        handler = logging.StreamHandler(stream)
        if json:
            handler.setFormatter(JsonFormatter(syslog_prefix=syslog_prefix))
        else:
            want = use_colour(stream) if colour is None else colour
            handler.setFormatter(_TextFormatter(syslog_prefix=syslog_prefix, colour=want and not syslog_prefix))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old.get_name() in (_HANDLER_NAME, _FILE_HANDLER_NAME):
            old.close()
    root.addHandler(handler)
    if log_file is not None:
        from logging.handlers import RotatingFileHandler

        copy = RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_KEEP, encoding="utf-8")
        copy.set_name(_FILE_HANDLER_NAME)
        copy.setFormatter(JsonFormatter())
        root.addHandler(copy)
    root.setLevel(parse_level(level))
    return handler


def use_colour(stream: Any, environ: Any = None) -> bool:
    """True when ``stream`` is a terminal and ``NO_COLOR`` is unset or empty (no-color.org)
    and ``TERM`` is not ``dumb``."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# SGR colours of the plain format: errors bold red, warnings yellow
_COLOURS = ((logging.ERROR, "\033[1;31m"), (logging.WARNING, "\033[33m"))
_RESET = "\033[0m"


class _TextFormatter(logging.Formatter):
    """The plain format, with the same optional syslog priority prefix, and colour for
    warnings and errors when asked."""

    def __init__(self, *, syslog_prefix: bool, colour: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        self.syslog_prefix = syslog_prefix
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.colour:
            for threshold, sgr in _COLOURS:
                if record.levelno >= threshold:
                    text = f"{sgr}{text}{_RESET}"
                    break
        return f"<{_syslog_priority(record.levelno)}>{text}" if self.syslog_prefix else text


# -- the journal's native protocol -------------------------------------------------------------

_JOURNAL_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*\Z")


def _journal_name(key: str) -> str | None:
    """An ``extra=`` key as a journal field name (upper case, ``[A-Z0-9_]``, no leading
    underscore, which journald reserves for trusted fields), or None when it cannot be one."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    return name[:64] if name and _JOURNAL_FIELD.match(name) else None


def encode_journal_fields(fields: list[tuple[str, Any]]) -> bytes:
    """One native-protocol datagram: ``NAME=value\\n`` per field, or, for a value holding a
    newline (or a non-str/bytes value JSON-encoded that does), ``NAME\\n`` + the value's
    length as a little-endian 64-bit integer + the value + ``\\n``."""
    out = bytearray()
    for name, value in fields:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Writes each record to the journal as one structured entry.

    Fields: ``MESSAGE`` (the message, plus the traceback for exceptions), ``PRIORITY`` (syslog
    level), ``SYSLOG_IDENTIFIER`` (``appliance``), ``LOGGER``, ``PROCESS_NAME``,
    ``THREAD_NAME``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, ``EXC_TYPE``; ``RUN_ID`` and
    ``STAGE`` (the record's ``run_id``/``stage`` extras, else the process-wide
    :func:`set_log_fields`, else the process name for ``STAGE`` in a stage process);
    ``ALERT`` (the ``alert`` or ``rule`` extra); ``TRACE_ID`` and ``SPAN_ID`` (as the JSON
    lines' ``trace_id``/``span_id``); then every other ``extra=`` key upper-cased
    (lists and dicts JSON-encoded). Sent with ``systemd.journal.sendv`` when that module is
    importable, else as a datagram to ``socket_path``; a record too big for a datagram goes
    through a sealed memfd passed with ``SCM_RIGHTS``, as the protocol documents. A failed
    send is reported once on stderr (``logging.raiseExceptions``) and never stops the run.
    """

    def __init__(self, socket_path: str = JOURNAL_SOCKET, *, identifier: str = "appliance", use_module: bool = True) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.identifier = identifier
        self._sendv = None
        if use_module and socket_path == JOURNAL_SOCKET:
            try:
                from systemd import journal  # Debian: python3-systemd

                self._sendv = journal.sendv
            except ImportError:
                pass
        self._sock: socket.socket | None = None

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        """The journal fields of ``record``, in order (the test reads them back)."""
        message = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        out: list[tuple[str, Any]] = [
            ("MESSAGE", message),
            ("PRIORITY", _syslog_priority(record.levelno)),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("LOGGER", record.name),
            ("PROCESS_NAME", record.processName),
            ("THREAD_NAME", record.threadName),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", record.lineno),
            ("CODE_FUNC", record.funcName),
        ]
        if record.exc_info and record.exc_info[0] is not None:
            out.append(("EXC_TYPE", record.exc_info[0].__name__))
        extras = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}
        context = log_fields()
        run_id = extras.pop("run_id", None) or context.get("run_id")
        stage = extras.pop("stage", None) or context.get("stage")
        if stage is None and record.processName not in ("MainProcess", None):
            stage = record.processName  # a stage process is named after its stage (writer-0)
        alert = extras.pop("alert", None) or extras.get("rule")
        for name, value in (("RUN_ID", run_id), ("STAGE", stage), ("ALERT", alert)):
            if value is not None:
                out.append((name, value))
        trace_id, span_id = _trace_ids(run_id)
        if trace_id:  # journalctl TRACE_ID=... finds the run's trace, SPAN_ID=... the span
            out.append(("TRACE_ID", trace_id))
        if span_id:
            out.append(("SPAN_ID", span_id))
        taken = {name for name, _ in out}
        for key, value in extras.items():
            name = _journal_name(key)
            if name is None or name in taken:
                name = _journal_name(f"extra_{key}")
            if name is None or name in taken:
                continue
            taken.add(name)
            if not isinstance(value, (str, bytes, int, float)):
                value = json.dumps(value, default=repr, ensure_ascii=False)
            out.append((name, value))
        return out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.fields(record)
            if self._sendv is not None:
                self._sendv(*(f"{k}={v}" for k, v in fields))
                return
            self._send(encode_journal_fields(fields))
        except Exception:
            self.handleError(record)

    def _send(self, data: bytes) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                self._sock.sendto(data, self.socket_path)
                return
            except OSError as exc:
                if exc.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for one datagram
                    raise
            # the documented fallback: the entry in a sealed memfd, its descriptor as SCM_RIGHTS
            fd = os.memfd_create("appliance-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.write(fd, data)
                import fcntl

                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
                self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.socket_path)
            finally:
                os.close(fd)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        super().close()
