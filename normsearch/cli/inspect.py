"""Looking at finished runs: `show`, `pareto`, `export` (inputs, before a run: cli/inputs.py).

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from normsearch.cli.common import app, console, err_console, user_errors
from normsearch.errors import NormsearchError
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC


class Sort(str, enum.Enum):
    target = "target"
    source = "source"


class Pick(str, enum.Enum):
    knee = "knee"
    max_target = "max-target"
    max_source = "max-source"
    max_heldout_avg = "max-heldout-avg"
    max_worst_domain = "max-worst-domain"


class RowFormat(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


SHOW_ROWS = 50  # rows of `show`'s rich tables unless --top/--full: 1000 rows took seconds to render


def show_run(run_dir: Path, sort: str, top: int | None, show_all: bool, full: bool = False) -> None:
    """Print a run's trials table and front (also what `run` and `resume` end with). Unless `top` or
    `full` says otherwise, each table shows its best SHOW_ROWS rows and a line says how many more there
    are and how to list them (rendering a rich table of 1000 rows cost seconds; `bench driver`)."""
    from normsearch.results.front import summarize
    from normsearch.results.tables import domainbed_table, front_table, trials_table, warm_start_table
    from normsearch.run.folder import RunFolder

    summary = summarize(run_dir)
    for warning in run_warnings(summary.folder):
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    warm = RunFolder(run_dir).warm_start()
    if warm is not None:
        console.print(warm_start_table(warm))
    cap = None if full else SHOW_ROWS
    console.print(trials_table(summary, sort=sort, top=top or cap, show_all=show_all))
    listed = sum(1 for t in summary.candidates if show_all or t.status != "repeat")
    if top is None and cap is not None and listed > cap:
        console.print(
            f"the best {cap} of {listed} trials; --top N or --full shows more, --format csv|json|markdown "
            "writes every row",
            highlight=False,
        )
    if summary.recipe.data.rotate:
        console.print(domainbed_table(summary))
    console.print(front_table(summary.front, summary.recipe, top=cap))
    if cap is not None and len(summary.front.members) > cap:
        console.print(
            f"the first {cap} of {len(summary.front.members)} front configurations; --full or `normsearch "
            "pareto` lists them all",
            highlight=False,
        )


def run_warnings(folder: Any) -> list[str]:
    """What `show` says before the tables: every repair the records need or had, and a damaged study."""
    from normsearch.run.study import check_study

    found = folder.record_warnings()
    problem = check_study(folder)
    if problem is not None:
        found.append(
            f"{problem}; the tables come from trials.jsonl, and `normsearch resume {folder.path} --repair` "
            "rebuilds the study from it"
        )
    return found


def _rows_out(header: list[str], rows: list[list], fmt: RowFormat, title: str) -> None:
    import sys

    from normsearch.results.tables import format_rows

    sys.stdout.write(format_rows(header, rows, fmt.value, title))


@app.command("show")
@user_errors
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    sort: Annotated[
        Sort, typer.Option(help="Order trials by select-target or source accuracy.")
    ] = Sort.target,
    top: Annotated[int | None, typer.Option(min=1, help="Show only the best N.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list repeats (configurations not trained again).")
    ] = False,
    fmt: Annotated[
        RowFormat, typer.Option("--format", help="table (rich), or csv | json | markdown to stdout.")
    ] = RowFormat.table,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help=f"Every row in the tables (default: the best {SHOW_ROWS}, and how many more)."
        ),
    ] = False,
) -> None:
    """The trials table (front members starred, a reason for every failed or stopped trial) and the front."""
    if fmt is RowFormat.table:
        show_run(run_dir, sort.value, top, show_all, full)
        return
    from normsearch.results.front import summarize
    from normsearch.results.tables import header, trials_rows

    summary = summarize(run_dir)
    head, rows = trials_rows(summary)
    rows = [r for r, t in zip(rows, summary.rows, strict=True) if show_all or t.status != "repeat"]
    wanted = TARGET_SELECT_ACC if sort is Sort.target and TARGET_SELECT_ACC in head else SOURCE_VAL_ACC
    key, status = head.index(wanted), head.index("status")
    rows.sort(
        key=lambda r: (str(r[status]).startswith("complete"), r[key] if r[key] is not None else -1.0),
        reverse=True,
    )
    _rows_out(head, rows[:top] if top else rows, fmt, header(summary.recipe, summary.space))


@app.command("pareto")
@user_errors
def pareto(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    output: Annotated[
        list[Path] | None,
        typer.Option(
            "-o", "--output", help="Write the front plot: front.png, or front.html (offline, interactive)."
        ),
    ] = None,
    fmt: Annotated[
        RowFormat,
        typer.Option("--format", help="table (rich, with a terminal scatter), or csv | json | markdown."),
    ] = RowFormat.table,
    plot: Annotated[Path | None, typer.Option(hidden=True, help="Same as -o FILE.png.")] = None,
    html: Annotated[Path | None, typer.Option(hidden=True, help="Same as -o FILE.html.")] = None,
) -> None:
    """The front, its hypervolume and a terminal scatter; plot files with -o (.png or .html)."""
    from normsearch.results.figures import plot_front
    from normsearch.results.front import summarize
    from normsearch.results.tables import front_rows, front_table, header, knee_line, scatter

    files = [(p, p.suffix) for p in output or []]
    for path in files:
        if path[1] not in (".png", ".html"):
            raise NormsearchError(f"-o {path[0]}: the front plot is .png or .html")
    files += [(p, s) for p, s in ((plot, ".png"), (html, ".html")) if p is not None]
    summary = summarize(run_dir)
    front, recipe = summary.front, summary.recipe
    if fmt is not RowFormat.table:
        _rows_out(*front_rows(front), fmt, header(recipe, summary.space))
    else:
        console.print(header(recipe, summary.space), highlight=False)
        console.print(front_table(front, recipe))
        if front.hypervolume is not None:
            console.print(f"hypervolume {front.hypervolume:.1f} against reference {front.reference}")
        if front.members:
            console.print(knee_line(front), highlight=False)
        console.print(scatter(front), highlight=False)
    for path, suffix in files:
        plot_front(front, path, header(recipe, summary.space), suffix)
        if fmt is RowFormat.table:
            console.print(f"wrote {path}")


@app.command("export")
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Where to write the ArchConfig YAML.")],
    trial: Annotated[str | None, typer.Option(help="A trial id.")] = None,
    pick_rule: Annotated[
        Pick | None,
        typer.Option(
            "--pick",
            help="How to choose from the front; the rules a run accepts depend on its selection rule "
            "(docs/guide/results.md).",
        ),
    ] = None,
    max_source_drop: Annotated[
        float | None,
        typer.Option(help="With max-target: only trials within this many points of the best source."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Also write the trial's trained weights (build_model(..., weights=FILE) loads them)."
        ),
    ] = None,
    test: Annotated[
        bool, typer.Option("--test", help="Also print the trial's test-domain accuracy.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Export a trial that did not complete (failed, pruned).")
    ] = False,
    policy: Annotated[
        str | None,
        typer.Option(
            help="The test-time statistics policy of the (trial, policy) row to export (running, batch, "
            "adabn, mix:alpha=A); default: the trial's own. With --weights and --test the exported model "
            "is rebuilt and evaluated under it."
        ),
    ] = None,
) -> None:
    """Write one (trial, policy) row's ArchConfig with provenance (and its weights);
    `normsearch.build_model(FILE)` rebuilds it."""
    from normsearch.results.front import export_trial, find_trial, summarize
    from normsearch.run.records import own_policy

    if (trial is None) == (pick_rule is None):
        raise NormsearchError(
            "export: give exactly one of --trial ID or --pick RULE (knee, max-source, max-target; "
            "rotated runs also max-heldout-avg, max-worst-domain)"
        )
    summary = summarize(run_dir)
    if trial is not None and not force:
        # A failed or pruned configuration is not a result: exporting it must be asked for.
        named = find_trial(summary.trials, trial)
        if not named.complete:
            raise NormsearchError(
                f"--trial {trial}: trial {named.trial_id} is {named.status}, not complete; add --force to "
                "export its configuration anyway"
            )
    rule = pick_rule.value if pick_rule is not None else None
    chosen = export_trial(summary, out, trial, rule, max_source_drop, weights, policy)
    metrics = chosen.metrics
    shown = ", ".join(
        f"{name} {float(metrics[name]):.1f}" for name in summary.front.objectives if name in metrics
    )
    console.print(
        f"wrote {out}: trial {chosen.trial_id} ({chosen.status}), {shown}, test-time statistics "
        f"{chosen.policy or own_policy(chosen)}" + (f"; weights {weights}" if weights is not None else ""),
        highlight=False,
    )
    if test:
        if not chosen.test:
            raise NormsearchError(f"trial {chosen.trial_id} has no test accuracies (it did not finish)")
        label = (
            "ORACLE (selected on these domains)"
            if summary.recipe.data.selection == "oracle"
            else ("measured after selection")
        )
        parts = ", ".join(f"{k} {v:.1f}" for k, v in chosen.test.items())
        console.print(f"test accuracy, {label}: {parts}")
        if weights is not None:  # rebuilt from what was written, evaluated under the row's policy
            from normsearch.results.policies import evaluate_export, policy_label

            again = evaluate_export(summary.recipe, out, weights)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in again.items())
            console.print(f"rebuilt from {out} + {weights}, {policy_label(chosen.policy)}: {parts}")
