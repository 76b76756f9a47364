"""Commands the control server dispatches: argument specs, validation and command errors.

A handler is any ``Callable[[dict], Any]`` taking the request's ``args``. Wrapping it in a
:class:`Command` adds a help line and an argument schema, so the server validates arguments
(``bad_args``) before the handler runs and the ``help`` command can list them. A handler
raises :class:`CommandError` for a command-specific error reply (``not_running``, ...);
any other exception becomes an ``internal`` error.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Arg", "Command", "CommandError", "as_command"]

_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")

# Argument type name -> the Python types msgpack decodes it to. bool is excluded from int and
# float explicitly below (it is a subclass of int).
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "map": (dict,),
    "bytes": (bytes,),
    "any": (object,),
}


class CommandError(Exception):
    """Raised by a handler: the reply is an error with this ``code`` (lower_snake_case) and
    ``message`` (what went wrong and how to fix it)."""

    def __init__(self, code: str, message: str) -> None:
        if not _CODE_RE.match(code):
            raise ValueError(f"error code {code!r} must be lower_snake_case (a-z, 0-9, _)")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


@dataclasses.dataclass(frozen=True)
class Arg:
    """One command argument: ``type`` is one of str, int, float, bool, list, map, bytes, any;
    ``min`` (int and float only) is the smallest value allowed."""

    name: str
    type: str = "any"
    required: bool = False
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"argument {self.name!r}: type {self.type!r} is not one of {', '.join(_TYPES)}")
        if self.min is not None and self.type not in ("int", "float"):
            raise ValueError(f"argument {self.name!r}: min applies to int and float arguments, not {self.type}")

    def check(self, value: Any) -> None:
        """Raise CommandError('bad_args') when ``value`` does not fit this argument."""
        ok = isinstance(value, _TYPES[self.type])
        if isinstance(value, bool) and self.type in ("int", "float"):
            ok = False
        if not ok:
            raise CommandError("bad_args", f"argument {self.name!r} must be of type {self.type}, got {type(value).__name__} {value!r:.60}")
        if self.choices is not None and value not in self.choices:
            raise CommandError("bad_args", f"argument {self.name!r} is {value!r:.60}; allowed values: {', '.join(map(repr, self.choices))}")
        if self.min is not None and value < self.min:
            raise CommandError("bad_args", f"argument {self.name!r} is {value!r}; it must be at least {self.min!r}")

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "required": self.required, "help": self.help}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.min is not None:
            d["min"] = self.min
        return d


@dataclasses.dataclass(frozen=True)
class Command:
    """A handler with its help line, argument schema and own error codes. ``args=None`` means
    the arguments are not described and are passed to the handler unchecked. ``errors`` maps
    each command-specific code the handler raises (:class:`CommandError`) to when it does;
    ``help`` lists them (the server's own codes, ``bad_args`` and ``internal`` included, are
    in ``help``'s ``error_codes``)."""

    handler: Callable[[dict[str, Any]], Any]
    help: str = ""
    args: tuple[Arg, ...] | None = ()
    errors: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for code in self.errors:
            if not _CODE_RE.match(code):
                raise ValueError(f"error code {code!r} must be lower_snake_case (a-z, 0-9, _)")

    def validate(self, args: Mapping[str, Any]) -> None:
        """Raise CommandError('bad_args') naming the first problem with ``args``."""
        if self.args is None:
            return
        known = {a.name: a for a in self.args}
        unknown = sorted(set(args) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise CommandError("bad_args", f"unknown argument(s) {', '.join(map(repr, unknown))}; this command takes: {allowed}")
        for a in self.args:
            if a.name in args:
                a.check(args[a.name])
            elif a.required:
                raise CommandError("bad_args", f"missing required argument {a.name!r} ({a.type}): {a.help}".rstrip(": "))

    def __call__(self, args: dict[str, Any]) -> Any:
        return self.handler(args)

    def describe(self) -> dict[str, Any]:
        """What ``help`` reports for this command."""
        return {
            "help": self.help,
            "args": None if self.args is None else {a.name: a.describe() for a in self.args},
            "errors": dict(self.errors),
        }


def as_command(handler: Callable[[dict[str, Any]], Any] | Command) -> Command:
    """A :class:`Command` for ``handler``: itself, or a plain callable with its docstring's
    first line as help and unchecked arguments."""
    if isinstance(handler, Command):
        return handler
    if not callable(handler):
        raise TypeError(f"a handler must be callable or a Command, got {type(handler).__name__}")
    doc = inspect.getdoc(handler) or ""
    return Command(handler, help=doc.strip().splitlines()[0] if doc.strip() else "", args=None)
