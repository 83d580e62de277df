"""Tables and plots of a run: the trials table, the front, a terminal scatter, PNG/HTML files.

Rendering only; the numbers come from `normsearch.results.front`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from normsearch.recipe import Recipe
from normsearch.results.front import Front, RunSummary

STATUS_STYLE = {
    "complete": "green",
    "pruned": "yellow",
    "interrupted": "yellow",
    "failed": "red",
    "running": "cyan",
    "repeat": "dim",
}


def arch_summary(arch: dict[str, Any] | None, config: dict[str, Any]) -> str:
    """A compact one-line description of a trial: its sampled values."""
    if config:
        return " ".join(f"{k}={_fmt(v)}" for k, v in config.items())
    return "(base model)" if arch else "-"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def header(recipe: Recipe) -> str:
    """The line that names how models were selected; "ORACLE" when test domains were selected on."""
    return f"{recipe.name}: {recipe.data.describe()}"


def trials_table(
    summary: RunSummary, sort: str = "target", top: int | None = None, show_all: bool = False
) -> Table:
    """One row per trained trial: id, config, source val, select-target mean, per-select-domain, epochs,
    status, front, and why it failed, was stopped or is unfinished. `show_all` adds the repeats (sampled
    configurations that were not trained again)."""
    recipe, front = summary.recipe, summary.front
    members = front.member_ids()
    rows = [t for t in summary.candidates if show_all or t.status != "repeat"]
    key = "target_select_acc" if sort == "target" else "source_val_acc"
    rows.sort(key=lambda t: (t.complete, float(t.metrics.get(key, -1.0))), reverse=True)
    if top is not None:
        rows = rows[:top]
    oracle = recipe.data.selection == "oracle"
    table = Table(title=header(recipe), title_justify="left", show_lines=False)
    table.add_column("trial")
    table.add_column("config", overflow="fold")
    several = len(recipe.data.units()[0].sources) > 1
    selects = bool(recipe.data.units()[0].select)
    fixed = [d for d in recipe.data.select if all(d in u.select for u in recipe.data.units())]
    table.add_column("source val", justify="right")
    if several:
        table.add_column("worst source", justify="right")
    if selects:
        table.add_column("target (select)" + (" ORACLE" if oracle else ""), justify="right")
    for domain in fixed:
        table.add_column(domain, justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("status")
    table.add_column("front", justify="center")
    if any(t.reason for t in rows):
        table.add_column("reason", overflow="fold", max_width=60)
    for t in rows:
        m = t.metrics
        cells = [
            t.trial_id,
            arch_summary(t.arch, t.config),
            _pct(m.get("source_val_acc")),
            *([_pct(m.get("worst_source_val_acc"))] if several else []),
            *([_pct(m.get("target_select_acc"))] if selects else []),
            *[_pct(m.get(f"select/{d}")) for d in fixed],
            str(t.epoch or "-"),
            Text(
                t.status + (" (not converged)" if t.complete and t.metrics.get("converged") is False else ""),
                style=STATUS_STYLE.get(t.status, ""),
            ),
            "★" if t.trial_id in members else "",
        ]
        if any(r.reason for r in rows):
            cells.append(Text(t.reason or "", style=STATUS_STYLE.get(t.status, "")))
        table.add_row(*cells)
    return table


def domainbed_table(summary: RunSummary) -> Table:
    """DomainBed's layout for a rotated run: one row per complete configuration, one column per held-out
    test domain (its accuracy when held out) and their average; the selection rule in the title."""
    recipe = summary.recipe
    held = recipe.data.sources
    extra = [d for d in recipe.data.test if d not in held]
    table = Table(title=f"test accuracy per held-out domain — {header(recipe)}", title_justify="left")
    table.add_column("trial")
    table.add_column("config", overflow="fold")
    for domain in [*held, "Avg", *extra]:
        table.add_column(domain, justify="right")
    done = [t for t in summary.candidates if t.complete]
    done.sort(key=lambda t: float(t.test.get("avg", -1.0)), reverse=True)
    for t in done:
        cells = [_pct(t.test.get(d)) if d in t.test else "X" for d in held]
        table.add_row(
            t.trial_id,
            arch_summary(t.arch, t.config),
            *cells,
            _pct(t.test.get("avg")),
            *[_pct(t.test.get(d)) for d in extra],
        )
    return table


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def front_table(front: Front, recipe: Recipe) -> Table:
    """The front's points, best select-target accuracy first (else the last objective)."""
    names = list(front.objectives)
    oracle = (
        " - ORACLE selection (select domains are also test domains)"
        if recipe.data.selection == "oracle"
        else ""
    )
    table = Table(
        title=f"Pareto front ({len(front.members)} of {len(front.points)} configurations){oracle}",
        title_justify="left",
    )
    table.add_column("trial")
    table.add_column("config", overflow="fold")
    for name, direction in front.objectives.items():
        table.add_column(f"{name} ({direction})", justify="right")
    table.add_column("seen", justify="right")
    key = names.index("target_select_acc") if "target_select_acc" in names else len(names) - 1
    sign = 1 if front.objectives[names[key]] == "max" else -1
    order = sorted(front.members, key=lambda i: sign * front.points[i][key], reverse=True)
    for i in order:
        trial = front.trials[i][0]
        values = [f"{v:.1f}" if names[k] != "params" else f"{v:,.0f}" for k, v in enumerate(front.points[i])]
        table.add_row(
            trial.trial_id, arch_summary(trial.arch, trial.config), *values, str(len(front.trials[i]))
        )
    return table


