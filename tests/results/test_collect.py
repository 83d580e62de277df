"""`normsearch collect`: DomainBed tables from a checked-in run's records (golden), mean ± s.e. where
confirmed, the search's single number elsewhere, X with a reason for a missing cell."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.results.collect import FORMATS, collect, render

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "quick2"  # a real two-trial quickstart run, both confirmed twice
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
runner = CliRunner()


@pytest.mark.parametrize("fmt", FORMATS)
def test_collect_matches_the_golden_text(fmt: str) -> None:
    assert render(collect([FIXTURE]), fmt) == (GOLDEN / f"collect.{fmt}").read_text()


def test_confirmed_cells_are_the_mean_and_standard_error_of_the_confirmation_records() -> None:
    records = [json.loads(line) for line in (FIXTURE / "trials.jsonl").read_text().splitlines()]
    fog = [r["test"]["fog"] for r in records if r.get("confirm_of") == "t000" and r["status"] == "complete"]
    assert len(fog) == 2
    mean = sum(fog) / 2
    se = math.sqrt(sum((v - mean) ** 2 for v in fog) / 1 / 2)
    (table,) = collect([FIXTURE])
    row = next(r for r in table.rows if r.trial == "t000")
    cell = row.cells["fog"]
    assert cell.value is not None and cell.value.n == 2 and row.seeds == 2
    assert cell.value.mean == pytest.approx(mean) and cell.value.se == pytest.approx(se)
    assert "selected on held-out domains texture, pastel" in table.selection and "held_out" in table.title


def test_unconfirmed_rows_show_one_seed_and_missing_cells_say_why(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    lines = (run / "trials.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("confirm_of") != "t001"]
    search = json.loads(next(line for line in lines if json.loads(line)["trial_id"] == "t001"))
    failed = {**search, "trial_id": "t002", "status": "failed", "reason": "NaN loss at epoch 1", "test": {}}
    failed.pop("metrics", None)
    (run / "trials.jsonl").write_text("\n".join([*kept, json.dumps(failed)]) + "\n")
    (table,) = collect([run])
    rows = {r.trial: r for r in table.rows}
    assert rows["t001"].seeds == 1 and rows["t001"].cells["fog"].value.se is None
    assert rows["t002"].cells["fog"].text() == "X" and rows["t002"].note == "failed: NaN loss at epoch 1"
    assert [r.trial for r in table.rows][-1] == "t002"  # no numbers: last
    out = tmp_path / "table.md"
    result = runner.invoke(app, ["collect", str(run), str(FIXTURE), "--format", "markdown", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "| run | t002 | norm=ibn_a ratio=0.25 | 1 | X | X | X | X | X | X |" in text
    assert "- X in run t002: failed: NaN loss at epoch 1" in text and "| quick2 | t000 |" in text


def test_collect_cli_prints_to_stdout_and_refuses_a_non_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["collect", str(FIXTURE), "--format", "csv"])
    assert result.exit_code == 0 and result.stdout == (GOLDEN / "collect.csv").read_text()
    result = runner.invoke(app, ["collect", str(FIXTURE)])
    assert result.exit_code == 0 and "model selection: held_out" in result.stdout and "±" in result.stdout
    result = runner.invoke(app, ["collect", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output
    result = runner.invoke(app, ["collect", str(FIXTURE), "--format", "xml"])
    assert result.exit_code == 2 and "'xml' is not one of" in result.output
