"""Running a search: `run` and `resume`.

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from normsearch.cli.common import app, console, load_recipe_flags, space_table, user_errors
from normsearch.cli.feedback import Feedback, interrupted, working
from normsearch.errors import NormsearchError

STARTUP_TIMEOUT = typer.Option(
    "--ray-startup-timeout",
    min=1,
    max=86400,
    help="Seconds Ray may take to start, this time only (default: the recipe's ray.startup_timeout, 300).",
)


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
    storage: Annotated[
        str | None,
        typer.Option(
            help="Where checkpoints go and the run folder is mirrored: s3://bucket/prefix, gs://..., or a "
            "path every node mounts (needed on a cluster whose nodes share no disk)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and print; train nothing.")] = False,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate/--no-estimate",
            help="With --dry-run: time a few real training steps here for the run's time estimate (the "
            "default; seconds to a minute), or only check.",
        ),
    ] = True,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set train.epochs=2 (repeatable)."),
    ] = None,
    ray_startup_timeout: Annotated[float | None, STARTUP_TIMEOUT] = None,
) -> None:
    """Search the recipe's space: train every candidate, report trials and the Pareto front."""
    tic = time.perf_counter()
    # The first line comes at once: reading the recipe imports torch (slow on a busy machine).
    with working("run", f"reading {recipe_path}") as shown:
        from normsearch.run.folder import default_output
        from normsearch.search.preflight import describe, preflight

        recipe, space = load_recipe_flags(
            recipe_path,
            name=name,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            address=address,
            output=str(output) if output else None,
            overrides=overrides,
            storage=storage,
        )
        run_dir = default_output(recipe)
        shown.update("checking the output folder, resources, every configuration and the data")
        checked = preflight(recipe, space, run_dir)
    checks_seconds = time.perf_counter() - tic  # what the run will spend again before Ray starts
    if dry_run:
        import yaml

        if recipe.ray.address is not None:
            _check_cluster(recipe, run_dir)

        console.print(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))
        console.print(space_table(space))
        for key, value in describe(checked).items():
            console.print(f"{key}: {value}", highlight=False)
        capped = (
            f" (the space holds {checked.size}; no configuration is trained twice)"
            if checked.size is not None and checked.size < recipe.search.num_samples
            else ""
        )
        units = len(recipe.data.units())
        per = f" x {units} training units each (the protocol's folds)" if units > 1 else ""
        console.print(
            f"{recipe.data.describe()}\nall checks passed; would write {run_dir}; {checked.trials} trial(s)"
            f"{per}{capped}",
            highlight=False,
        )
        if not estimate:
            console.print("no time estimate (--no-estimate)", highlight=False)
            return
        from normsearch.search.estimate import estimate as measure

        with working("run", "timing a few training steps of the network on this machine"):
            found = measure(recipe, space, checked.trials, checks_seconds)
        for line in found.lines(recipe):
            console.print(line, highlight=False, soft_wrap=True)
        return
    _search(recipe, space, run_dir, resume=False, checked=checked, startup_timeout=ray_startup_timeout)


def _check_cluster(recipe: Any, run_dir: Path) -> None:
    """The dry run's cluster checks: join it, fit one trial on a node, and check every node."""
    import ray

    from normsearch.search.preflight import check_nodes
    from normsearch.search.ray import check_cluster_resources, start_ray

    with working("run", "joining the cluster and checking every node"):
        start_ray(recipe.ray.address)
        try:
            check_cluster_resources(recipe.resources.cpu, recipe.resources.gpu)
            nodes = check_nodes(recipe, run_dir)
        finally:
            ray.shutdown()
    console.print(f"nodes checked: {nodes}", highlight=False)


@app.command("resume")
@user_errors
def resume(
    run_dir: Annotated[
        str, typer.Argument(metavar="RUN", help="A run folder, or its storage URI (s3://bucket/prefix/run).")
    ],
    output: Annotated[
        Path | None, typer.Option(help="With a URI: where to restore the run folder (default: ./<run>).")
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Rebuild a damaged study.db from trials.jsonl (the damaged file is kept aside)."
        ),
    ] = False,
    ray_startup_timeout: Annotated[float | None, STARTUP_TIMEOUT] = None,
) -> None:
    """Continue a run that was interrupted or killed: finished trials stay, unfinished ones continue from
    their last epoch checkpoint, and the study is reconciled with the records. Given the run's storage
    URI (another machine, a new head node), the folder is restored from the storage first."""
    from normsearch.run.folder import RunFolder
    from normsearch.run.storage import is_uri, split_run_uri

    if is_uri(run_dir):
        storage, name = split_run_uri(run_dir)
        local = (output or Path.cwd() / name).resolve()
        if not RunFolder.is_run(local):
            with working("resume", f"restoring {run_dir} into {local}"):
                storage.probe()
                RunFolder.restore(storage, name, local)
        folder = Path(local)
    else:
        folder = Path(run_dir)
    recipe, space = RunFolder.open(folder).load()
    _search(recipe, space, folder, resume=True, repair=repair, startup_timeout=ray_startup_timeout)


