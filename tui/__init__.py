"""The Textual operator console (a control-plane client only): ``appliance tui``.

``ApplianceApp(source)`` with a :class:`LiveSource` (a running appliance over the control
plane) or a :class:`ReplaySource` (a past run's ``stats.jsonl``); see docs/tui.md.
"""

from tui._model import JobsView, RunModel, StorageView
from tui._source import CommandUnavailable, LiveSource, ReplaySource, Source, SourceError, Update, resolve_stats_file
from tui.app import ApplianceApp, ConfirmScreen, HelpScreen

__all__ = [
    "ApplianceApp",
    "CommandUnavailable",
    "ConfirmScreen",
    "HelpScreen",
    "JobsView",
    "LiveSource",
    "ReplaySource",
    "RunModel",
    "Source",
    "SourceError",
    "StorageView",
    "Update",
    "resolve_stats_file",
]
