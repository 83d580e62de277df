"""Fixtures of the storage and cluster tests: real S3-compatible servers (moto, s3_server.py), each its own
process on 127.0.0.1, for the session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3

HERE = Path(__file__).resolve().parent


def _serve(auth: bool) -> Iterator[S3]:
    command = [sys.executable, str(HERE / "s3_server.py"), *(["--auth"] if auth else [])]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()
        assert line, "the S3 server did not start"
        found = json.loads(line)
        yield S3(found["endpoint"], found["bucket"], tuple(found["writer"]), tuple(found["reader"]))
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """An S3 server for searches (no authentication; see s3_server.py)."""
    yield from _serve(auth=False)


@pytest.fixture(scope="session")
def s3_auth() -> Iterator[S3]:
    """An S3 server that authenticates every request: a writer and a read-only user."""
    yield from _serve(auth=True)


@pytest.fixture
def s3_env(s3_auth: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """This process's AWS variables pointed at the authenticating server, with the writer's keys."""
    for key, value in s3_auth.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert os.environ["AWS_ENDPOINT_URL"] == s3_auth.endpoint
    return s3_auth
