"""A logging handler that publishes log records on the control plane's ``log`` topic."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.control.server import ControlServer

__all__ = ["PublishingLogHandler"]


class PublishingLogHandler(logging.Handler):
    """Send each record to ``server.publish("log", ...)`` as ``{"t", "level", "logger",
    "message", "exc"}``. Non-blocking; a record that cannot be queued is counted as dropped
    in the server's ``control_status``, never raised into the code that logged it."""

    def __init__(self, server: ControlServer, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = None
            if record.exc_info:
                exc = logging.Formatter().formatException(record.exc_info)
            self.server.publish(
                "log",
                {"t": record.created, "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "exc": exc},
            )
        except Exception:
            self.handleError(record)
