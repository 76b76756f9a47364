"""The Textual operator console (a control-plane client only): ``appliance tui``.

``ApplianceApp(source)`` with a :class:`LiveSource` (a running appliance over the control
plane) or a :class:`ReplaySource` (a past run's ``stats.jsonl``); ``FleetApp(rows,
instruments)`` the lab's fleet (``appliance tui --lab``), each instrument's console a key
away; see docs/tui.md.
"""

from tui._model import JobsView, Notice, RunModel, RunNotices, StorageView, display_state, format_reply
from tui._source import CommandUnavailable, LiveSource, ReplaySource, Source, SourceError, Update, parse_seek, resolve_stats_file
from tui.app import ApplianceApp, ConfirmScreen, HelpScreen, NoticeList, NoticeScreen, SeekScreen, runbook_entry
from tui.fleet import FleetApp, FleetScreen, Instrument, fleet_cells

__all__ = [
    "ApplianceApp",
    "CommandUnavailable",
    "ConfirmScreen",
    "FleetApp",
    "FleetScreen",
    "HelpScreen",
    "Instrument",
    "JobsView",
    "LiveSource",
    "Notice",
    "NoticeList",
    "NoticeScreen",
    "ReplaySource",
    "RunModel",
    "RunNotices",
    "SeekScreen",
    "Source",
    "SourceError",
    "StorageView",
    "Update",
    "display_state",
    "fleet_cells",
    "format_reply",
    "parse_seek",
    "resolve_stats_file",
    "runbook_entry",
]
