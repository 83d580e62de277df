"""Trusting and explaining a run: `confirm`, `collect`, `report`, `diagnose`, `dashboard`.

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from normsearch.cli.common import app, console, load_recipe_flags, user_errors
from normsearch.cli.feedback import Feedback, interrupted, quoted, working
from normsearch.errors import NormsearchError


class CollectFormat(str, enum.Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"
    markdown = "markdown"
    latex = "latex"


@app.command("confirm")
@user_errors
def confirm(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    front: Annotated[
        bool, typer.Option("--front", help="Confirm every front configuration (default).")
    ] = False,
    trials: Annotated[
        str | None,
        typer.Option("--trials", help="Comma-separated trial ids to confirm instead, e.g. t003,t007."),
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="New model seeds per configuration (recipe seed +1, +2, ...).")
    ] = 3,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the front re-drawn from confirmed means (PNG)."),
    ] = None,
) -> None:
    """Re-train the chosen configurations with new model seeds through Ray (same data, training and
    resources as the run), append the results to the run's records, and show mean ± standard error with the
    front re-drawn from the confirmed means."""
    ids = [t.strip() for t in trials.split(",") if t.strip()] if trials else None
    again = ["normsearch", "confirm", run_dir, *(["--trials", ",".join(ids)] if ids else [])]
    again += (["--front"] if front else []) + ["--seeds", seeds] + (["-o", output] if output else [])
    feedback = Feedback("confirm", "starting Ray and loading the data")

    def update(p: Any) -> None:
        feedback.update(p.message or "training", completed=p.done, total=p.total)

    try:
        with feedback.shown():  # the first line comes at once; the imports may take a while
            from normsearch.search.confirm import run_confirm

            outcome = run_confirm(str(run_dir), ids, front, seeds, on_change=update)
    except KeyboardInterrupt:
        kept = "finished confirmation runs are kept in the run's records, unfinished ones' epoch checkpoints"
        raise interrupted(kept, quoted(*again)) from None
    if outcome.found:
        console.print(f"already on record, not trained again: {', '.join(outcome.found)}", highlight=False)
    if outcome.trained:
        console.print(
            f"trained {len(outcome.trained)} confirmation run(s) in tune/{outcome.experiment}",
            highlight=False,
        )
    if outcome.failed:
        console.print(
            f"[red]failed:[/red] {', '.join(outcome.failed)} (reasons in trials.jsonl)", highlight=False
        )
    show_confirmations(run_dir, output, only=outcome.chosen)
    if outcome.unfinished:
        kept = (
            f"{len(outcome.trained)} confirmation run(s) finished and recorded; {len(outcome.unfinished)} "
            "unfinished keep their last epoch checkpoint"
        )
        raise interrupted(kept, quoted(*again))


def show_confirmations(run_dir: Path, output: Path | None = None, only: list[str] | None = None) -> None:
    """Print the confirmation table and the confirmed front; write the PNG when asked."""
    from normsearch.results.confirmed import confirmation_rows, confirmations, confirmed_front
    from normsearch.results.figures import plot_confirmed
    from normsearch.results.front import summarize
    from normsearch.results.tables import arch_summary, header

    summary = summarize(run_dir)
    confirmed = {k: v for k, v in confirmations(summary).items() if only is None or k in only}
    table = Table(
        title=f"confirmed over new seeds — {header(summary.recipe, summary.space)}",
        title_justify="left",
        show_lines=False,
    )
    for column in (
        "trial",
        "config",
        "measure",
        "confirmed mean ± s.e.",
        "seeds",
        "search (1 seed)",
        "shift",
    ):
        table.add_column(column, justify="left" if column in ("trial", "config", "measure") else "right")
    last = None
    for key, measure, value, search in confirmation_rows(summary, confirmed):
        trial = confirmed[key].trial
        shift = "" if search is None else f"{value.mean - search:+.1f}"
        first = key != last
        table.add_row(
            key if first else "",
            arch_summary(trial.arch, trial.config) if first else "",
            measure,
            value.text(),
            str(value.n),
            "-" if search is None else f"{search:.1f}",
            shift,
        )
        last = key
    console.print(table)
    cf = confirmed_front(summary, confirmed)
    if cf.ids:
        names = list(cf.objectives)
        members = ", ".join(cf.ids[i] for i in cf.members)
        console.print(f"front from confirmed means ({', '.join(names)}): {members}", highlight=False)
        for note in cf.notes or ["no configuration changed its place on the front"]:
            console.print(f"  {note}", highlight=False, soft_wrap=True)
        if output is not None:
            plot_confirmed(
                cf,
                summary.front,
                output,
                f"confirmed front (mean ± s.e.) — {header(summary.recipe, summary.space)}",
            )
            console.print(f"wrote {output}")


@app.command("collect")
@user_errors
def collect(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders.")],
    fmt: Annotated[CollectFormat, typer.Option("--format", help="Output format.")] = CollectFormat.table,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file.")] = None,
) -> None:
    """DomainBed-style tables over the runs' records: one row per configuration, one column per reported
    domain, mean ± s.e. where confirmed, the selection rule in the header, X with a reason."""
    from normsearch.results.collect import collect as collect_runs

    show_tables(collect_runs(run_dirs), fmt, output)


def show_tables(tables: list[Any], fmt: CollectFormat, output: Path | None) -> None:
    """Collected tables (`collect`, `evaluate`) to a file, as rich tables with their notes, or as text."""
    import sys

    from normsearch.results.collect import _notes, render, rich_tables
    from normsearch.run.files import atomic_write_text

    if output is not None:
        atomic_write_text(output, render(tables, fmt.value))
        console.print(f"wrote {output}")
    elif fmt is CollectFormat.table:
        for table in rich_tables(tables):
            console.print(table)
        for t in tables:
            for note in _notes(t):
                console.print(note, highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(render(tables, fmt.value))


@app.command("report")
@user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="report.html (offline, interactive) or report.md.")
    ],
) -> None:
    """One self-contained report: recipe and space, trials, Pareto plot, hypervolume over trials, parameter
    importance per objective, the chosen architecture's slots, confirmations, the selection statement."""
    from normsearch.results.report import write_report

    with working("report", "writing the report"):
        written = write_report(run_dir, output)
    console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)


