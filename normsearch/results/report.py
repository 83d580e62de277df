"""`normsearch report`: one self-contained report of a run, as Markdown (with PNGs beside it) or HTML.

The report holds the selection statement, the recipe and space, the trials table, the Pareto front (PNG in
Markdown, interactive in HTML), the hypervolume over trials, per-objective parameter importance, the chosen
architecture's slot table, the DomainBed table and the confirmation results where there are some. The HTML
works offline: plotly.js is embedded once in the page, and nothing in it asks the network for anything
(no CDN, no MathJax, no fonts, no images by URL).

Everything comes from the records (a pure pass), except parameter importance, which reads the run's study
file on disk (`param_importances`, the one function that does).
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import plotly.offline
import yaml

from normsearch.arch import ArchConfig
from normsearch.errors import NormsearchError
from normsearch.results.collect import _cells, _header_cells, _notes, collect, render_markdown
from normsearch.results.confirmed import (
    confirmation_rows,
    confirmations,
    confirmed_front,
)
from normsearch.results.figures import wrapped_title
from normsearch.results.front import RunSummary, choose, summarize
from normsearch.results.pareto import hypervolume_prefixes
from normsearch.results.report_figures import ReportData, plotly_figures
from normsearch.results.report_figures import pngs as write_pngs
from normsearch.results.tables import arch_summary, front_rows, header, trials_rows
from normsearch.run.files import atomic_write_text
from normsearch.run.records import UNIT_SEPARATOR
from normsearch.run.study import load_study

KINDS = (".html", ".md")


def hypervolume_curve(summary: RunSummary) -> list[tuple[str, float]]:
    """(trial, hypervolume of the front of the complete trials up to it) in study order, against the
    run's final reference point, so the curve is comparable from trial to trial (2 objectives)."""
    front = summary.front
    if front.reference is None:
        return []
    objectives = front.objectives
    directions = list(objectives.values())
    done = [
        t
        for t in summary.candidates
        if t.complete and all(m in t.metrics for m in objectives) and UNIT_SEPARATOR not in t.trial_id
    ]
    done.sort(key=lambda t: int(t.trial_id.lstrip("t") or 0) if t.trial_id.lstrip("t").isdigit() else 0)
    points = [tuple(float(t.metrics[m]) for m in objectives) for t in done]
    areas = hypervolume_prefixes(points, front.reference, directions)  # one pass, not one sort per trial
    return [(t.trial_id, area) for t, area in zip(done, areas, strict=True)]


def param_importances(summary: RunSummary) -> tuple[dict[str, dict[str, float]], str]:
    """Per objective, Optuna's parameter importance (PED-ANOVA, which needs no scikit-learn) with an
    explicit `target` for that objective (negated for a maximised one: PED-ANOVA takes lower as better).
    Reads the study file on disk, never a live study. Returns the importances and a note (why some are
    missing, or how they were computed)."""
    folder, recipe = summary.folder, summary.recipe
    if not folder.has_study():
        return {}, f"no study in {folder.path.name} (study.db is missing)"
    # deferred: optuna loads only when the run has a study to read
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        study = load_study(folder, recipe.name)
    except (KeyError, ValueError) as error:
        return {}, f"the study {recipe.name!r} cannot be read ({error})"
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"{len(complete)} complete study trial(s): importance needs at least 2"
    names = study.metric_names or list(recipe.search.objectives)
    out: dict[str, dict[str, float]] = {}
    failed = []
    for index, name in enumerate(names):
        sign = -1.0 if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = get_param_importances(
                    study,
                    target=lambda t, i=index, s=sign: s * t.values[i],
                    evaluator=PedAnovaImportanceEvaluator(),
                )
        except (ValueError, RuntimeError) as error:
            failed.append(f"{name}: {str(error).splitlines()[0]}")
    note = f"PED-ANOVA over {len(complete)} complete study trials (repeats count as their twin)"
    return out, "; ".join([note, *failed])


