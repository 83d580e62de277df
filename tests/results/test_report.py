"""`normsearch report` and the front plots: a Markdown report with its PNGs, an HTML report (and the
`pareto` HTML) that draws its plots in a real headless Chromium with the network off, and PNG titles that
stay inside the figure."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.results.figures import front_png
from normsearch.results.front import summarize
from normsearch.results.report import gather, hypervolume_curve
from normsearch.results.tables import header
from tests.results.browser import visit_offline

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "quick2"
runner = CliRunner()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A copy of the fixture run (opening its study may write to the SQLite file)."""
    shutil.copytree(FIXTURE, tmp_path / "quick2")
    return tmp_path / "quick2"


def non_blank(png: bytes) -> bool:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colors = image.getcolors(1 << 20) or []
    white = sum(n for n, c in colors if min(c) > 245)
    return len(colors) > 20 and white < 0.98 * image.width * image.height


def test_markdown_report_holds_every_section_and_its_pngs(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.md"
    result = runner.invoke(app, ["report", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for heading in (
        "## Recipe",
        "## Search space",
        "## Trials",
        "## Pareto front",
        "### Hypervolume over trials",
        "## Parameter importance",
        "## Chosen architecture",
        "## Confirmation",
        "## DomainBed table",
        "## Selection",
    ):
        assert heading in text, heading
    assert "PED-ANOVA over 2 complete study trials" in text and "| ratio |" in text
    assert "| layer1.0.bn1 | 16 | ibn:ratio=0.5 |" in text  # the knee pick t000's slot table
    assert "Test accuracies were measured once, after the last epoch" in text
    for name in ("front", "hypervolume", "importance", "confirmed"):
        png = out.parent / "report_files" / f"{name}.png"
        assert f"(report_files/{name}.png)" in text and non_blank(png.read_bytes()), name


def test_hypervolume_over_trials_grows_to_the_fronts(run: Path) -> None:
    summary = summarize(run)
    curve = hypervolume_curve(summary)
    assert [t for t, _ in curve] == ["t000", "t001"]
    values = [v for _, v in curve]
    assert values == sorted(values) and values[-1] == pytest.approx(summary.front.hypervolume)
    data = gather(run)
    assert set(data.importances) == {"source_val_acc", "target_select_acc"}
    assert data.confirmed_front is not None and data.confirmed_front.ids == ["t000", "t001"]


def test_html_report_and_front_draw_offline_in_a_real_browser(run: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    front = tmp_path / "front.html"
    assert runner.invoke(app, ["report", str(run), "-o", str(report)]).exit_code == 0
    assert runner.invoke(app, ["pareto", str(run), "-o", str(front)]).exit_code == 0
    page = report.read_text()
    assert "<script src=" not in page and "cdn.plot.ly" not in page.split("</script>", 1)[1]
    visit = visit_offline(report)
    assert visit.remote_requests == [] and visit.errors == []
    assert visit.plots == visit.drawn == 4 and visit.points >= 2 + 2 + 2 + 2  # front, hv, bars, confirmed
    assert non_blank(visit.screenshot)
    visit = visit_offline(front)
    assert visit.remote_requests == [] and visit.errors == [] and visit.plots == visit.drawn == 1
    assert visit.points == 2 and non_blank(visit.screenshot)


def test_png_title_and_labels_stay_inside_the_figure(run: Path) -> None:
    summary = summarize(run)
    fig = front_png(summary.front, header(summary.recipe) + " and a long tail " * 4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    ax = fig.axes[0]
    for artist in (ax.title, ax.xaxis.label, ax.yaxis.label):
        extent = artist.get_window_extent(renderer)
        assert extent.x0 >= box.x0 and extent.x1 <= box.x1 and extent.y0 >= box.y0 and extent.y1 <= box.y1
    assert ax.title.get_text().count("\n") >= 2  # wrapped, not cut


def test_show_and_pareto_formats_and_report_suffix(run: Path, tmp_path: Path) -> None:
    shown = runner.invoke(app, ["show", str(run), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert [r["trial"] for r in document["rows"]] == ["t000", "t001"] and "held-out" in document["selection"]
    csv = runner.invoke(app, ["pareto", str(run), "--format", "csv"])
    assert (
        csv.exit_code == 0
        and csv.stdout.splitlines()[0] == "trial,config,source_val_acc,target_select_acc,seen"
    )
    md = runner.invoke(app, ["show", str(run), "--format", "markdown", "--sort", "source"])
    assert md.exit_code == 0 and "| t000 | norm=ibn_a ratio=0.5 | 25.0 | 16.1 |" in md.stdout
    assert "| 2 | complete (not converged) | ★ |" in md.stdout  # the rich table's columns, in its order
    bad = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "report.pdf")])
    assert bad.exit_code == 2 and "the report is .html or .md" in bad.output
    bad = runner.invoke(app, ["pareto", str(run), "-o", str(tmp_path / "front.svg")])
    assert bad.exit_code == 2 and "the front plot is .png or .html" in bad.output
    assert runner.invoke(app, ["show", "-h"]).exit_code == 0
