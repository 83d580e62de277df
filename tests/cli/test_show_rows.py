"""`show` on a run of many trials: its rich tables stop at SHOW_ROWS rows (the best ones) and say how many
more there are; `--full` and the text formats list every row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.cli.inspect import SHOW_ROWS
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC
from normsearch.recipe import Recipe
from normsearch.run.folder import RunFolder
from normsearch.space import Space

runner = CliRunner()
SPACE = {
    "fixed": {"norm.ibn.variant": "a", "norm.ibn.stages": [1, 2]},
    "params": {"ratio": {"type": "float", "low": 0.0, "high": 1.0, "path": "norm.ibn.ratio"}},
}
TRIALS = SHOW_ROWS + 10


def _run(path: Path) -> Path:
    """A run folder with TRIALS complete trials, ratio r = k / TRIALS for trial k: source falls and target
    rises with r, so every trial is on the front and the best by target are the highest k."""
    recipe = Recipe.model_validate(
        {
            "name": "many",
            "data": {"dataset": "synthetic", "n_train": 64, "n_val": 32, "n_test": 32},
            "model": {"backbone": {"preset": "resnet-mini"}},
            "search": {"space": SPACE, "algorithm": "random", "num_samples": TRIALS},
        }
    )
    space = Space.model_validate(SPACE)
    folder = RunFolder.create(path, recipe, space)
    for k in range(TRIALS):
        r = k / TRIALS
        folder.append(
            {
                "trial_id": f"t{k:03d}",
                "status": "complete",
                "config": {"ratio": r},
                "arch": space.to_arch(recipe.model, {"ratio": r}).to_dict(),
                "seed": 0,
                "epoch": 1,
                "final": True,
                "metrics": {SOURCE_VAL_ACC: 90 - 20 * r**2, TARGET_SELECT_ACC: 40 + 30 * r - 10 * r**2},
            }
        )
    return path


def _ids(text: str) -> set[str]:
    return set(re.findall(r"\bt\d{3}\b", text))


def test_show_lists_the_best_rows_and_says_how_many_more(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    shown = runner.invoke(app, ["show", str(run)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    best = {f"t{k:03d}" for k in range(TRIALS - SHOW_ROWS, TRIALS)}
    assert _ids(shown.stdout) == best  # both tables: the best by select-target accuracy, nothing else
    assert f"the best {SHOW_ROWS} of {TRIALS} trials; --top N or --full shows more" in shown.stdout
    assert f"the first {SHOW_ROWS} of {TRIALS} front configurations" in shown.stdout
    assert f"Pareto front ({TRIALS} of {TRIALS} configurations)" in shown.stdout

    full = runner.invoke(app, ["show", str(run), "--full"], terminal_width=200)
    assert full.exit_code == 0, full.output
    assert _ids(full.stdout) == {f"t{k:03d}" for k in range(TRIALS)}
    assert "--full" not in full.stdout  # nothing left out, so no line about it

    top = runner.invoke(app, ["show", str(run), "--top", "3"], terminal_width=200)
    assert top.exit_code == 0 and f"of {TRIALS} trials" not in top.stdout
    csv = runner.invoke(app, ["show", str(run), "--format", "csv"])
    assert csv.exit_code == 0 and _ids(csv.stdout) == {f"t{k:03d}" for k in range(TRIALS)}


def test_reading_a_run_does_not_import_torchvision(tmp_path: Path) -> None:
    # `show` and `report` read records and never build a model; torchvision's import (torch._dynamo with
    # it) cost as much CPU as torch's own, so normsearch.train loads its training modules lazily.
    run = _run(tmp_path / "run")
    code = (
        "import sys; from typer.testing import CliRunner; from normsearch.cli import app; "
        f"r = CliRunner().invoke(app, ['show', {str(run)!r}]); assert r.exit_code == 0, r.output; "
        f"r = CliRunner().invoke(app, ['report', {str(run)!r}, '-o', {str(tmp_path / 'r.md')!r}]); "
        "assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in sys.modules if m.startswith('torchvision')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
