"""Collecting runs into DomainBed-style tables (`normsearch collect`).

A pure pass over run folders' records (trials.jsonl through `RunFolder`): never live Ray or Optuna state.
DomainBed's habits (Gulrajani & Lopez-Paz 2021, `domainbed/scripts/collect_results.py`): one row per
configuration, one column per reported domain and their average, mean ± standard error over seeds, the
selection rule in every header, and "X" where a number is missing, with the reason.

A confirmed configuration's cells are the mean ± s.e. over its confirmation seeds (results/confirmed.py);
a row that was never confirmed shows the search's single number and "1 seed".
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.errors import NormsearchError
from normsearch.norms.running import statistics_statement
from normsearch.recipe import Recipe
from normsearch.results.confirmed import Confirmed, Stat, confirmations, stat
from normsearch.results.front import RunSummary, summarize
from normsearch.results.tables import arch_summary
from normsearch.run.records import TrialRecord, own_policy, policy_view

FORMATS = ("table", "csv", "jsonl", "markdown", "latex")


# --- DomainBed tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """A table cell: a number over seeds, or None with the reason it is missing."""

    value: Stat | None
    reason: str | None = None

    def text(self, pm: str = "±") -> str:
        return "X" if self.value is None else self.value.text(pm)


@dataclass
class Row:
    run: str
    trial: str
    config: str
    seeds: int  # how many seeds the numbers are over (1: the search's own)
    cells: dict[str, Cell]
    note: str = ""
    policy: str = "running"  # the test-time statistics the numbers were measured with (norm.inference)


@dataclass
class CollectedTable:
    """The rows of one or more runs that share a selection rule and reported domains."""

    title: str
    selection: str
    columns: list[str]  # column labels; `keys` are the test-dict keys behind them
    keys: list[str]
    rows: list[Row] = field(default_factory=list)
    legend: str = ""  # how to read the cells (default: LEGEND, over confirmation seeds)


def reported_columns(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(labels, test keys) of the reported domains: under rotation every held-out domain, their average and
    the extra test domains (DomainBed's table); otherwise the sources' own test split, every test domain and
    their mean."""
    data = recipe.data
    if data.rotate:
        extra = [d for d in data.test if d not in data.sources]
        return [*data.sources, "Avg", *extra], [*data.sources, "avg", *extra]
    return ["source", *data.test, "Avg"], ["source", *data.test, "test_mean"]


def _missing(trial: TrialRecord, key: str) -> str:
    if not trial.complete:
        why = f": {trial.reason}" if trial.reason else ""
        return f"{trial.status}{why}"
    return f"{key} not measured"


def _under_policy(entry: Confirmed | None, policy: str) -> Confirmed | None:
    """A configuration's confirmation runs read under one test-time statistics policy (each confirmation
    run was evaluated under the same policies as its search trial)."""
    if entry is None:
        return None
    runs = [policy_view(r, policy) for r in entry.runs]
    return Confirmed(entry.trial, [r for r in runs if r is not None], entry.failed)


def run_rows(summary: RunSummary, keys: list[str]) -> list[Row]:
    """One row per (configuration, test-time statistics policy) of a run (repeats left out): confirmed
    mean ± s.e. where confirmed, the search's number otherwise; best average first, configurations
    without numbers last."""
    confirmed = confirmations(summary)
    rows = []

    for trial in summary.rows:  # one row per (configuration, test-time statistics policy)
        if trial.status == "repeat":
            continue
        entry = _under_policy(confirmed.get(trial.trial_id), own_policy(trial))
        cells: dict[str, Cell] = {}
        reasons: list[str] = []
        for key in keys:
            if entry is not None and entry.runs:
                value = entry.test(key)
                cell = Cell(value, None if value is not None else f"{key} not measured in every confirmation")
            elif key in trial.test:
                cell = Cell(stat([trial.test[key]]))
            else:
                cell = Cell(None, _missing(trial, key))
            cells[key] = cell
            if cell.reason and cell.reason not in reasons:
                reasons.append(cell.reason)
        seeds = len(entry.runs) if entry is not None and entry.runs else 1
        rows.append(
            Row(
                summary.folder.path.name,
                trial.trial_id,
                arch_summary(trial.arch, trial.config),
                seeds,
                cells,
                "; ".join(reasons),
                own_policy(trial),
            )
        )
    average = keys[len(keys) - 1] if "test_mean" in keys else ("avg" if "avg" in keys else keys[-1])

    def order(row: Row) -> tuple[bool, float]:
        cell = row.cells.get(average)
        return (cell is not None and cell.value is not None, cell.value.mean if cell and cell.value else -1.0)

    rows.sort(key=order, reverse=True)
    return rows


def collect(run_dirs: Sequence[str | Path]) -> list[CollectedTable]:
    """The DomainBed tables of the given runs: runs that share a selection statement and reported domains
    share one table (a row names its run). Rows measured with another test-time statistics policy go to a
    table of their own whose statement says so (test-time adaptation is never mixed into a plain DG table)."""
    if not run_dirs:
        raise NormsearchError("collect: give at least one run folder")
    tables: dict[tuple[str, tuple[str, ...]], CollectedTable] = {}
    for run_dir in run_dirs:
        summary = summarize(run_dir)
        labels, keys = reported_columns(summary.recipe)
        described = summary.recipe.data.describe()
        rows = run_rows(summary, keys)
        for row in rows or [None]:  # a run without rows still gets its (empty) table
            policy = row.policy if row is not None else summary.recipe.model.norm.inference
            selection = f"{described}; {statistics_statement([policy])}"
            key = (f"{summary.recipe.data.selection}|{selection}", tuple(labels))
            table = tables.get(key)
            if table is None:
                title = f"test accuracy (%) — model selection: {summary.recipe.data.selection}"
                table = tables[key] = CollectedTable(title, selection, labels, keys)
            table.rows += [row] if row is not None else []
    return list(tables.values())