def _search(
    recipe: Any,
    space: Any,
    run_dir: Path,
    resume: bool,
    checked: Any = None,
    repair: bool = False,
    startup_timeout: float | None = None,
) -> None:
    from normsearch.search.tuner import run_search

    console.print(f"[bold]{recipe.name}[/bold]: {recipe.data.describe()}", highlight=False)

    def announce(folder: Any) -> None:  # once the folder exists (a killed driver leaves a resumable run)
        console.print(f"run folder {folder.path}; study {folder.study_url}", highlight=False)

    resume_hint = f"normsearch resume {run_dir}"
    try:
        with _progress_shown() as on_change:
            outcome = run_search(
                recipe,
                space,
                run_dir,
                on_change=on_change,
                resume=resume,
                checked=checked,
                on_folder=announce,
                repair=repair,
                startup_timeout=startup_timeout,
            )
    except NormsearchError:
        console.print()  # end the live line, so that the error is a line of its own
        raise
    except KeyboardInterrupt:
        from normsearch.run.folder import RunFolder

        if RunFolder.is_run(run_dir):
            raise interrupted("every finished trial is kept in the run folder", resume_hint) from None
        console.print()
        console.print("[yellow]interrupted before any trial started; nothing was written[/yellow]")
        raise typer.Exit(130) from None
    console.print()  # end the live line before the tables
    if outcome.recovery is not None:
        console.print(f"resume: {outcome.recovery.summary()}", highlight=False)
    if outcome.nothing_to_do:
        console.print("nothing left to run: every trial of this run has finished", highlight=False)
    if outcome.progress is not None and outcome.progress.message:
        console.print(outcome.progress.message, highlight=False)
    # here, not at the top, also because importing cli/inspect.py first would list its commands before run's
    from normsearch.cli.inspect import show_run
    from normsearch.run.folder import RunFolder

    if RunFolder(run_dir).records_path.is_file():  # interrupted before a first record: no table to show
        show_run(run_dir, sort="target", top=None, show_all=False)
    if outcome.incomplete:
        unfinished = ", ".join(outcome.interrupted) or "none running"
        kept = f"every finished trial is kept ({len(outcome.interrupted)} unfinished: {unfinished})"
        raise interrupted(kept, resume_hint)
    if outcome.all_failed:
        console.print("[red]every trial failed[/red]; the reasons are in the table above", highlight=False)
        raise typer.Exit(1)


@contextmanager
def _progress_shown() -> Iterator[Callable[[Any], None]]:
    """The search's progress: one live line on a terminal; plain lines when the output is not a terminal
    (one per trial event, and a "still working" line at least every HEARTBEAT_SECONDS)."""
    if console.is_terminal:
        from rich.live import Live

        with Live(_progress_view(None), console=console, refresh_per_second=2, transient=False) as live:
            yield lambda p: live.update(_progress_view(p))
        return
    with Feedback("run", "starting Ray").shown() as feedback:
        yield lambda p: feedback.update(_progress_text(p, timed=False))


def _progress_view(progress: Any) -> Text:
    return Text("starting Ray..." if progress is None else _progress_text(progress))


def _progress_text(progress: Any, timed: bool = True) -> str:
    """The progress line; `timed`: with the elapsed time (piped lines carry their own)."""
    eta = "-" if progress.eta is None else f"{progress.eta:.0f}s"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    repeats = f", {progress.repeats} repeat(s) not retrained" if progress.repeats else ""
    elapsed = f"elapsed {progress.elapsed:.0f}s, " if timed else ""
    return (
        f"trials {progress.done}/{progress.total} done, {len(progress.running)} running, {progress.pruned} "
        f"pruned, {progress.failed} failed{repeats} | best source {pct(progress.best_source)} | best target "
        f"{pct(progress.best_target)} | front {progress.front_size} | {elapsed}ETA {eta}"
    )
