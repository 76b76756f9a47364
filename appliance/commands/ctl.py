"""``appliance ctl``: a scriptable client of a running appliance's control plane."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from typing import Any

HELP = "send a command to a running appliance, or watch its stats and events (JSON output)"
DESCRIPTION = """\
Send one command to a running appliance over its control plane and print the result, or
stream its PUB messages. Arguments are key=value; a value that parses as JSON is sent as that
JSON value (numbers, true/false, null, lists, maps), anything else as a string.

Exit status: 0 the command succeeded, 1 the appliance answered with an error
(`{"error": {"code": ..., "message": ...}}` with --json), 2 bad usage (a malformed
key=value, an unknown topic, bad key files, a socket path over 107 bytes), 3 the appliance
is unreachable (no socket, no connection, refused, or no reply in time).

By default the local sockets in $RUNTIME_DIRECTORY (set by systemd for the unit: /run/appliance),
else $XDG_RUNTIME_DIR/appliance, else /run/appliance as root, else /tmp/appliance-UID, are
used; --socket-dir picks another directory and
--connect tcp://HOST:PORT a remote appliance (CURVE keys required: --client-key, --server-key).
The protocol is in docs/control-protocol.md.

examples:
  appliance ctl ping
  appliance ctl help                       list the commands the appliance offers
  appliance ctl --json status | jq .stages
  appliance ctl stop
  appliance ctl watch stats event          stream stats and events as JSON lines
  appliance ctl watch alert --count 1      wait for the next alert
  appliance ctl --connect tcp://imager1:5560 --client-key me.key_secret --server-key server.key status
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH of the command socket")
    where.add_argument("--socket-dir", metavar="DIR", help="directory of the local control sockets")
    parser.add_argument("--json", action="store_true", help="print JSON only (errors too, on stdout)")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait for a reply (default 3)")
    parser.add_argument("--client-key", metavar="FILE", help="this client's CURVE secret key file (NAME.key_secret), for tcp://")
    parser.add_argument("--server-key", metavar="FILE", help="the server's CURVE public key file (server.key), for tcp://")
    parser.add_argument("--count", type=int, metavar="N", help="watch: exit after N messages")
    parser.add_argument("--duration", type=float, metavar="S", help="watch: exit after S seconds")
    parser.add_argument("command", metavar="COMMAND", help="a command ('help' lists them), or 'watch'")
    parser.add_argument("params", nargs="*", metavar="key=value", help="command arguments (for watch: topics)")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (JSON where it parses, else the string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {item!r} is not key=value")
        if key in out:
            raise ValueError(f"argument {key!r} given twice")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    return repr(obj)


def _dumps(obj: Any, pretty: bool = False) -> str:
    return json.dumps(obj, default=_json_default, indent=2 if pretty else None, sort_keys=pretty)


def _fail(args: argparse.Namespace, code: str, message: str, status: int) -> int:
    if args.json:
        print(_dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"appliance ctl: {code}: {message}", file=sys.stderr)
    return status


def _print_result(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(_dumps(result))
    elif isinstance(result, str):
        print(result)
    elif isinstance(result, dict) and args.command == "help" and "commands" in result:
        for name, spec in result["commands"].items():
            print(f"{name:<18} {spec.get('help', '')}")
            for arg, a in (spec.get("args") or {}).items():
                req = "required" if a.get("required") else "optional"
                print(f"    {arg}={a.get('type')} ({req}) {a.get('help', '')}".rstrip())
    else:
        print(_dumps(result, pretty=True))


def run(args: argparse.Namespace) -> int:
    from appliance.control import ControlClient, ControlError, ControlUnreachable, CurveKeyError, CurveKeys, SocketDirError

    target = args.connect or args.socket_dir  # None: the default socket directory
    keys = None
    if args.client_key or args.server_key:
        if not (args.client_key and args.server_key):
            return _fail(args, "usage", "--client-key and --server-key go together", EXIT_USAGE)
        try:
            keys = CurveKeys.from_files(args.client_key, args.server_key)
        except CurveKeyError as exc:
            return _fail(args, "usage", str(exc), EXIT_USAGE)
    try:
        client = ControlClient(target, timeout_s=args.timeout, curve_keys=keys)
    except (ValueError, SocketDirError) as exc:  # SocketDirError: e.g. a socket path over 107 bytes
        return _fail(args, "usage", str(exc), EXIT_USAGE)
    with client:
        if args.command == "watch":
            return _watch(args, client)
        try:
            params = parse_params(args.params)
        except ValueError as exc:
            return _fail(args, "usage", str(exc), EXIT_USAGE)
        try:
            result = client.request(args.command, **params)
        except ControlError as exc:
            return _fail(args, exc.code, exc.message, EXIT_ERROR)
        except ControlUnreachable as exc:
            return _fail(args, "unreachable", str(exc), EXIT_UNREACHABLE)
        _print_result(args, result)
        return EXIT_OK


def _watch(args: argparse.Namespace, client) -> int:
    """Stream PUB messages as JSON lines: {"topic", "seq", "t", "data"}."""
    from appliance.control import TOPICS, ControlError, ControlTimeout, ControlUnreachable

    topics = args.params or list(TOPICS)
    bad = [t for t in topics if t not in TOPICS]
    if bad:
        return _fail(args, "usage", f"unknown topic(s) {', '.join(bad)}; topics: {', '.join(TOPICS)}", EXIT_USAGE)
    try:
        client.request("ping")  # fail fast (exit 3) when nothing serves there
        sub = client.subscribe(topics)
    except ControlError as exc:
        return _fail(args, exc.code, exc.message, EXIT_ERROR)
    except ControlUnreachable as exc:
        return _fail(args, "unreachable", str(exc), EXIT_UNREACHABLE)
    end = None if args.duration is None else time.monotonic() + args.duration
    n = 0
    reported: dict[str, int] = {}
    with sub:
        while args.count is None or n < args.count:
            wait = None if end is None else end - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                topic, body = sub.recv(wait)
            except ControlTimeout:
                break
            except ControlError as exc:
                print(f"appliance ctl: skipped a message: {exc}", file=sys.stderr)
                continue
            missed = sub.missed.get(topic, 0)
            if topic != "stats" and missed > reported.get(topic, 0):
                print(f"appliance ctl: missed {missed - reported.get(topic, 0)} {topic} message(s) (reading too slowly?)", file=sys.stderr)
                reported[topic] = missed
            line = {"topic": topic, "seq": body.get("seq"), "t": body.get("t"), "data": body.get("data")}
            print(_dumps(line), flush=True)
            n += 1
    return EXIT_OK
