"""Pick rules and table formats by selection rule, on hand-made run folders (the checked-in quickstart's
recipe turned into a rotated training-domain run, with records whose answers are derived by hand)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.errors import NormsearchError
from normsearch.results.front import choose, choose_for, pick_rules, summarize

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "quick2"
SOURCES = ["plain", "texture", "pastel"]
runner = CliRunner()

# (id, ratio, source val, worst source, held-out test per domain, a unit not converged)
TRIALS = [
    ("t000", 0.25, 90.0, 80.0, {"plain": 50.0, "texture": 60.0, "pastel": 70.0}, False),  # avg 60, worst 50
    ("t001", 0.5, 80.0, 78.0, {"plain": 58.0, "texture": 59.0, "pastel": 60.0}, True),  # avg 59, worst 58
    ("t002", 0.75, 70.0, 85.0, {"plain": 40.0, "texture": 90.0, "pastel": 80.0}, False),  # avg 70, worst 40
]


def _record(tid: str, ratio: float, source: float, worst: float, test: dict, stuck: bool) -> dict:
    ibn = {"variant": "a", "ratio": ratio}
    arch = {"backbone": {"preset": "resnet-mini"}, "norm": {"default": "bn", "ibn": ibn}}
    units = {
        d: {"status": "complete", "metrics": {"converged": not (stuck and d == "pastel")}} for d in SOURCES
    }
    return {
        "trial_id": tid,
        "status": "complete",
        "final": True,
        "config": {"norm": "ibn_a", "ratio": ratio},
        "arch": arch,
        "seed": 0,
        "epoch": 2,
        "extra": {"units": units},
        "metrics": {"source_val_acc": source, "worst_source_val_acc": worst, "params": 1000.0},
        "test": {**test, "avg": sum(test.values()) / 3},
    }


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"].update(source=SOURCES, select=[], test=[], selection="training_domain", rotate=True)
    recipe["search"]["objectives"] = {"source_val_acc": "max", "worst_source_val_acc": "max"}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (run / "trials.jsonl").write_text("".join(json.dumps(_record(*t)) + "\n" for t in TRIALS))
    return run


def test_pick_rules_follow_the_selection_rule() -> None:
    assert pick_rules({"source_val_acc": "max", "target_select_acc": "max"}, False) == (
        "knee", "max-source", "max-target",
    )  # fmt: skip
    assert pick_rules({"source_val_acc": "max", "worst_source_val_acc": "max"}, True) == (
        "knee", "max-source", "max-heldout-avg", "max-worst-domain",
    )  # fmt: skip


def test_rotated_training_domain_picks_by_held_out_average_and_worst_domain(rotated: Path) -> None:
    summary = summarize(rotated)
    assert choose_for(summary, "max-heldout-avg").trial_id == "t002"  # avg 70 > 60 > 59
    assert choose_for(summary, "max-worst-domain").trial_id == "t001"  # worst 58 > 50 > 40
    assert choose_for(summary, "max-source").trial_id == "t000"
    with pytest.raises(
        NormsearchError, match=r"--pick max-target: not available.*allowed: knee, max-source,"
    ):
        choose_for(summary, "max-target")
    with pytest.raises(NormsearchError, match=r"allowed: knee, max-source$"):
        choose(summary.front, "max-heldout-avg")  # not rotated: no held-out domains to read


def test_export_cli_lists_the_valid_picks_and_uses_the_run_objectives(rotated: Path, tmp_path: Path) -> None:
    out = tmp_path / "pick.yaml"
    result = runner.invoke(app, ["export", str(rotated), "--pick", "max-target", "-o", str(out)])
    allowed = "allowed: knee, max-source, max-heldout-avg, max-worst-domain"
    assert result.exit_code == 2 and allowed in result.output
    result = runner.invoke(app, ["export", str(rotated), "--pick", "max-worst-domain", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "trial t001" in result.output and "worst_source_val_acc 78.0" in result.output
    assert yaml.safe_load(out.read_text())["provenance"]["pick"] == "max-worst-domain"


def test_show_formats_have_the_run_objectives_and_the_not_converged_flag(rotated: Path) -> None:
    result = runner.invoke(app, ["show", str(rotated), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    head = rows[0]
    assert "target_select_acc" not in head and "worst_source_val_acc" in head and "source_val_acc" in head
    status = {r[0]: r[head.index("status")] for r in rows[1:]}
    assert status == {"t000": "complete", "t001": "complete (not converged)", "t002": "complete"}
    markdown = runner.invoke(app, ["show", str(rotated), "--format", "markdown"]).stdout
    assert "worst_source_val_acc" in markdown and "target_select_acc" not in markdown
    table = runner.invoke(app, ["show", str(rotated)], env={"COLUMNS": "250"}).stdout
    assert "not converged" in table and "worst source" in table
