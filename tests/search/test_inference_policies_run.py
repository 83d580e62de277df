"""`normsearch run` with the shipped inference_stats recipe at a tiny budget: one trained network per trial,
evaluated under every policy of the space; `show` lists one labelled row per (trial, policy); an export of a
(trial, policy) pair rebuilds the network and measures exactly the recorded numbers under that policy."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.metrics import POLICIES
from normsearch.recipe import load_recipe
from normsearch.results.policies import evaluate_export
from normsearch.run.folder import RunFolder

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "inference_stats.yaml"
SMALLER = {"train.epochs": 1, "data.n_train": 200, "data.n_val": 40, "data.n_test": 40}
EXPECTED = ["running", "batch", "adabn", "mix:alpha=0.5", "mix:alpha=0.9"]


@pytest.mark.slow
def test_inference_stats_run_show_and_export_per_policy(tmp_path: Path, ray_local, tiny: Tiny) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    flags = tiny.but(SMALLER).flags()
    result = runner.invoke(app, ["run", str(RECIPE), "--output", str(out), "--num-samples", "1", *flags])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (trial,) = RunFolder.open(out).trials()
    assert trial.complete and trial.arch["norm"]["inference"] == "running"
    # One trained network measured under five policies: its own (running) is the record's numbers.
    assert list(trial.extra[POLICIES]) == EXPECTED[1:]
    recorded = {"running": trial.test, **{p: v["test"] for p, v in trial.extra[POLICIES].items()}}

    shown = runner.invoke(app, ["show", str(out), "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    rows = list(csv.DictReader(io.StringIO(shown.output)))
    assert [r["trial"] for r in rows] == [trial.trial_id] * 5
    labels = {r["policy"] for r in rows}
    assert labels == {
        "running",
        "batch (TTA: test images)",
        "adabn (TTA: test images)",
        "mix:alpha=0.5 (TTA: test images)",
        "mix:alpha=0.9 (TTA: test images)",
    }
    table = runner.invoke(app, ["show", str(out)])
    assert "use unlabelled test-domain images (test-time adaptation, not plain DG)" in " ".join(
        table.output.split()
    )

    recipe = load_recipe(str(RECIPE), overrides=tiny.but(SMALLER).overrides())[0]
    for policy in ("running", "adabn", "mix:alpha=0.9"):
        document, weights = tmp_path / f"{policy}.yaml", tmp_path / f"{policy}.pt"
        args = ["export", str(out), "--trial", trial.trial_id, "--policy", policy, "-o", str(document)]
        exported = runner.invoke(app, [*args, "--weights", str(weights), "--test"])
        assert exported.exit_code == 0, exported.output + repr(exported.exception)
        assert f"rebuilt from {document}" in " ".join(exported.output.split())
        assert evaluate_export(recipe, document, weights) == recorded[policy]
    args = ["export", str(out), "--trial", trial.trial_id, "--policy", "mix:alpha=0.2", "-o", str(document)]
    wrong = runner.invoke(app, args)
    assert wrong.exit_code == 2 and "was not evaluated under it" in wrong.output
