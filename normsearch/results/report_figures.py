"""The report's figures: plotly figures for the HTML report, PNGs for the Markdown one (results/report.py).

`ReportData`, what a report shows, lives here with the figures drawn from it, so that the two modules import
one way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from normsearch.results.confirmed import Confirmed, ConfirmedFront
from normsearch.results.figures import front_figure, plot_confirmed, plot_front, pyplot, save_png
from normsearch.results.front import RunSummary


@dataclass
class ReportData:
    """What a report shows, gathered once for both formats."""

    summary: RunSummary
    title: str
    hypervolume: list[tuple[str, float]]
    importances: dict[str, dict[str, float]]
    importance_note: str
    chosen: Any  # the knee pick (a TrialRecord), or None
    slots: list[tuple[str, int, str]]
    confirmed: dict[str, Confirmed] = field(default_factory=dict)
    confirmed_front: ConfirmedFront | None = None


def plotly_figures(data: ReportData) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if len(data.summary.front.objectives) >= 2 and data.summary.front.points:
        figures["front"] = front_figure(data.summary.front, data.title)
    if data.hypervolume:
        fig = go.Figure(
            go.Scatter(
                x=[t for t, _ in data.hypervolume], y=[v for _, v in data.hypervolume], mode="lines+markers"
            )
        )
        fig.update_layout(title="hypervolume of the front after each trial", xaxis_title="trial")
        figures["hypervolume"] = fig
    if data.importances:
        fig = go.Figure()
        for name, values in data.importances.items():
            fig.add_trace(go.Bar(name=name, x=list(values), y=list(values.values())))
        fig.update_layout(title="parameter importance per objective (PED-ANOVA)", barmode="group")
        figures["importance"] = fig
    cf = data.confirmed_front
    if cf is not None and cf.ids and len(cf.objectives) >= 2:
        fig = go.Figure(
            go.Scatter(
                x=[m[0] for m in cf.means],
                y=[m[1] for m in cf.means],
                error_x={"type": "data", "array": [e[0] for e in cf.errors]},
                error_y={"type": "data", "array": [e[1] for e in cf.errors]},
                text=cf.ids,
                mode="markers+text",
                textposition="top right",
                name="confirmed mean ± s.e.",
            )
        )
        names = list(cf.objectives)
        fig.update_layout(title="front from confirmed means", xaxis_title=names[0], yaxis_title=names[1])
        figures["confirmed"] = fig
    return figures


def pngs(data: ReportData, folder: Path) -> dict[str, Path]:
    """The report's figures as PNGs in `folder` (for Markdown)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    if len(data.summary.front.objectives) >= 2 and data.summary.front.points:
        out["front"] = folder / "front.png"
        plot_front(data.summary.front, out["front"], data.title, ".png")
    plt = pyplot()
    if data.hypervolume:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
        ax.plot([t for t, _ in data.hypervolume], [v for _, v in data.hypervolume], "o-")
        ax.set_xlabel("trial")
        ax.set_ylabel("hypervolume")
        ax.set_title("hypervolume of the front after each trial", fontsize=9)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        out["hypervolume"] = folder / "hypervolume.png"
        save_png(fig, out["hypervolume"])
    if data.importances:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
        params = sorted({p for v in data.importances.values() for p in v})
        width = 0.8 / len(data.importances)
        for k, (name, values) in enumerate(data.importances.items()):
            ax.bar(
                [i + k * width for i in range(len(params))],
                [values.get(p, 0.0) for p in params],
                width,
                label=name,
            )
        ax.set_xticks([i + width * (len(data.importances) - 1) / 2 for i in range(len(params))], params)
        ax.set_ylabel("importance")
        ax.set_title("parameter importance per objective (PED-ANOVA)", fontsize=9)
        ax.legend(fontsize=7)
        out["importance"] = folder / "importance.png"
        save_png(fig, out["importance"])
    if (
        data.confirmed_front is not None
        and data.confirmed_front.ids
        and len(data.confirmed_front.objectives) >= 2
    ):
        out["confirmed"] = folder / "confirmed.png"
        plot_confirmed(
            data.confirmed_front,
            data.summary.front,
            out["confirmed"],
            "front from confirmed means (± s.e.); hollow: the search's one seed",
        )
    return out
