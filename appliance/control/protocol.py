"""The control plane's wire format: msgpack requests, replies and PUB messages, version 1.

Every message is one msgpack map. A request is ``{"v": 1, "id": str, "cmd": str, "args": map}``;
a reply is ``{"v": 1, "id": ..., "ok": true, "result": ...}`` or
``{"v": 1, "id": ..., "ok": false, "error": {"code": str, "message": str}}``. PUB messages are
two frames, ``[topic, body]`` with body ``{"v": 1, "topic": str, "seq": int, "t": float,
"data": ...}``. Validation is strict (exact types, no unknown fields) so a client bug is
reported at once instead of being half-understood. docs/control-protocol.md is the reference.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import msgpack

__all__ = [
    "ERROR_CODES",
    "MAX_NESTING",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "TOPICS",
    "ProtocolError",
    "Request",
    "decode_pub",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_pub",
    "encode_reply",
    "encode_request",
    "pack",
    "read_id",
]

#: The version this code speaks. A request with any other ``v`` gets a ``bad_version`` error.
PROTOCOL_VERSION = 1

#: Largest request body (bytes) the server accepts; a larger one gets ``too_large``.
MAX_REQUEST_BYTES = 64 * 1024

#: Largest reply body the server sends; a handler result that encodes larger becomes ``internal``.
MAX_REPLY_BYTES = 4 * 1024 * 1024

#: PUB topics. ``stats`` is rate-limited (latest wins); the others are never rate-limited.
#: ``jobs`` and ``storage`` are the offload orchestrator's and the storage manager's stats,
#: published once a second by ``appliance serve``.
TOPICS = ("stats", "event", "alert", "log", "jobs", "storage")

#: Every error code the server itself produces, with what it means. Handlers add their own
#: command-specific codes by raising :class:`appliance.control.CommandError`.
ERROR_CODES: dict[str, str] = {
    "bad_request": "the message is not a well-formed request map (not msgpack, wrong types, "
    "missing or unknown fields, or a wrong multipart shape)",
    "bad_version": "the request's protocol version 'v' is not one this server speaks",
    "too_large": f"the request body is larger than {MAX_REQUEST_BYTES} bytes",
    "unknown_command": "no command of that name; the 'help' command lists them",
    "bad_args": "the command's arguments are missing, unknown or of the wrong type",
    "internal": "the command failed inside the server (a bug or an unexpected state); "
    "the server logged the traceback and keeps serving",
}

_ID_MAX = 128
_CMD_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}\Z")
_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_REQUEST_FIELDS = frozenset({"v", "id", "cmd", "args"})


class ProtocolError(ValueError):
    """A message broke the protocol. ``code`` is the error code to reply with and ``req_id``
    the request's id where one could be read (else ``None``)."""

    def __init__(self, code: str, message: str, req_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id


@dataclasses.dataclass(frozen=True)
class Request:
    """One validated request."""

    id: str
    cmd: str
    args: dict[str, Any]


def _default(obj: Any) -> Any:
    """Encode the few non-msgpack types handlers commonly return (paths, enums, dataclasses,
    sets and NumPy scalars/arrays) instead of failing on them."""
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode a {type(obj).__name__} in a control message")


def pack(obj: Any) -> bytes:
    """msgpack-encode ``obj`` (str as msgpack str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True, default=_default)


def _unpack(data: bytes) -> Any:
    # Non-string map keys are decoded (the 64 KiB limit bounds any hash-flooding) so that the
    # validator can name them; timestamps stay ext types so the validator rejects them too.
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, timestamp=0)


#: Containers (arrays and maps) may be nested this deep inside ``args``: ``{"a": [[...]]}``
#: with 32 arrays is accepted, 33 is ``bad_request``.
MAX_NESTING = 32


def _check_plain(obj: Any, path: str, depth: int = 0) -> None:
    """Reject what msgpack can carry but a command argument must not: ext types (timestamps
    included) and non-string map keys; containers inside ``args`` nest at most
    :data:`MAX_NESTING` deep (``depth`` is the container depth of ``obj``; ``args`` is 0)."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return
    if depth > MAX_NESTING and isinstance(obj, (list, dict)):
        raise ProtocolError("bad_request", f"{path} is nested more than {MAX_NESTING} levels deep: flatten the argument")
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            _check_plain(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ProtocolError("bad_request", f"{path} has a non-string key {k!r}: map keys must be strings")
            _check_plain(v, f"{path}.{k}", depth + 1)
        return
    raise ProtocolError("bad_request", f"{path} holds a {type(obj).__name__} (msgpack ext type): only nil, bool, int, float, str, bin, array and map are allowed")


def encode_request(cmd: str, args: Mapping[str, Any] | None = None, *, req_id: str) -> bytes:
    """Encode a request (what a client sends)."""
    return pack({"v": PROTOCOL_VERSION, "id": req_id, "cmd": cmd, "args": dict(args or {})})


def decode_request(data: bytes) -> Request:
    """Decode and validate a request body; raise :class:`ProtocolError` naming the problem."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError("too_large", f"request is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES}: send fewer or smaller arguments", read_id(data))
    try:
        msg = _unpack(data)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("bad_request", f"request is not one msgpack value ({type(exc).__name__}: {exc or 'nested too deep'}): encode the request map with msgpack", read_id(data)) from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", f"request is a msgpack {type(msg).__name__}, not a map: send {{'v': {PROTOCOL_VERSION}, 'id': ..., 'cmd': ..., 'args': {{...}}}}")
    req_id = msg.get("id")
    if not (isinstance(req_id, str) and 0 < len(req_id) <= _ID_MAX):
        echo = req_id if isinstance(req_id, str) and req_id else None  # a readable id is echoed, even a too long one
        raise ProtocolError("bad_request", f"'id' must be a non-empty string of at most {_ID_MAX} characters, got {_describe(req_id)}", echo)
    # The version right after the id: a request of another version is answered bad_version
    # whatever else it holds (its fields may be valid there), as docs/control-protocol.md promises.
    v = msg.get("v")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError("bad_request", f"'v' must be the integer protocol version ({PROTOCOL_VERSION}), got {_describe(v)}", req_id)
    if v != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {v} is not supported: this server speaks version {PROTOCOL_VERSION}", req_id)
    unknown = sorted(map(repr, set(msg) - _REQUEST_FIELDS))
    if unknown:
        raise ProtocolError("bad_request", f"unknown request field(s) {', '.join(unknown)}: a request has only 'v', 'id', 'cmd' and 'args'", req_id)
    cmd = msg.get("cmd")
    if not (isinstance(cmd, str) and _CMD_RE.match(cmd)):
        raise ProtocolError("bad_request", f"'cmd' must be a command name (lower case letters, digits, '_' and '.', at most 64), got {_describe(cmd)}", req_id)
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", f"'args' must be a map of argument name to value, got {_describe(args)}", req_id)
    try:
        _check_plain(args, "args")
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, req_id) from None
    return Request(req_id, cmd, args)


def read_id(data: bytes) -> str | None:
    """The request id of a body that does not decode as a whole (too large, invalid UTF-8 in
    some other string, nested past msgpack's own limit), or None when none can be read: the
    top-level map is walked key by key and every value but ``id`` skipped, so the id is found
    whenever it is a UTF-8 string placed before the part that cannot be read."""
    try:
        u = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(data), 1))
        u.feed(data)
        n = u.read_map_header()
        for _ in range(n):
            key = u.unpack()
            if key in (b"id", "id"):
                value = u.unpack()
                if isinstance(value, bytes):
                    text = value.decode("utf-8")
                    return text or None
                return None
            u.skip()
    except Exception:  # garbage: no id to echo
        return None
    return None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def encode_reply(req_id: str | None, result: Any) -> bytes:
    """Encode a success reply. Raises TypeError/ValueError when ``result`` cannot be encoded
    or encodes larger than :data:`MAX_REPLY_BYTES` (the server turns that into ``internal``)."""
    data = pack({"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "result": result})
    if len(data) > MAX_REPLY_BYTES:
        raise ValueError(f"reply is {len(data)} bytes; the limit is {MAX_REPLY_BYTES}")
    return data


def encode_error(req_id: str | None, code: str, message: str) -> bytes:
    """Encode an error reply."""
    if not _CODE_RE.match(code):
        raise ValueError(f"error code {code!r} must be lower_snake_case")
    return pack({"v": PROTOCOL_VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": str(message)}})


def decode_reply(data: bytes) -> dict[str, Any]:
    """Decode and check a reply (client side); raise :class:`ProtocolError` with code
    ``bad_reply`` when the server's answer is not a reply this client understands."""
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("bad_reply", f"reply is not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("ok"), bool) or "v" not in msg:
        raise ProtocolError("bad_reply", f"reply is not a reply map: {_describe(msg)}")
    if msg["v"] != PROTOCOL_VERSION:
        raise ProtocolError("bad_reply", f"reply has protocol version {msg['v']!r}; this client speaks {PROTOCOL_VERSION}")
    if not msg["ok"]:
        err = msg.get("error")
        if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
            raise ProtocolError("bad_reply", f"error reply without an error code and message: {_describe(msg)}")
    return msg


def encode_pub(topic: str, seq: int, t: float, data: Any) -> list[bytes]:
    """The two frames of one PUB message."""
    return [topic.encode(), pack({"v": PROTOCOL_VERSION, "topic": topic, "seq": seq, "t": t, "data": data})]


def decode_pub(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    """``(topic, body)`` of one PUB message; raise :class:`ProtocolError` on anything else."""
    if len(frames) != 2:
        raise ProtocolError("bad_reply", f"PUB message has {len(frames)} frames, expected 2 (topic, body)")
    try:
        topic = frames[0].decode()
        body = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("bad_reply", f"PUB message does not decode ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict) or body.get("topic") != topic:
        raise ProtocolError("bad_reply", f"PUB body is not a message of topic {topic!r}: {_describe(body)}")
    return topic, body

