"""Tables of a run: the trials table, the front, a terminal scatter, and their plain-row formats
(csv, json, markdown). Rendering only; the numbers come from `normsearch.results.front`; figures (PNG, HTML)
are `normsearch.results.figures`.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.table import Table
from rich.text import Text

from normsearch.metrics import PARAMS, SELECT_PREFIX, SOURCE_VAL_ACC, TARGET_SELECT_ACC, WORST_SOURCE_VAL_ACC
from normsearch.norms.running import statistics_statement
from normsearch.recipe import Recipe
from normsearch.results.front import Front, RunSummary, choose
from normsearch.results.policies import POLICY_COLUMN, has_policies, policy_cell
from normsearch.results.policies import policy_cells as _policy_cells
from normsearch.run.records import TrialRecord

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


def header(recipe: Recipe, space: Any = None) -> str:
    """The line that names how models were selected ("ORACLE" when test domains were selected on) and the
    test-time statistics the numbers were measured with (the run's space's `norm.inference` policies)."""
    return f"{recipe.name}: {recipe.data.describe()}; {statistics_statement(space_policies(recipe, space))}"


def space_policies(recipe: Recipe, space: Any = None) -> list[str]:
    """Every test-time statistics policy a run's trials can have: the base model's, the space's evaluated
    `policies`, its fixed one, and each value a space parameter writes to `norm.inference` (by `path` or
    `sets`)."""
    found = [recipe.model.norm.inference]
    if space is not None:
        found += list(getattr(space, "policies", None) or [])  # evaluated on every network (space.py)
        found.append(space.fixed.get("norm.inference", found[0]))
        for param in space.params.values():
            if param.path == "norm.inference":
                found += [str(c) for c in param.choices or []]
            found += [str(v["norm.inference"]) for v in (param.sets or {}).values() if "norm.inference" in v]
    return found


def _metric_columns(recipe: Recipe, objectives: dict[str, str]) -> list[tuple[str, str]]:
    """(rich label, metric key) of the trials table's number columns, the same for every format: source
    val, worst source when several sources train, the select-target mean when a target select split
    exists, each fixed select domain, then any other objective of the run (e.g. a parameter count)."""
    units = recipe.data.units()
    oracle = " ORACLE" if recipe.data.selection == "oracle" else ""
    columns = [("source val", SOURCE_VAL_ACC)]
    if len(units[0].sources) > 1:
        columns.append(("worst source", WORST_SOURCE_VAL_ACC))
    if units[0].select:
        columns.append(("target (select)" + oracle, TARGET_SELECT_ACC))
    columns += [(d, f"{SELECT_PREFIX}{d}") for d in recipe.data.select if all(d in u.select for u in units)]
    columns += [(name, name) for name in objectives if name not in {key for _, key in columns}]
    return columns


def not_converged(trial: TrialRecord) -> bool:
    """A complete trial flagged not converged: its own flag, or (trained once per protocol unit, whose
    combined metrics keep numbers only) any unit's."""
    if not trial.complete:
        return False
    if trial.metrics.get("converged") is False:
        return True
    units = trial.extra.get("units") or {}
    return any((u.get("metrics") or {}).get("converged") is False for u in units.values())


def _status(trial: TrialRecord) -> str:
    return trial.status + (" (not converged)" if not_converged(trial) else "")