def gather(run_dir: str | Path) -> ReportData:
    """Everything the report shows."""
    summary = summarize(run_dir)
    importances, note = param_importances(summary)
    chosen = None
    slots: list[tuple[str, int, str]] = []
    if summary.front.points:
        try:
            chosen = choose(summary.front, "knee")
        except NormsearchError:
            chosen = None
    if chosen is not None and chosen.arch is not None:
        slots = ArchConfig.from_dict(chosen.arch).resolve().rows()
    confirmed = confirmations(summary)
    data = ReportData(
        summary,
        header(summary.recipe, summary.space),
        hypervolume_curve(summary),
        importances,
        note,
        chosen,
        slots,
    )
    if confirmed:
        data.confirmed = confirmed
        data.confirmed_front = confirmed_front(summary, confirmed)
    return data


# --- sections ---------------------------------------------------------------------------------------------
def _per_policy(s: RunSummary) -> str:
    """How the trials table reads when networks were evaluated under several test-time statistics."""
    rows = len(s.rows)
    return f", {rows} rows: one per (trial, test-time statistics policy)" if rows > len(s.candidates) else ""


def _sections(data: ReportData) -> list[tuple[str, str, list[str], list[list[Any]]]]:
    """(heading, text, table header, table rows) for every tabular section, in order."""
    s = data.summary
    sections: list[tuple[str, str, list[str], list[list[Any]]]] = []
    sections.append(
        (
            "Search space",
            s.space.description or s.space.name,
            ["parameter", "values", "active when"],
            [list(r) for r in s.space.summary()],
        )
    )
    th, tr = trials_rows(s)
    trials = f"{len(s.candidates)} searched configuration(s){_per_policy(s)}; ★ = on the Pareto front"
    sections.append(("Trials", trials, th, tr))
    fh, fr = front_rows(s.front)
    hv = (
        f"hypervolume {s.front.hypervolume:.1f} against reference {s.front.reference}"
        if s.front.hypervolume is not None
        else ""
    )
    sections.append(
        ("Pareto front", f"{len(s.front.members)} of {len(s.front.points)} configurations. {hv}", fh, fr)
    )
    if data.importances or data.importance_note:
        params = sorted({p for v in data.importances.values() for p in v})
        rows = [[p, *(data.importances[n].get(p) for n in data.importances)] for p in params]
        sections.append(
            ("Parameter importance", data.importance_note, ["parameter", *data.importances], rows)
        )
    if data.chosen is not None:
        text = (
            f"{data.chosen.trial_id} ({arch_summary(data.chosen.arch, data.chosen.config)}), chosen by the "
            "knee rule over the front (`normsearch export --pick knee`)"
        )
        sections.append(
            ("Chosen architecture", text, ["slot", "channels", "normalizer"], [list(r) for r in data.slots])
        )
    if data.confirmed:
        rows = [
            [t, m, v.text(), v.n, "" if search is None else f"{search:.1f}"]
            for t, m, v, search in confirmation_rows(s, data.confirmed)
        ]
        notes = data.confirmed_front.notes if data.confirmed_front else []
        text = "mean ± standard error over new model seeds (the search's own seed left out); " + (
            "; ".join(notes) or "no configuration changed its place on the front"
        )
        sections.append(
            ("Confirmation", text, ["trial", "measure", "confirmed", "seeds", "search (1 seed)"], rows)
        )
    return sections


def _selection(data: ReportData) -> str:
    recipe = data.summary.recipe
    oracle = recipe.data.selection == "oracle"
    return (
        f"Model selection: {recipe.data.selection}. {recipe.data.describe()}. "
        + ("These are ORACLE numbers: the test domain chose the model. " if oracle else "")
        + "Test accuracies were measured once, after the last epoch; the search never read them."
    )


def _recipe_yaml(data: ReportData) -> str:
    recipe = data.summary.recipe
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False).rstrip()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return "" if value is None else str(value)


