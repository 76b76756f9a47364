"""JSON-lines logging for headless operation: one JSON object per record, one record per line.

``appliance run --headless`` logs through :class:`JsonFormatter` so journald stores one entry
per record and ``journalctl -u appliance -o cat | jq`` reads them back. When stderr is the
journal stream systemd connected (``$JOURNAL_STREAM``), each line also starts with a syslog
priority prefix such as ``<4>``, which journald strips and stores as the entry's priority, so
``journalctl -p warning`` filters appliance records too.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import datetime, timezone
from typing import IO, Any

__all__ = ["JsonFormatter", "configure_logging", "parse_level"]

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
    ``stack_info=True``; then every ``extra=`` field. An extra whose name collides with one of
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
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            out[f"extra_{key}" if key in out else key] = value
        # json.dumps escapes newlines inside strings, so a record is always exactly one line
        line = json.dumps(out, ensure_ascii=False, default=repr)
        if self.syslog_prefix:
            return f"<{_syslog_priority(record.levelno)}>{line}"
        return line


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


def configure_logging(
    json: bool,
    level: int | str = logging.INFO,
    *,
    stream: IO[str] | None = None,
    syslog_prefix: bool | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (default ``sys.stderr``), as JSON lines when
    ``json`` is true, else as plain ``time level logger: message`` lines.

    Replaces the root logger's handlers with one (so it can be called after
    ``logging.basicConfig``, and twice) and sets the root level. ``syslog_prefix=None`` turns
    the ``<N>`` priority prefix on exactly when ``stream`` is the journal stream systemd
    connected. Returns the handler.
    """
    stream = sys.stderr if stream is None else stream
    if syslog_prefix is None:
        from appliance.systemd import NotifyConfigError, SystemdEnvironment

        try:
            syslog_prefix = SystemdEnvironment.from_environ().stream_is_journal(stream)
        except NotifyConfigError:
            syslog_prefix = False  # the notifier reports the bad variable; logging still works
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    if json:
        handler.setFormatter(JsonFormatter(syslog_prefix=syslog_prefix))
    else:
        handler.setFormatter(_TextFormatter(syslog_prefix=syslog_prefix))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old.get_name() == _HANDLER_NAME:
            old.close()
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    return handler


class _TextFormatter(logging.Formatter):
    """The plain format, with the same optional syslog priority prefix."""

    def __init__(self, *, syslog_prefix: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{_syslog_priority(record.levelno)}>{text}" if self.syslog_prefix else text
