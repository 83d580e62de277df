"""`train`: retrain one architecture over several seeds, outside any run (no Ray, no run folder).

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from normsearch.cli.common import app, console, load_recipe_flags, user_errors
from normsearch.cli.feedback import interrupted, quoted, working
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC


@app.command("train")
@user_errors
def train(
    config: Annotated[Path, typer.Argument(help="An ArchConfig or an exported file.")],
    recipe_path: Annotated[Path, typer.Option("--recipe", help="Recipe giving data and training.")],
    seeds: Annotated[int, typer.Option(min=1, help="Model seeds (first seed, +1, ...).")] = 3,
    first_seed: Annotated[
        int | None, typer.Option(help="The first model seed (default: the recipe's seed).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default: resources.cpu).")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.epochs=2 (repeatable)."),
    ] = None,
) -> None:
    """Retrain an architecture over several seeds; mean ± standard error on source, select and test.
    Slow: one full training per seed (and per unit of the recipe's protocol)."""
    results: list[Any] = []
    first = first_seed  # known once the recipe is read
    try:
        # The first line comes at once: reading the recipe imports torch (slow on a busy machine).
        with working("train", f"reading {recipe_path} and loading its data") as status:
            from normsearch.arch import load_arch
            from normsearch.data.spec import load_data
            from normsearch.train import train_from_recipe

            recipe, _ = load_recipe_flags(recipe_path, overrides=overrides)
            arch = load_arch(config)
            first = recipe.seed if first_seed is None else first_seed
            data = load_data(recipe.data)
            for k in range(seeds):
                label = f"seed {first + k} ({k + 1}/{seeds})"
                status.update(f"training {label}")

                def show(m: dict[str, Any], label: str = label) -> None:
                    where = f" unit {m['unit']}" if m.get("unit") else ""
                    select = f", select {m[TARGET_SELECT_ACC]:.1f}" if TARGET_SELECT_ACC in m else ""
                    status.update(
                        f"training {label}{where}: epoch {m['epoch']}/{recipe.train.epochs}, source val "
                        f"{m[SOURCE_VAL_ACC]:.1f}{select}"
                    )

                results.append(
                    train_from_recipe(recipe, arch, seed=first + k, data=data, report=show, threads=threads)
                )
    except KeyboardInterrupt:
        if results:
            _train_table(config, recipe, arch, results)
        done = len(results)
        again = ["normsearch", "train", config, "--recipe", recipe_path, "--seeds", seeds - done]
        again += (["--first-seed", first + done] if first is not None else []) + (
            ["--threads", threads] if threads else []
        )
        for override in overrides or []:
            again += ["--set", override]
        kept = (
            f"{done} of {seeds} seed(s) finished (their table is above; `train` writes no files)"
            if done
            else "no seed finished (`train` writes no files)"
        )
        raise interrupted(kept, quoted(*again)) from None
    _train_table(config, recipe, arch, results)


def _train_table(config: Path, recipe: Any, arch: Any, results: list[Any]) -> None:
    """The retraining table: mean ± standard error per measure over the seeds, and a not-converged note."""
    from normsearch.norms.running import statistics_statement
    from normsearch.train import retrain_summary

    statement = f"{recipe.data.describe()}; {statistics_statement([arch.norm.inference])}"
    title = f"{config} on {recipe.name}, {len(results)} seed(s): {statement}"
    table = Table(title=title, title_justify="left")
    for column in ("measure", "mean", "± s.e.", "per seed"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for measure, mean, se, values in retrain_summary(results):
        table.add_row(measure, f"{mean:.1f}", f"{se:.1f}", " ".join(f"{v:.1f}" for v in values))
    console.print(table)
    flagged = [r for r in results if not r.converged]
    if flagged:
        console.print(
            f"[yellow]{len(flagged)} run(s) not converged (source val < 98% and training accuracy still "
            "climbing in the last epoch): their target accuracy is not a DG result[/yellow]"
        )
