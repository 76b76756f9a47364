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
    # the shipped unit: User=appliance, RuntimeDirectory=appliance, no XDG_RUNTIME_DIR
    assert default_socket_dir({"RUNTIME_DIRECTORY": "/run/appliance"}, uid=998) == Path("/run/appliance")
    assert default_socket_dir({"RUNTIME_DIRECTORY": "/run/a:/run/b", "XDG_RUNTIME_DIR": "/run/user/1"}, uid=1) == Path("/run/a")


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


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_shared_directories_are_refused_and_left_alone(tmp_path):
    """A sticky directory like /tmp (here a 1777 copy under tmp_path, never /tmp itself) or a
    group/other-writable one is refused, naming it and the fix, and its mode is not touched:
    as root, socket_dir=/tmp used to turn /tmp into 0700."""
    for mode in (0o1777, 0o1700, 0o770, 0o707, 0o2775):
        d = tmp_path / f"shared{mode:o}"
        d.mkdir()
        os.chmod(d, mode)
        with pytest.raises(SocketDirError, match="shared") as info:
            prepare_socket_dir(d)
        assert str(d) in str(info.value) and "choose a dedicated directory, e.g. /tmp/appliance-control" in str(info.value)
        assert _mode(d) == mode


def test_server_refuses_a_sticky_socket_dir(tmp_path):
    from appliance.control import ControlServer

    d = tmp_path / "tmp"
    d.mkdir()
    os.chmod(d, 0o1777)
    server = ControlServer(handlers={}, run_dir_for_sockets=d)
    with pytest.raises(SocketDirError, match="sticky"):
        server.start()
    server.stop()
    assert _mode(d) == 0o1777 and list(d.iterdir()) == []


def _dir(path, mode: int, *files: str):
    """A directory of ``mode`` holding empty ``files``."""
    path.mkdir()
    for name in files:
        (path / name).write_text("")
    os.chmod(path, mode)
    return path


def test_existing_directories_tightened_only_when_dedicated(tmp_path):
    created = prepare_socket_dir(tmp_path / "new")
    assert _mode(created) == 0o700
    # ours, not shared, empty or holding only the control plane's files: tightened to 0700
    runtime = _dir(tmp_path / "runtime", 0o750)  # systemd's RuntimeDirectoryMode=0750
    prepare_socket_dir(runtime)
    assert _mode(runtime) == 0o700
    stale = _dir(tmp_path / "stale", 0o755, "control.lock")
    prepare_socket_dir(stale)
    assert _mode(stale) == 0o700
    # an ordinary directory of ours (a home, /opt) with other files: refused, not chmod-ed
    home = _dir(tmp_path / "home", 0o755, "notes.txt")
    with pytest.raises(SocketDirError, match="notes.txt") as info:
        prepare_socket_dir(home)
    assert "chmod 0700" in str(info.value) and _mode(home) == 0o755
    # already 0700: used as it is, whatever it holds
    os.chmod(home, 0o700)
    assert prepare_socket_dir(home) == home and _mode(home) == 0o700