def trials_table(
    summary: RunSummary, sort: str = "target", top: int | None = None, show_all: bool = False
) -> Table:
    """One row per (trained trial, test-time statistics policy it was evaluated under): id, config, policy
    (marked when it reads test images), source val, select-target mean, per-select-domain, epochs,
    status, front, and why it failed, was stopped or is unfinished. `show_all` adds the repeats (sampled
    configurations that were not trained again)."""
    recipe, front = summary.recipe, summary.front
    members = front.member_rows()
    rows = [t for t in summary.rows if show_all or t.status != "repeat"]
    key = TARGET_SELECT_ACC if sort == "target" else SOURCE_VAL_ACC
    rows.sort(key=lambda t: (t.complete, float(t.metrics.get(key, -1.0))), reverse=True)
    if top is not None:
        rows = rows[:top]
    table = Table(title=header(recipe, summary.space), title_justify="left", show_lines=False)
    table.add_column("trial")
    table.add_column("config", overflow="fold")
    shown = has_policies(rows)
    if shown:
        table.add_column(POLICY_COLUMN, overflow="fold")
    columns = _metric_columns(recipe, front.objectives)
    for label, _ in columns:
        table.add_column(label, justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("status")
    table.add_column("front", justify="center")
    if any(t.reason for t in rows):
        table.add_column("reason", overflow="fold", max_width=60)
    for t in rows:
        cells = [
            t.trial_id,
            arch_summary(t.arch, t.config),
            *_policy_cells(t, shown),
            *[_pct(t.metrics.get(name)) for _, name in columns],
            str(t.epoch or "-"),
            Text(_status(t), style=STATUS_STYLE.get(t.status, "")),
            "★" if (t.trial_id, t.policy) in members else "",
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
    table = Table(
        title=f"test accuracy per held-out domain — {header(recipe, summary.space)}", title_justify="left"
    )
    done = [t for t in summary.rows if t.complete]
    shown = has_policies(done)
    table.add_column("trial")
    table.add_column("config", overflow="fold")
    if shown:
        table.add_column(POLICY_COLUMN, overflow="fold")
    for domain in [*held, "Avg", *extra]:
        table.add_column(domain, justify="right")
    done.sort(key=lambda t: float(t.test.get("avg", -1.0)), reverse=True)
    for t in done:
        cells = [_pct(t.test.get(d)) if d in t.test else "X" for d in held]
        table.add_row(
            t.trial_id,
            arch_summary(t.arch, t.config),
            *_policy_cells(t, shown),
            *cells,
            _pct(t.test.get("avg")),
            *[_pct(t.test.get(d)) for d in extra],
        )
    return table


def warm_start_table(record: dict[str, Any]) -> Table:
    """What the SN warm start's supernet learned: each slot's IN/LN/BN ratios (SN Fig. 5), its argmax,
    the slots `fix_above` fixed, and the configurations it queued first."""
    m = record.get("metrics", {})
    title = (
        f"SN warm start: supernet trained on {record.get('unit') or 'the sources'} for {record['epochs']} "
        f"epochs ({record['seconds']:.0f} s), source val {m.get(SOURCE_VAL_ACC, float('nan')):.1f}"
    )
    queued = "; ".join(
        f"{i + 1}. {', '.join(f'{k}={v}' for k, v in q['values'].items())} (distance {q['distance']:.2f})"
        for i, q in enumerate(record.get("queue", []))
    )
    table = Table(title=title, caption=f"queued first: {queued or 'nothing'}", caption_justify="left")
    for column in ("slot", "IN", "LN", "BN", "argmax", "fixed"):
        table.add_column(column, justify="left" if column in ("slot", "argmax", "fixed") else "right")
    fixed = record.get("fixed", {})
    for slot, (w_in, w_ln, w_bn) in record.get("ratios", {}).items():
        table.add_row(
            slot,
            f"{w_in:.2f}",
            f"{w_ln:.2f}",
            f"{w_bn:.2f}",
            record["choice"][slot],
            fixed.get(slot, ""),
        )
    return table


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def front_table(front: Front, recipe: Recipe, top: int | None = None) -> Table:
    """The front's points, best select-target accuracy first (else the last objective); the first `top`
    of them when given (the title still counts them all)."""
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
    shown = has_policies([group[0] for group in front.trials])
    if shown:
        table.add_column(POLICY_COLUMN, overflow="fold")
    for name, direction in front.objectives.items():
        table.add_column(f"{name} ({direction})", justify="right")
    table.add_column("seen", justify="right")
    key = names.index(TARGET_SELECT_ACC) if TARGET_SELECT_ACC in names else len(names) - 1
    sign = 1 if front.objectives[names[key]] == "max" else -1
    order = sorted(front.members, key=lambda i: sign * front.points[i][key], reverse=True)
    for i in order[:top] if top is not None else order:
        trial = front.trials[i][0]
        values = [f"{v:.1f}" if names[k] != PARAMS else f"{v:,.0f}" for k, v in enumerate(front.points[i])]
        table.add_row(
            trial.trial_id,
            arch_summary(trial.arch, trial.config),
            *_policy_cells(trial, shown),
            *values,
            str(len(front.trials[i])),
        )
    return table


def knee_line(front: Front) -> str:
    """The knee of the front in one line (`export --pick knee` writes this trial): id, config, objectives."""
    trial = choose(front, "knee")
    point = next(front.points[i] for i, group in enumerate(front.trials) if trial in group)
    values = ", ".join(f"{name} {v:.1f}" for name, v in zip(front.objectives, point, strict=True))
    config = arch_summary(trial.arch, trial.config)
    if has_policies([group[0] for group in front.trials]):
        config += f", test-time statistics {policy_cell(trial)}"  # no [..]: rich would read it as markup
    return f"knee: {trial.trial_id} {config} ({values})"


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


def trials_rows(summary: RunSummary) -> tuple[list[str], list[list[Any]]]:
    """The trials table as plain rows (for --format csv|json|markdown), one per (trial, policy)
    (`RunSummary.rows`): the rich table's columns, by metric name, so a format shows exactly the run's
    objectives and nothing that is always empty."""
    members = summary.front.member_rows()
    columns = _metric_columns(summary.recipe, summary.front.objectives)
    shown = has_policies(summary.rows)
    header = ["trial", "config", *(["policy"] if shown else []), *[name for _, name in columns]]
    header += ["epochs", "status", "front", "reason"]
    rows = [
        [
            t.trial_id,
            arch_summary(t.arch, t.config),
            *_policy_cells(t, shown),
            *[t.metrics.get(name) for _, name in columns],
            t.epoch,
            _status(t),
            (t.trial_id, t.policy) in members,
            t.reason or "",
        ]
        for t in summary.rows
    ]
    return header, rows


def front_rows(front: Front) -> tuple[list[str], list[list[Any]]]:
    """The front's points as plain rows: trial, config, every objective, how many trials share the point."""
    shown = has_policies([group[0] for group in front.trials])
    header = ["trial", "config", *(["policy"] if shown else []), *front.objectives, "seen"]
    rows = []
    for i in front.members:
        trial = front.trials[i][0]
        rows.append(
            [
                trial.trial_id,
                arch_summary(trial.arch, trial.config),
                *_policy_cells(trial, shown),
                *front.points[i],
                len(front.trials[i]),
            ]
        )
    return header, rows


def format_rows(header: list[str], rows: list[list[Any]], fmt: str, title: str = "") -> str:
    """Rows as csv, json (a list of objects, with the title as `selection`) or a markdown table."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "json":
        return (
            json.dumps(
                {"selection": title, "rows": [dict(zip(header, r, strict=True)) for r in rows]}, indent=1
            )
            + "\n"
        )

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, bool):
            return "★" if v else ""
        return "" if v is None else str(v).replace("|", "\\|")

    lines = [f"*{title}*", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
