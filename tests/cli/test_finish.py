"""Small finishing items of the CLI on the checked-in quickstart run: the knee printed by `pareto`, labelled
points in front.html, `[dashboard]` kept in help, no Markdown in LaTeX, one error prefix."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.results.collect import collect, render
from normsearch.results.front import choose, summarize

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "quick2"
runner = CliRunner()


def test_pareto_prints_the_knee_that_export_writes() -> None:
    result = runner.invoke(app, ["pareto", str(FIXTURE)])
    assert result.exit_code == 0, result.output
    knee = choose(summarize(FIXTURE).front, "knee")
    line = next(x for x in result.stdout.splitlines() if x.startswith("knee:"))
    assert line.startswith(f"knee: {knee.trial_id} norm=ibn_a") and "source_val_acc" in line


def test_front_html_points_are_labelled_with_trial_and_config(tmp_path: Path) -> None:
    out = tmp_path / "front.html"
    assert runner.invoke(app, ["pareto", str(FIXTURE), "-o", str(out)]).exit_code == 0
    traces = re.findall(r'"hovertext":(\[[^\]]*\])', out.read_text())
    hovers = [h for t in traces for h in json.loads(t)]
    assert sorted(hovers) == ["t000 norm=ibn_a ratio=0.5", "t001 norm=ibn_a ratio=0.25"]
    assert '"mode":"lines+markers+text"' in out.read_text() and '"text":["t000"]' in out.read_text()


def test_help_keeps_the_dashboard_extra() -> None:
    result = runner.invoke(app, ["dashboard", "--help"], env={"COLUMNS": "200"})
    assert "pip install 'normsearch[dashboard]'" in result.stdout


def test_latex_caption_has_no_markdown_backticks() -> None:
    latex = render(collect([FIXTURE]), "latex")
    assert "`" not in latex and r"\texttt{normsearch confirm}" in latex


def test_every_error_begins_with_one_prefix(tmp_path: Path) -> None:
    for argv in (["show", str(tmp_path)], ["export", str(FIXTURE), "--pick", "best", "-o", "x"], ["nosuch"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        assert "Error" not in result.output
