"""A real finished run (two trials, one epoch, tiny data) shared by the hostile run-folder tests; each test
works on its own copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--set", "data.n_train=120", "--set", "data.n_val=30", "--set", "data.n_test=30",
    "--set", "train.epochs=1", "--set", "search.num_samples=2",
]  # fmt: skip


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-trial, one-epoch search through Ray (started here once, loopback, 2 CPUs)."""
    from normsearch.cli import app
    from normsearch.search.ray import start_ray

    start_ray(None, num_cpus=2)
    out = tmp_path_factory.mktemp("finished") / "run"
    result = CliRunner().invoke(
        app, ["run", str(ROOT / "recipes" / "quickstart.yaml"), "--output", str(out), *TINY]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run for one test to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy
