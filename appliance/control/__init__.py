"""The control plane: a ZeroMQ ROUTER for commands and a PUB for stats, events, alerts and
logs, with msgpack messages (docs/control-protocol.md). The server runs inside the
supervisor; ``appliance ctl`` and the TUI are clients."""

from appliance.control.client import (
    ControlClient,
    ControlError,
    ControlRefused,
    ControlTimeout,
    ControlUnreachable,
    Subscription,
    resolve_endpoints,
)
from appliance.control.commands import Arg, Command, CommandError
from appliance.control.curve import (
    CurveKeyError,
    CurveKeys,
    authorize_client,
    create_client_keys,
    create_server_keys,
)
from appliance.control.paths import SocketDirError, default_socket_dir, ipc_endpoints
from appliance.control.protocol import (
    ERROR_CODES,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    TOPICS,
    ProtocolError,
)
from appliance.control.logs import PublishingLogHandler
from appliance.control.server import BUILTIN_COMMANDS, ControlServer, ControlServerError

__all__ = [
    "Arg",
    "BUILTIN_COMMANDS",
    "Command",
    "CommandError",
    "ControlClient",
    "ControlError",
    "ControlRefused",
    "ControlServer",
    "ControlServerError",
    "ControlTimeout",
    "ControlUnreachable",
    "CurveKeyError",
    "CurveKeys",
    "ERROR_CODES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "PublishingLogHandler",
    "SocketDirError",
    "Subscription",
    "TOPICS",
    "authorize_client",
    "create_client_keys",
    "create_server_keys",
    "default_socket_dir",
    "ipc_endpoints",
    "resolve_endpoints",
]