def render_markdown_report(data: ReportData, path: Path) -> list[Path]:
    """The Markdown report at `path`, its PNGs in `<stem>_files/` beside it. Returns every file written."""
    assets = path.parent / f"{path.stem}_files"

    pngs = write_pngs(data, assets)
    s = data.summary
    lines = [f"# normsearch report: {s.recipe.name}", "", f"**{_selection(data)}**", ""]
    lines += [
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(s.recipe.model_dump(mode="json", exclude_none=True), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    figures = {"Pareto front": "front", "Parameter importance": "importance", "Confirmation": "confirmed"}
    for heading, text, head, rows in _sections(data):
        lines += [f"## {heading}", "", text, ""]
        if head and rows:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "|".join("---" for _ in head) + "|")
            lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in r) + " |" for r in rows]
            lines.append("")
        key = figures.get(heading)
        if key in pngs:
            lines += [f"![{heading}]({assets.name}/{pngs[key].name})", ""]
        if heading == "Pareto front" and "hypervolume" in pngs:
            lines += [
                "### Hypervolume over trials",
                "",
                f"![hypervolume]({assets.name}/{pngs['hypervolume'].name})",
                "",
            ]
    lines += ["## DomainBed table", "", render_markdown(collect([s.folder.path])).replace("### ", "### ")]
    lines += ["## Selection", "", _selection(data), ""]
    atomic_write_text(path, "\n".join(lines))
    return [path, *pngs.values()]


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3} td.n{text-align:right}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
.selection{background:#fff8e1;border-left:4px solid #f0b400;padding:.6em 1em}
.plot{width:100%;height:480px}
"""


def _html_table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["<table><thead><tr>", *(f"<th>{html.escape(str(h))}</th>" for h in head), "</tr></thead><tbody>"]
    for r in rows:
        cells = "".join(
            f'<td class="n">{html.escape(_fmt(v))}</td>'
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{html.escape(_fmt(v))}</td>"
            for v in r
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html_report(data: ReportData, path: Path) -> list[Path]:
    """The self-contained HTML report at `path` (plotly.js embedded once; no network request)."""
    figures = plotly_figures(data)
    s = data.summary

    def figure(key: str) -> str:
        if key not in figures:
            return ""
        return figures[key].to_html(
            full_html=False,
            include_plotlyjs=False,
            include_mathjax=False,
            div_id=f"plot-{key}",
            default_height="480px",
            config={"displaylogo": False, "responsive": True},
        )

    body = [
        f"<h1>normsearch report: {html.escape(s.recipe.name)}</h1>",
        f'<p class="selection">{html.escape(_selection(data))}</p>',
    ]
    body += [
        "<h2>Recipe</h2>",
        f"<pre>{html.escape(_recipe_yaml(data))}</pre>",
    ]
    placed = {
        "Pareto front": ["front", "hypervolume"],
        "Parameter importance": ["importance"],
        "Confirmation": ["confirmed"],
    }
    for heading, text, head, rows in _sections(data):
        body += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(text)}</p>"]
        if head and rows:
            body.append(_html_table(head, rows))
        body += [figure(k) for k in placed.get(heading, [])]
    tables = collect([s.folder.path])

    body.append("<h2>DomainBed table</h2>")
    for t in tables:
        body += [
            f"<p><b>{html.escape(t.title)}</b><br>{html.escape(t.selection)}</p>",
            _html_table(_header_cells(t), [_cells(t, r) for r in t.rows]),
        ]
        body += [f"<p>{html.escape(n)}</p>" for n in _notes(t)]
    body += ["<h2>Selection</h2>", f"<p>{html.escape(_selection(data))}</p>"]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>normsearch report: {html.escape(s.recipe.name)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head><body>'
        + "\n".join(body)
        + "</body></html>\n"
    )
    atomic_write_text(path, page)
    return [path]


def write_report(run_dir: str | Path, out: str | Path) -> list[Path]:
    """Write the report of `run_dir` to `out` (.html or .md); returns the files written."""
    path = Path(out)
    if path.suffix not in KINDS:
        raise NormsearchError(f"-o {out}: the report is .html or .md (got {path.suffix or 'no suffix'})")
    data = gather(run_dir)
    if path.suffix == ".html":
        return render_html_report(data, path)
    return render_markdown_report(data, path)


__all__ = ["ReportData", "gather", "hypervolume_curve", "param_importances", "wrapped_title", "write_report"]
