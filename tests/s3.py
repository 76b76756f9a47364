"""A private S3 API for the tests: moto's server mode (``moto_server``) on loopback, one per session.

Use it from a conftest or a test module (``from tests.s3 import s3_server, s3_bucket``):

- ``s3_server`` (session): the running :class:`S3Server` (``endpoint``, ``storage_options`` for
  s3fs, ``client()`` for boto3). It sets dummy credentials in the environment for the session
  (the standard AWS chain, as on AWS; only the endpoint URL differs) and restores them after.
- ``s3_bucket``: a fresh bucket for this test (``create_bucket`` without a location constraint,
  as moto wants), emptied and deleted after it.

moto keeps everything in memory: keep test data to tens of MB. Skips, with the reason, only
where ``moto_server`` is not installed (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

__all__ = ["S3Server", "s3_bucket", "s3_server"]

_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server() -> str | None:
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.is_file() else shutil.which("moto_server")


class S3Server:
    """One ``moto_server`` process on 127.0.0.1:``port``, its log in ``folder``."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def storage_options(self) -> dict:
        return {"client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
                "default_cache_type": "none", "skip_instance_cache": True}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.folder / "moto.log", "wb")
        self.proc = subprocess.Popen([self.binary, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    text = (self.folder / "moto.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"moto_server did not start on {self.endpoint}: {text}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    binary = _moto_server()
    if binary is None:
        pytest.skip("moto_server is not installed: pip install -e '.[dev]' (moto[server])")
    saved = {k: os.environ.get(k) for k in _ENV}
    for k, v in _ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server = S3Server(binary, tmp_path_factory.mktemp("moto"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket (its name), removed with everything in it after the test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    c = s3_server.client()
    c.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for up in c.list_multipart_uploads(Bucket=name).get("Uploads", []):
            c.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        while True:
            objs = c.list_objects_v2(Bucket=name).get("Contents", [])
            if not objs:
                break
            c.delete_objects(Bucket=name, Delete={"Objects": [{"Key": o["Key"]} for o in objs]})
        c.delete_bucket(Bucket=name)
        c.close()
