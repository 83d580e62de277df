"""Running a search: `run` and `resume`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from normsearch.cli.common import app, console, load_recipe_flags, space_table, user_errors


@app.command("run")
@user_errors
def run(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="A recipe YAML (see recipes/).")],
    name: Annotated[str | None, typer.Option(help="Run name (default: the recipe's).")] = None,
    num_samples: Annotated[int | None, typer.Option(min=1, help="Trials to run.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="Trials at once.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address: auto, host:port, ray://host:port.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Run folder (default: runs/<name>-<timestamp>).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and print; train nothing.")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.epochs=2 (repeatable)."),
    ] = None,
) -> None:
    """Search the recipe's space: train every candidate, report trials and the Pareto front."""
    from normsearch.recipe import default_output

    recipe, space = load_recipe_flags(
        recipe_path,
        name=name,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        address=address,
        output=str(output) if output else None,
        overrides=overrides,
    )
    run_dir = default_output(recipe)
    if dry_run:
        import yaml

        from normsearch.search.tuner import estimate_seconds

        console.print(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))
        console.print(space_table(space))
        per_trial, total = estimate_seconds(recipe)
        console.print(
            f"{recipe.data.describe()}\nwould write {run_dir}; estimated {per_trial:.0f} s per trial, "
            f"about {total / 60:.1f} min for {recipe.search.num_samples} trial(s) "
            f"({recipe.search.max_concurrent} at once, {recipe.resources.cpu} CPU each)"
        )
        return
    _search(recipe, space, run_dir, resume=False)


@app.command("resume")
@user_errors
def resume(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """Continue an interrupted run: finished trials stay, unfinished ones run again."""
    from normsearch.search.tuner import load_run

    recipe, space = load_run(run_dir)
    _search(recipe, space, run_dir, resume=True)


def _search(recipe: Any, space: Any, run_dir: Path, resume: bool) -> None:
    from rich.live import Live

    from normsearch.search.tuner import run_search

    console.print(f"[bold]{recipe.name}[/bold]: {recipe.data.describe()}")
    console.print(f"run folder {run_dir}; study {run_dir / 'study.db'}")
    with Live(_progress_view(None), console=console, refresh_per_second=2, transient=False) as live:
        run_search(recipe, space, run_dir, on_change=lambda p: live.update(_progress_view(p)), resume=resume)
    console.print()  # end the live line before the tables
    from normsearch.cli.inspect import show_run

    show_run(run_dir, sort="target", top=None, show_all=False)


def _progress_view(progress: Any) -> Text:
    if progress is None:
        return Text("starting Ray...")
    eta = "-" if progress.eta is None else f"{progress.eta:.0f}s"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return Text(
        f"trials {progress.done}/{progress.total} done, {len(progress.running)} running, {progress.pruned} "
        f"pruned, {progress.failed} failed | best source {pct(progress.best_source)} | best target "
        f"{pct(progress.best_target)} | front {progress.front_size} | "
        f"elapsed {progress.elapsed:.0f}s, ETA {eta}"
    )
