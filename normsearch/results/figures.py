"""The front as figures: a PNG (matplotlib) and a self-contained HTML scatter (plotly) of the first two
objectives, and the confirmed front with its error bars. Rendering only; the numbers come from
`normsearch.results.front` and `normsearch.results.collect`; tables are `normsearch.results.tables`.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from normsearch.results.front import Front
from normsearch.results.tables import arch_summary
from normsearch.run.files import atomic_write_bytes, atomic_write_text


def wrapped_title(title: str, width: int = 70) -> str:
    """A long selection statement wrapped into lines that fit inside a 6-inch figure."""
    return "\n".join(textwrap.wrap(title, width)) or title


def save_png(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt  # deferred, as in `pyplot` below

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display on a cluster node or in CI)."""
    # deferred: the Agg backend is chosen when a figure is drawn, not when this module is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def front_figure(front: Front, title: str) -> Any:
    """The plotly figure of the front (first two objectives): dominated points grey, the front in red,
    each point labelled with its trial id, and with its id and configuration on hover."""

    names = list(front.objectives)
    members = set(front.members)
    # Each point carries its trial id as a visible label, and id + config on hover.
    ids = [t[0].trial_id for t in front.trials]
    labels = [t[0].trial_id + " " + arch_summary(t[0].arch, t[0].config) for t in front.trials]
    fig = go.Figure()
    for on_front, name in ((False, "dominated"), (True, "Pareto front")):
        idx = sorted(
            (i for i in range(len(front.points)) if (i in members) == on_front), key=lambda i: front.points[i]
        )
        fig.add_trace(
            go.Scatter(
                x=[front.points[i][0] for i in idx],
                y=[front.points[i][1] for i in idx],
                text=[ids[i] for i in idx],
                hovertext=[labels[i] for i in idx],
                textposition="top center",
                mode="lines+markers+text" if on_front else "markers+text",
                name=name,
                marker={"color": "#d62728" if on_front else "#999999", "size": 9},
            )
        )
    fig.update_layout(
        title={"text": wrapped_title(title, 110).replace("\n", "<br>"), "font": {"size": 12}},
        xaxis_title=names[0],
        yaxis_title=names[1],
        margin={"t": 90},
    )
    return fig


def plot_front(front: Front, path: Path, title: str, kind: str | None = None) -> None:
    """PNG (matplotlib) or HTML (plotly, self-contained: plotly.js embedded, no network request) scatter of
    the first two objectives, front highlighted; `kind` (".png" / ".html") overrides the file's suffix.
    Written atomically; a bad place is one line. The PNG's title wraps, so it stays inside the figure."""
    if (kind or path.suffix) == ".html":
        atomic_write_text(path, front_figure(front, title).to_html(include_plotlyjs=True, full_html=True))
        return
    save_png(front_png(front, title), path)


def front_png(front: Front, title: str) -> Any:
    """The matplotlib figure of the front (PNG): title wrapped and labels kept inside the figure."""
    names = list(front.objectives)
    members = set(front.members)
    xs = [p[0] for p in front.points]
    ys = [p[1] for p in front.points]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.8), dpi=120)
    ax.scatter(
        [xs[i] for i in range(len(xs)) if i not in members],
        [ys[i] for i in range(len(xs)) if i not in members],
        c="0.6",
        label="dominated",
    )
    front_pts = sorted((xs[i], ys[i]) for i in members)
    ax.plot([p[0] for p in front_pts], [p[1] for p in front_pts], "o-", c="C3", label="Pareto front")
    for i, group in enumerate(front.trials):
        ax.annotate(group[0].trial_id, (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(wrapped_title(title), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confirmed(confirmed: Any, search: Front, path: Path, title: str) -> None:
    """PNG of the front re-drawn from confirmed means (results/collect.py `ConfirmedFront`): each confirmed
    configuration at its mean with ± s.e. error bars, its search point as a hollow marker joined to it, the
    confirmed front in red."""
    names = list(confirmed.objectives)
    search_points = {t.trial_id: search.points[i] for i, group in enumerate(search.trials) for t in group}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.8), dpi=120)
    members = set(confirmed.members)
    for i, key in enumerate(confirmed.ids):
        (x, y), (ex, ey) = confirmed.means[i][:2], confirmed.errors[i][:2]
        color = "C3" if i in members else "0.45"
        ax.errorbar(x, y, xerr=ex, yerr=ey, fmt="o", color=color, capsize=3)
        ax.annotate(key, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if key in search_points:
            sx, sy = search_points[key][:2]
            ax.plot([sx], [sy], "o", mfc="none", color=color, ms=7)
            ax.plot([sx, x], [sy, y], ":", color=color, lw=0.8)
    front_pts = sorted(confirmed.means[i][:2] for i in members)
    ax.plot([p[0] for p in front_pts], [p[1] for p in front_pts], "-", c="C3", lw=1, label="confirmed front")
    ax.plot([], [], "o", mfc="none", color="0.45", label="search (one seed)")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(wrapped_title(title), fontsize=8)
    ax.legend(fontsize=8)
    save_png(fig, path)