# --- rendering ---------------------------------------------------------------------------------------------
LEGEND = (
    "mean ± standard error over the confirmation seeds (`normsearch confirm`); one number: the search's "
    "single seed"
)


def _header_cells(table: CollectedTable) -> list[str]:
    return ["run", "trial", "configuration", "seeds", *table.columns]


def _cells(table: CollectedTable, row: Row, pm: str = "±") -> list[str]:
    return [row.run, row.trial, row.config, str(row.seeds), *(row.cells[k].text(pm) for k in table.keys)]


def _notes(table: CollectedTable) -> list[str]:
    return [f"X in {row.run} {row.trial}: {row.note}" for row in table.rows if row.note]


def render_table(tables: list[CollectedTable]) -> str:
    """Plain-text tables (what the terminal shows, without colour)."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=160, color_system=None, highlight=False)
    for table in rich_tables(tables):
        console.print(table)
    for table in tables:
        for note in _notes(table):
            console.print(note, soft_wrap=True)
    return buffer.getvalue()


def rich_tables(tables: list[CollectedTable]) -> list[Any]:
    """The tables as rich Tables (title: the selection rule; caption: how to read the cells)."""
    from rich.table import Table

    out = []
    for table in tables:
        rendered = Table(
            title=f"{table.title}\n{table.selection}",
            title_justify="left",
            caption=table.legend or LEGEND,
            caption_justify="left",
        )
        for i, column in enumerate(_header_cells(table)):
            rendered.add_column(column, justify="right" if i >= 3 else "left", overflow="fold")
        for row in table.rows:
            rendered.add_row(*_cells(table, row))
        out.append(rendered)
    return out


def render_markdown(tables: list[CollectedTable]) -> str:
    parts = []
    for table in tables:
        header = _header_cells(table)
        lines = [f"### {table.title}", "", f"*{table.selection}*", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(table, row)) + " |")
        lines += ["", (table.legend or LEGEND) + ".", *(f"- {note}" for note in _notes(table))]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _latex(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("$", r"\$"),
        ("{", r"\{"),
        ("}", r"\}"),
    ):
        text = text.replace(char, escaped)
    text = text.replace("±", "$\\pm$").replace("—", "---")
    # Markdown `code` spans (the legend names commands) become \texttt{} in LaTeX, not literal backticks.
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", text)


def render_latex(tables: list[CollectedTable]) -> str:
    """booktabs tables, one per selection rule; ± as $\\pm$ and the selection statement in the caption."""
    parts = []
    for table in tables:
        header = _header_cells(table)
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_latex(table.title)}. {_latex(table.selection)}. "
            f"{_latex(table.legend or LEGEND)}.}}",
            "\\begin{tabular}{lll" + "r" * (len(header) - 3) + "}",
            "\\toprule",
            " & ".join(_latex(h) for h in header) + " \\\\",
            "\\midrule",
        ]
        for row in table.rows:
            cells = [_latex(c) for c in _cells(table, row, pm="PLUSMINUS")]
            lines.append(" & ".join(c.replace("PLUSMINUS", "$\\pm$") for c in cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += [f"% {_latex(note)}" for note in _notes(table)]
        lines.append("\\end{table}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def render_csv(tables: list[CollectedTable]) -> str:
    """One CSV line per row: per column its mean, standard error and seed count (empty when missing), and
    the reason for a missing cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "selection",
            "selection_rule",
            "run",
            "trial",
            "configuration",
            "column",
            "mean",
            "se",
            "n",
            "missing",
        ]
    )
    for table in tables:
        rule = table.title.rpartition(": ")[2]
        for row in table.rows:
            for label, key in zip(table.columns, table.keys, strict=True):
                cell = row.cells[key]
                v = cell.value
                writer.writerow(
                    [
                        table.selection,
                        rule,
                        row.run,
                        row.trial,
                        row.config,
                        label,
                        "" if v is None else f"{v.mean:.4f}",
                        "" if v is None or v.se is None else f"{v.se:.4f}",
                        "" if v is None else v.n,
                        cell.reason or "",
                    ]
                )
    return buffer.getvalue()


def render_jsonl(tables: list[CollectedTable]) -> str:
    """One JSON object per row, with the selection statement, every cell's mean/se/n or its missing reason."""
    lines = []
    for table in tables:
        for row in table.rows:
            cells = {}
            for label, key in zip(table.columns, table.keys, strict=True):
                cell = row.cells[key]
                v = cell.value
                cells[label] = (
                    {"missing": cell.reason}
                    if v is None
                    else {"mean": round(v.mean, 4), "se": None if v.se is None else round(v.se, 4), "n": v.n}
                )
            lines.append(
                json.dumps(
                    {
                        "selection": table.selection,
                        "selection_rule": table.title.rpartition(": ")[2],
                        "run": row.run,
                        "trial": row.trial,
                        "configuration": row.config,
                        "seeds": row.seeds,
                        "cells": cells,
                    }
                )
            )
    return "\n".join(lines) + "\n"


def render(tables: list[CollectedTable], fmt: str) -> str:
    """The tables in one of FORMATS."""
    renderers = {
        "table": render_table,
        "csv": render_csv,
        "jsonl": render_jsonl,
        "markdown": render_markdown,
        "latex": render_latex,
    }
    if fmt not in renderers:
        raise NormsearchError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    return renderers[fmt](tables)
