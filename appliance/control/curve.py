"""CURVE keys for the control plane's TCP endpoints (``zmq.auth`` certificate files).

Server key directory layout (``curve_dir``)::

    server.key            the server's public key: give it to every client
    server.key_secret     the server's secret key (mode 0600, never leaves the host)
    authorized_clients/   one ``<name>.key`` public key file per client allowed to connect

A client holds its own ``<name>.key_secret`` (which contains its public key as well) and a
copy of ``server.key``. Files are the ZMQ certificate format ``zmq.auth.create_certificates``
writes, so keys made with any ZeroMQ tool work.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from pathlib import Path

__all__ = [
    "AUTHORIZED_DIR",
    "CurveKeys",
    "CurveKeyError",
    "SERVER_PUBLIC",
    "SERVER_SECRET",
    "authorize_client",
    "check_secret_mode",
    "create_client_keys",
    "create_server_keys",
    "load_server_keys",
]

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
AUTHORIZED_DIR = "authorized_clients"


class CurveKeyError(ValueError):
    """A key file is missing or is not a ZMQ certificate of the expected kind."""


def _load(path: Path, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise CurveKeyError(f"CURVE key file {path} does not exist: create keys with zmq.auth.create_certificates (docs/control-protocol.md)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except Exception as exc:
        raise CurveKeyError(f"{path} is not a ZMQ certificate file ({exc})") from None
    if need_secret and not secret:
        raise CurveKeyError(f"{path} holds no secret key: pass the .key_secret file, not the public .key")
    return public, secret


def create_server_keys(curve_dir: Path) -> tuple[Path, Path]:
    """Create ``server.key``/``server.key_secret`` and an empty ``authorized_clients/`` in
    ``curve_dir`` (mode 0700); return ``(public file, secret file)``."""
    import zmq.auth

    d = Path(curve_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    (d / AUTHORIZED_DIR).mkdir(mode=0o700, exist_ok=True)
    public, secret = zmq.auth.create_certificates(d, "server")
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def create_client_keys(key_dir: Path, name: str = "client") -> tuple[Path, Path]:
    """Create ``<name>.key``/``<name>.key_secret`` in ``key_dir``; return ``(public, secret)``."""
    import zmq.auth

    d = Path(key_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(d, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def authorize_client(curve_dir: Path, client_public: Path) -> Path:
    """Copy a client's public key file into ``curve_dir/authorized_clients/``."""
    _load(client_public, need_secret=False)
    dest_dir = Path(curve_dir) / AUTHORIZED_DIR
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = dest_dir / Path(client_public).name
    shutil.copyfile(client_public, dest)
    return dest


def check_secret_mode(path: Path) -> None:
    """Refuse a secret key file that its group or others can read or write (as ssh refuses a
    private key that others can read): CurveKeyError naming the ``chmod`` that fixes it."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return  # _load names the missing file
    if mode & 0o077:
        raise CurveKeyError(
            f"CURVE secret key {path} has mode {mode:04o}: it must not be accessible by group or others "
            f"(anyone who can read it can impersonate its owner): run chmod 600 {path}, and create a new key "
            f"pair if others may already have read it"
        )


def load_server_keys(curve_dir: Path) -> tuple[bytes, bytes, Path]:
    """``(public, secret, authorized_clients dir)`` of a server key directory; the secret key
    file must be readable by its owner only (mode 0600 or 0400, :func:`check_secret_mode`)."""
    d = Path(curve_dir)
    public, secret = _load(d / SERVER_SECRET, need_secret=True)
    check_secret_mode(d / SERVER_SECRET)
    authorized = d / AUTHORIZED_DIR
    if not authorized.is_dir():
        raise CurveKeyError(f"{authorized} does not exist: create it and put the public key (.key) of every client allowed to connect in it")
    assert secret is not None
    return public, secret, authorized


@dataclasses.dataclass(frozen=True, repr=False)
class CurveKeys:
    """A client's CURVE identity and the server's public key (Z85-encoded bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, client_secret_file: Path, server_public_file: Path) -> CurveKeys:
        """Load ``<name>.key_secret`` (this client; owner-only mode, as the server's) and
        ``server.key`` (the server)."""
        public, secret = _load(client_secret_file, need_secret=True)
        check_secret_mode(client_secret_file)
        server_public, _ = _load(server_public_file, need_secret=False)
        assert secret is not None
        return cls(public, secret, server_public)

    def __repr__(self) -> str:  # never print the secret
        return f"CurveKeys(public={self.public.decode()!r}, server_public={self.server_public.decode()!r})"
