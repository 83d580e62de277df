"""`storage:` checks before Ray starts, against a real S3 server (moto, tests/search/conftest.py): each bad
storage is one line naming the URI and what is wrong, exit code 2, and nothing is written."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.errors import NormsearchError
from normsearch.run.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_good_bucket_takes_an_object_written_read_and_deleted(s3_env) -> None:
    storage = Storage.parse(f"s3://{s3_env.bucket}/probe-ok")
    storage.probe()
    # The probe object is deleted again (pyarrow leaves the empty "folder" marker probe-ok/).
    assert [k for k in s3_env.keys_under("probe-ok") if not k.endswith("/")] == []


def _dry_run(tmp_path: Path, storage: str) -> tuple[int, str]:
    """The exit code and stderr (stdout carries the command's progress lines when it is not a terminal)."""
    result = runner.invoke(
        app,
        ["run", QUICK, "--dry-run", "--no-estimate", "--output", str(tmp_path / "out"), "--storage", storage],
    )
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    "case, expected",
    [
        ("scheme", "unknown scheme 'ftp'"),
        ("endpoint", "nothing answers at the endpoint"),
        ("credentials", "the credentials are wrong"),
        ("bucket", "the bucket does not exist"),
        ("read-only", "access denied"),
    ],
)
def test_bad_storage_is_one_line_and_exit_2(tmp_path: Path, s3_env, monkeypatch, case, expected) -> None:
    uri = f"s3://{s3_env.bucket}/runs"
    if case == "scheme":
        uri = "ftp://host/runs"
    elif case == "endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    elif case == "credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "bucket":
        uri = "s3://no-such-bucket-here/runs"
    else:
        key, secret = s3_env.reader
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    code, output = _dry_run(tmp_path, uri)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and uri in lines[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_a_storage_that_already_holds_the_run_is_refused(tmp_path: Path, s3_env) -> None:
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="taken/out/recipe.yaml", Body=b"name: x\n")
    code, output = _dry_run(tmp_path, f"s3://{s3_env.bucket}/taken")
    assert code == 2 and "already holds a run named out" in output, output


def test_a_path_storage_is_probed_too(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NormsearchError, match="cannot write, read and delete"):
        Storage.parse(str(tmp_path / "file" / "under")).probe()
    Storage.parse(str(tmp_path / "nfs")).probe()  # a folder that can be made and written
