"""Searches whose Ray Tune storage is a real S3 server (moto, tests/search/s3_server.py): the bucket holds
every trial's checkpoints and the mirrored run folder; a SIGKILLed driver is resumed from the bucket alone,
in an empty directory, and nothing is lost or trained twice; `export --weights` reads weights from it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from normsearch.run.folder import RunFolder
from normsearch.run.records import FINISHED

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "recipes" / "quickstart.yaml")
# The shared tiny budget with fewer images; each run sets its own epochs.
SMALLER = {"train.epochs": None, "data.n_train": 200, "data.n_val": 40, "data.n_test": 40}

pytestmark = pytest.mark.slow


def _env(s3) -> dict[str, str]:
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "normsearch", *args]


def _run(out: Path, storage: str, samples: int, epochs: int, tiny, *extra: str) -> list[str]:
    return _command(
        "run", QUICK, "--output", str(out), "--storage", storage, "--num-samples", str(samples),
        "--max-concurrent", "2", "--set", f"train.epochs={epochs}", *tiny.but(SMALLER), *extra,
    )  # fmt: skip


def _checkpoints(s3, prefix: str) -> dict[str, set[str]]:
    """trial folder -> the files of its checkpoints, from the bucket's object list."""
    found: dict[str, set[str]] = {}
    for key in s3.keys_under(prefix):
        match = re.match(rf"{re.escape(prefix)}/tune/attempt-\d+/([^/]+)/checkpoint_\d+/(.+)$", key)
        if match:
            found.setdefault(match.group(1), set()).add(match.group(2))
    return found


def _finished_once(records: list[dict]) -> list[str]:
    done = Counter(r["trial_id"] for r in records if r["status"] in FINISHED)
    assert all(n == 1 for n in done.values()), done
    return sorted(done)


def test_a_search_with_s3_storage_keeps_every_checkpoint_in_the_bucket(tmp_path: Path, s3, tiny) -> None:
    out = tmp_path / "runs" / "s3run"
    done = subprocess.run(
        _run(out, f"s3://{s3.bucket}/one", 2, 2, tiny),
        env=_env(s3),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = _finished_once(RunFolder(out).records())
    assert len(trials) == 2
    keys = s3.keys_under("one/s3run")
    checkpoints = _checkpoints(s3, "one/s3run")
    assert sorted(checkpoints) == trials, keys  # every trial's checkpoint is in the bucket
    assert all({"state.pt", "state.json"} <= files for files in checkpoints.values()), checkpoints
    for name in ("recipe.yaml", "space.yaml", "trials.jsonl", "study.db"):  # the mirrored run folder
        assert f"one/s3run/{name}" in keys, keys
    assert not (out / "tune").exists()  # nothing of Tune's on the driver's disk
    mirrored = s3.client().get_object(Bucket=s3.bucket, Key="one/s3run/trials.jsonl")["Body"].read()
    assert mirrored == (out / "trials.jsonl").read_bytes()
    weights = tmp_path / "w.safetensors"
    exported = subprocess.run(
        _command("export", str(out), "-o", str(tmp_path / "a.yaml"), "--trial", trials[0], "--weights",
                 str(weights)),
        env=_env(s3), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert weights.stat().st_size > 10_000


def _wait_for(path: Path, predicate, seconds: float = 300.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate(RunFolder(path).records()):
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting on {path}")


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and all its descendants in one sweep, as a machine that loses power would."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in reversed(tree):  # the children first: none is left to outlive its parent's death
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait(timeout=60)


def test_a_killed_driver_resumes_from_the_bucket_in_an_empty_directory(tmp_path: Path, s3, tiny) -> None:
    out = tmp_path / "first-machine" / "killed"
    driver = subprocess.Popen(
        _run(out, f"s3://{s3.bucket}/two", 2, 3, tiny, "--max-concurrent", "1"),
        env=_env(s3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:  # killed once a trial has finished and the next has checkpointed its first epoch (of three)
        _wait_for(out, lambda rs: any(r["status"] in FINISHED for r in rs)
                  and rs[-1]["status"] == "running" and rs[-1].get("epoch") == 1)  # fmt: skip
    finally:  # the whole machine at once: the driver and every Ray process under it (a worker left
        # running would go on training and checkpointing the trial after its driver died)
        _kill_tree(driver)
    before = RunFolder(out).records()
    # The bucket's copy is mirrored after each record: at most the record being written at the kill is
    # missing from it (that trial then continues from its checkpoint).
    body = s3.client().get_object(Bucket=s3.bucket, Key="two/killed/trials.jsonl")["Body"].read()
    mirrored = [json.loads(line) for line in body.decode().splitlines()]
    assert before[: len(mirrored)] == mirrored and len(before) - len(mirrored) <= 1
    done_before = {r["trial_id"] for r in mirrored if r["status"] in FINISHED}
    assert done_before
    # The driver's Ray is left behind by SIGKILL: end it by the pids the driver recorded.
    for ref in RunFolder(out).recorded_processes():
        if ref.alive():
            os.kill(ref.pid, 9)
    second = tmp_path / "second-machine"
    second.mkdir()
    resumed = subprocess.run(
        _command("resume", f"s3://{s3.bucket}/two/killed"),
        cwd=second, env=_env(s3), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = RunFolder(second / "killed").records()
    assert records[: len(mirrored)] == mirrored  # the restored records are the bucket's copy, whole
    trials = _finished_once(records)
    assert len(trials) == 2 and done_before < set(trials)
    after = records[len(mirrored) :]
    assert not {r["trial_id"] for r in after} & done_before  # no finished trial is trained again
    continued = [r for r in after if r["status"] == "running" and r.get("resumed_from")]
    assert continued, after  # the unfinished trial continued from its checkpoint in the bucket
    assert sorted(_checkpoints(s3, "two/killed")) == trials