@app.command("diagnose")
@user_errors
def diagnose(
    target: Annotated[
        Path,
        typer.Argument(metavar="CONFIG_OR_RUN", help="An ArchConfig YAML (with --recipe) or a run folder."),
    ],
    recipe_path: Annotated[
        Path | None, typer.Option("--recipe", help="With CONFIG: the recipe to train it with.")
    ] = None,
    trial: Annotated[str | None, typer.Option("--trial", help="With RUN_DIR: the trial to diagnose.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write tables and plots here.")
    ] = None,
    images: Annotated[int, typer.Option(min=8, help="Images per domain.")] = 256,
    unit: Annotated[
        str | None, typer.Option(help="With CONFIG: the protocol unit to train (default: the first).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="With --recipe: override a recipe key (repeatable).")
    ] = None,
) -> None:
    """Why a configuration generalizes: feature divergence per normalization layer between the source and
    each target (IBN-Net §4.3), estimation shift per BN-like layer (XBNBlock §4.2), and for Switchable Norm
    the learned ratios and hard choices (SN Fig. 5)."""
    from normsearch.analysis.diagnose import diagnose as run_diagnosis
    from normsearch.analysis.diagnose import from_config, from_run, write_diagnosis
    from normsearch.run.folder import RunFolder

    if RunFolder.is_run(target):
        if trial is None or recipe_path is not None:
            raise NormsearchError(f"diagnose {target}: a run folder takes --trial ID (and no --recipe)")
        with working("diagnose", f"loading trial {trial} and the data"):
            network, data = from_run(target, trial)
    else:
        if recipe_path is None or trial is not None:
            raise NormsearchError(
                f"diagnose {target}: give CONFIG.yaml --recipe RECIPE, or RUN_DIR --trial ID"
            )
        recipe, _ = load_recipe_flags(recipe_path, overrides=overrides)
        epochs = recipe.train.epochs
        with working("diagnose", f"training {target.name} on {recipe.name}") as shown:
            network, data = from_config(
                target,
                recipe,
                unit,
                report=lambda m: shown.update(
                    f"training {target.name}: epoch {m['epoch']}/{epochs}", m["epoch"], epochs
                ),
            )
    with working("diagnose", "recording activations"):
        result = run_diagnosis(network, data, images)
    _print_diagnosis(result)
    if output is not None:
        written = write_diagnosis(result, output)
        console.print(f"wrote {', '.join(p.name for p in written)} in {output}", highlight=False)


def _print_diagnosis(d: Any) -> None:
    console.print(f"[bold]{d.label}[/bold]: {d.selection}", highlight=False, soft_wrap=True)
    table = Table(
        title="feature divergence source -> target per layer (IBN-Net §4.3, Eq. 3)", title_justify="left"
    )
    for column in ("slot", "normalizer", *d.targets):
        table.add_column(column, justify="left" if column in ("slot", "normalizer") else "right")
    for i, slot in enumerate(d.slots):
        table.add_row(slot, d.normalizers[slot], *(f"{d.divergence[t][i]:.3f}" for t in d.targets))
    console.print(table)
    table = Table(
        title="estimation shift ESM_sigma per BN-like layer, input from each domain (XBNBlock §4.2; - : "
        "batch-free; ESM_mu too in -o DIR)",
        title_justify="left",
    )
    for column in ("slot", "normalizer", *d.shift):
        table.add_column(column, justify="left" if column in ("slot", "normalizer") else "right")
    for i, slot in enumerate(d.slots):
        cells = ["-" if d.shift[dom][i] is None else f"{d.shift[dom][i][1]:.2f}" for dom in d.shift]
        table.add_row(slot, d.normalizers[slot], *cells)
    console.print(table)
    if d.sn:
        table = Table(
            title="Switchable Norm ratios (IN, LN, BN) and hard choice (SN Fig. 5)", title_justify="left"
        )
        for column in ("slot", "mode", "mean ratios", "var ratios", "choice"):
            table.add_column(column)
        for r in d.sn:
            table.add_row(
                r.slot,
                r.mode,
                " ".join(f"{v:.3f}" for v in r.mean),
                " ".join(f"{v:.3f}" for v in r.var),
                r.choice,
            )
        console.print(table)


@app.command("dashboard")
@user_errors
def dashboard(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8080,
) -> None:
    """Open the run's study in optuna-dashboard (`pip install 'normsearch\\[dashboard]'`); without it,
    print the exact command."""
    from normsearch.run.folder import RunFolder

    folder = RunFolder.open(run_dir)
    if not folder.has_study():
        raise NormsearchError(f"{run_dir}: no study.db (nothing has run yet)")
    command = f"optuna-dashboard {folder.study_url} --host {host} --port {port}"
    if importlib.util.find_spec("optuna_dashboard") is None:
        console.print(
            "optuna-dashboard is not installed (pip install 'normsearch\\[dashboard]' or pip install "
            f"optuna-dashboard); then run:\n{command}",
            highlight=False,
            soft_wrap=True,
        )
        return
    import optuna_dashboard

    console.print(
        f"serving {folder.study_url} at http://{host}:{port} (Ctrl-C stops); same as: {command}",
        highlight=False,
        soft_wrap=True,
    )
    optuna_dashboard.run_server(folder.study_url, host=host, port=port)