def scatter(front: Front, width: int = 60, height: int = 16) -> str:
    """A terminal scatter of the first two objectives: `*` front members, `.` other configurations."""
    if len(front.objectives) < 2 or not front.points:
        return ""
    xs = [p[0] for p in front.points]
    ys = [p[1] for p in front.points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    members = set(front.members)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        col = int((x - x0) / (x1 - x0) * (width - 1)) if x1 > x0 else width // 2
        row = height - 1 - (int((y - y0) / (y1 - y0) * (height - 1)) if y1 > y0 else height // 2)
        if grid[row][col] != "*":
            grid[row][col] = "*" if i in members else "."
    names = list(front.objectives)
    lines = [f"{names[1]} {y1:.1f}"]
    lines += ["  |" + "".join(row) for row in grid]
    lines.append("  +" + "-" * width)
    lines.append(f"   {x0:.1f}{names[0]:^{max(width - 12, 1)}}{x1:.1f}")
    lines.append(f"{names[1]} {y0:.1f} at the bottom; * = front, . = dominated")
    return "\n".join(lines)


def plot_front(front: Front, path: Path, title: str, kind: str | None = None) -> None:
    """PNG (matplotlib) or HTML (plotly) scatter of the first two objectives, front highlighted; `kind`
    (".png" / ".html") overrides the file's suffix. Written atomically; a bad place is one line."""
    import io

    from normsearch.files import atomic_write_bytes, atomic_write_text

    names = list(front.objectives)
    members = set(front.members)
    xs = [p[0] for p in front.points]
    ys = [p[1] for p in front.points]
    labels = [t[0].trial_id for t in front.trials]
    if (kind or path.suffix) == ".html":
        import plotly.graph_objects as go

        fig = go.Figure()
        for on_front, name in ((False, "dominated"), (True, "Pareto front")):
            idx = [i for i in range(len(xs)) if (i in members) == on_front]
            fig.add_trace(
                go.Scatter(
                    x=[xs[i] for i in idx],
                    y=[ys[i] for i in idx],
                    text=[labels[i] for i in idx],
                    mode="markers",
                    name=name,
                )
            )
        fig.update_layout(title=title, xaxis_title=names[0], yaxis_title=names[1])
        atomic_write_text(path, fig.to_html(include_plotlyjs="cdn"))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.scatter(
        [xs[i] for i in range(len(xs)) if i not in members],
        [ys[i] for i in range(len(xs)) if i not in members],
        c="0.6",
        label="dominated",
    )
    front_pts = sorted((xs[i], ys[i]) for i in members)
    ax.plot([p[0] for p in front_pts], [p[1] for p in front_pts], "o-", c="C3", label="Pareto front")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
