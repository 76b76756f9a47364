"""The default socket directory and the socket directory checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.control import SocketDirError, default_socket_dir, ipc_endpoints
from appliance.control.client import resolve_endpoints
from appliance.control.paths import prepare_socket_dir


def test_default_socket_dir():
    assert default_socket_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}, uid=1000) == Path("/run/user/1000/appliance")
    assert default_socket_dir({}, uid=0) == Path("/run/appliance")
    assert default_socket_dir({"XDG_RUNTIME_DIR": " "}, uid=1234) == Path("/tmp/appliance-1234")


def test_endpoints(tmp_path):
    assert ipc_endpoints(tmp_path) == (f"ipc://{tmp_path}/control.sock", f"ipc://{tmp_path}/events.sock")
    with pytest.raises(SocketDirError, match="107"):
        ipc_endpoints(tmp_path / ("x" * 120))
    assert resolve_endpoints("tcp://host:5560") == ("tcp://host:5560", "tcp://host:5561")
    assert resolve_endpoints(f"ipc://{tmp_path}/events.sock") == ipc_endpoints(tmp_path)
    assert resolve_endpoints(str(tmp_path)) == ipc_endpoints(tmp_path)
    for bad in ("tcp://host", "http://host:1"):
        with pytest.raises(ValueError):
            resolve_endpoints(bad)


def test_prepare_socket_dir_refuses_symlinks_and_files(tmp_path):
    d = prepare_socket_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    (tmp_path / "link").symlink_to(d)
    with pytest.raises(SocketDirError, match="plain directory"):
        prepare_socket_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(SocketDirError, match="plain directory"):
        prepare_socket_dir(tmp_path / "file")
