"""Where the control sockets live, and the one place that reads the environment for them.

The local sockets are ``ipc://<dir>/control.sock`` (ROUTER, commands) and
``ipc://<dir>/events.sock`` (PUB, stats and events), in a directory of mode 0700 owned by
the appliance's user; the socket files are chmod 0600. The server creates the directory, or
uses an existing one that is not shared (see :func:`prepare_socket_dir`); it never changes the
permissions of a directory that holds anything but its own files. ``<dir>/control.lock`` is held
(``flock``) by the serving process, so a second appliance refuses to start on the same
directory instead of stealing its sockets. The default directory is
``$XDG_RUNTIME_DIR/appliance`` when that is set, ``/run/appliance`` as root, else
``/tmp/appliance-<uid>``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "CONTROL_SOCKET",
    "EVENTS_SOCKET",
    "LOCK_FILE",
    "SocketDirError",
    "default_socket_dir",
    "ipc_endpoints",
    "prepare_socket_dir",
]

CONTROL_SOCKET = "control.sock"
EVENTS_SOCKET = "events.sock"
LOCK_FILE = "control.lock"

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_IPC_PATH = 107


class SocketDirError(OSError):
    """The socket directory cannot be used safely (wrong owner, path too long, ...)."""


def default_socket_dir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """The control socket directory for this user (the only reader of the environment for
    the control plane): under systemd the unit's ``RuntimeDirectory=`` (``$RUNTIME_DIRECTORY``,
    its first entry: ``/run/appliance`` for the shipped unit, which runs as a non-root user
    with no ``XDG_RUNTIME_DIR``), else ``$XDG_RUNTIME_DIR/appliance``, ``/run/appliance`` for
    root, else ``/tmp/appliance-<uid>``."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0].strip()
    if runtime:
        return Path(runtime)
    xdg = env.get("XDG_RUNTIME_DIR", "").strip()
    if xdg:
        return Path(xdg) / "appliance"
    if uid == 0:
        return Path("/run/appliance")
    return Path(f"/tmp/appliance-{uid}")


def ipc_endpoints(socket_dir: Path) -> tuple[str, str]:
    """``(command endpoint, events endpoint)`` for a socket directory."""
    socket_dir = Path(socket_dir).absolute()
    out = []
    for name in (CONTROL_SOCKET, EVENTS_SOCKET):
        path = str(socket_dir / name)
        if len(path.encode()) > _MAX_IPC_PATH:
            raise SocketDirError(f"socket path {path} is {len(path.encode())} bytes; Unix sockets allow {_MAX_IPC_PATH}: use a shorter socket directory")
        out.append(f"ipc://{path}")
    return out[0], out[1]


def prepare_socket_dir(socket_dir: Path) -> Path:
    """Create ``socket_dir`` with mode 0700, or check an existing one, and return its absolute
    path. Refused: a symlink or non-directory, a directory owned by another user, and a shared
    directory (sticky, like /tmp, or writable by group or others): anyone who can write there
    could replace our sockets, and its mode is not ours to change. An existing directory of
    ours with looser read/search bits (e.g. 0750 from systemd's ``RuntimeDirectory=``) is
    tightened to 0700 only while it is empty or holds nothing but the control plane's own
    files; otherwise it is refused, so an ordinary directory (a home, /opt) is never chmod-ed."""
    d = Path(socket_dir).absolute()
    ipc_endpoints(d)  # a socket path that is too long is refused before anything is created
    d.parent.mkdir(parents=True, exist_ok=True)
    try:
        d.mkdir(mode=0o700)
        created = True
    except FileExistsError:
        created = False
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SocketDirError(f"socket directory {d} is not a plain directory: remove it or choose another (control.socket_dir)")
    if st.st_uid != os.getuid():
        raise SocketDirError(f"socket directory {d} is owned by uid {st.st_uid}, not by this user ({os.getuid()}): remove it or choose another")
    mode = stat.S_IMODE(st.st_mode)
    if created:
        if mode != 0o700:  # mkdir's mode is masked by the umask
            os.chmod(d, 0o700)
        return d
    if mode & (stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH):
        raise SocketDirError(
            f"socket directory {d} is shared (mode {mode:04o}: sticky or writable by group or others), so "
            f"others could replace the sockets, and the server does not change the permissions of a directory "
            f"it did not create: choose a dedicated directory, e.g. /tmp/appliance-control"
        )
    if mode != 0o700:
        foreign = sorted(set(os.listdir(d)) - {CONTROL_SOCKET, EVENTS_SOCKET, LOCK_FILE})
        if foreign:
            raise SocketDirError(
                f"socket directory {d} has mode {mode:04o} and holds other files ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): the server only tightens a dedicated directory to 0700; "
                f"choose a dedicated directory, e.g. /tmp/appliance-control, or chmod 0700 {d} yourself"
            )
        os.chmod(d, 0o700)
    return d
