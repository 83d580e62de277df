"""The `normsearch` command line: a thin Typer app. Parse, call the library, render with rich.

Heavy imports (torch, ray, optuna) happen inside commands so that `normsearch --help` stays fast.
Library errors (`NormsearchError`) become one red line and exit code 2, without a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from normsearch import __version__
from normsearch.errors import NormsearchError

app = typer.Typer(
    name="normsearch",
    help="Search per-layer normalizers that make a CNN hold its accuracy under domain shift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Speed benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()
if not console.is_terminal:
    console = Console(width=140)  # piped output: do not squeeze tables into 80 columns
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a NormsearchError raised by the library into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NormsearchError as error:
            err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"normsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Search per-layer normalizers that make a CNN hold its accuracy under domain shift."""


@bench_app.command("norms")
@user_errors
def bench_norms(
    repeats: Annotated[int, typer.Option(min=3, help="Timed repeats per layer (median reported).")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up calls.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, or auto (cuda when available, and cpu).")] = "auto",
    shapes: Annotated[
        str | None,
        typer.Option(help="N×C×H×W shapes, comma-separated, e.g. 8x16x8x8 (default: the standard three)."),
    ] = None,
) -> None:
    """Time every normalizer's train step and eval forward against nn.BatchNorm2d, in one run."""
    import torch

    from normsearch.bench import SHAPES, parse_shapes
    from normsearch.bench import bench_norms as run_bench

    shape_list = parse_shapes(shapes) if shapes else SHAPES

    if device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            raise NormsearchError("--device cuda: no CUDA device is available here; allowed: cpu, auto")
        devices = [device]
    else:
        raise NormsearchError(f"--device {device!r}: allowed: cpu, cuda, auto")
    for dev in devices:
        table = Table(
            title=f"normalizers vs nn.BatchNorm2d ({dev}, {threads} thread(s), median of {repeats})"
        )
        for column in ("layer", "shape", "train ms", "train ×BN", "target", "eval ms", "eval ×BN", "target"):
            table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
        misses = 0
        with console.status(f"benchmarking on {dev}...") as status:
            for row in run_bench(shape_list, repeats=repeats, warmup=warmup, threads=threads, device=dev):
                status.update(f"benchmarking on {dev}: {row.label} {row.shape}")
                misses += not row.meets_target
                mark = "" if row.meets_target else " [red]✗[/red]"
                table.add_row(
                    row.label,
                    "×".join(map(str, row.shape)),
                    f"{row.train_ms:.2f}",
                    f"{row.train_ratio:.2f}",
                    f"≤{row.train_target}" if row.train_target else "",
                    f"{row.eval_ms:.2f}",
                    f"{row.eval_ratio:.2f}",
                    (f"≤{row.eval_target}" if row.eval_target else "") + mark,
                )
        console.print(table)
        console.print(f"{misses} row(s) over target on {dev}" if misses else f"all targets met on {dev}")


@app.command("plan")
@user_errors
def plan(
    config: Annotated[Path, typer.Argument(help="An ArchConfig YAML/JSON (or an exported file).")],
) -> None:
    """Print every normalization slot of the network CONFIG describes, and a summary."""
    from normsearch.arch import load_arch
    from normsearch.models import build_model

    arch = load_arch(config)
    resolved = arch.resolve(str(config))
    table = Table(title=f"norm plan of {config}")
    for column in ("slot", "channels", "normalizer"):
        table.add_column(column, justify="right" if column == "channels" else "left")
    for slot, channels, normalizer in resolved.rows():
        table.add_row(slot, str(channels), normalizer)
    console.print(table)
    model = build_model(arch)
    params = sum(p.numel() for p in model.parameters())
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(resolved.kind_counts().items()))
    console.print(f"parameters: {params:,}   slots per kind: {kinds}   input: {resolved.input_norm}")
    if resolved.crossnorm:
        console.print(
            f"crossnorm policy: p={resolved.crossnorm.p}, active_num={resolved.crossnorm.active_num}"
        )


spaces_app = typer.Typer(help="Search spaces: list them, or validate one.", invoke_without_command=True)
app.add_typer(spaces_app, name="spaces")
data_app = typer.Typer(help="Domains: look at what a recipe trains and evaluates on.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _load(recipe_path: Path, **flags: Any):
    from normsearch.recipe import load_recipe

    return load_recipe(recipe_path, **flags)


def _space_table(space: Any) -> Table:
    size = space.size()
    table = Table(
        title=f"{space.name}: {size if size is not None else 'continuous'} configurations",
        title_justify="left",
    )
    for column in ("parameter", "values", "active when"):
        table.add_column(column)
    for row in space.summary():
        table.add_row(*row)
    return table


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

    recipe, space = _load(
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

        from normsearch.search import estimate_seconds

        console.print(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))
        console.print(_space_table(space))
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
    from normsearch.search import load_run

    recipe, space = load_run(run_dir)
    _search(recipe, space, run_dir, resume=True)


def _search(recipe: Any, space: Any, run_dir: Path, resume: bool) -> None:
    from rich.live import Live

    from normsearch.search import run_search

    console.print(f"[bold]{recipe.name}[/bold]: {recipe.data.describe()}")
    console.print(f"run folder {run_dir}; study {run_dir / 'study.db'}")
    with Live(_progress_view(None), console=console, refresh_per_second=2, transient=False) as live:
        run_search(recipe, space, run_dir, on_change=lambda p: live.update(_progress_view(p)), resume=resume)
    console.print()  # end the live line before the tables
    _show(run_dir, sort="target", top=None, show_all=False)


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


def _show(run_dir: Path, sort: str, top: int | None, show_all: bool) -> None:
    from normsearch.report import front_table, trials_table
    from normsearch.runs import compute_front, read_trials
    from normsearch.search import load_run

    recipe, _ = load_run(run_dir)
    trials = read_trials(run_dir)
    front = compute_front(trials, recipe.search.objectives)
    console.print(trials_table(trials, recipe, front, sort=sort, top=top, show_all=show_all))
    console.print(front_table(front, recipe))


@app.command("show")
@user_errors
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    sort: Annotated[str, typer.Option(help="target or source.")] = "target",
    top: Annotated[int | None, typer.Option(min=1, help="Show only the best N.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Include every trial state.")] = False,
) -> None:
    """The trials table (front members starred) and the Pareto front."""
    if sort not in ("target", "source"):
        raise NormsearchError(f"--sort {sort!r}: allowed: target, source")
    _show(run_dir, sort, top, show_all)


@app.command("pareto")
@user_errors
def pareto(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    plot: Annotated[Path | None, typer.Option(help="Write a PNG scatter of the front.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write an interactive HTML scatter.")] = None,
) -> None:
    """The front, its hypervolume and a terminal scatter; files when asked."""
    from normsearch.report import front_table, header, plot_front, scatter
    from normsearch.runs import compute_front, read_trials
    from normsearch.search import load_run

    recipe, _ = load_run(run_dir)
    front = compute_front(read_trials(run_dir), recipe.search.objectives)
    console.print(header(recipe), highlight=False)
    console.print(front_table(front, recipe))
    if front.hypervolume is not None:
        console.print(f"hypervolume {front.hypervolume:.1f} against reference {front.reference}")
    console.print(scatter(front), highlight=False)
    for path in (plot, html):
        if path is not None:
            plot_front(front, path, header(recipe))
            console.print(f"wrote {path}")


@app.command("export")
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Where to write the ArchConfig YAML.")],
    trial: Annotated[str | None, typer.Option(help="A trial id.")] = None,
    pick_rule: Annotated[str | None, typer.Option("--pick", help="knee | max-target | max-source.")] = None,
    max_source_drop: Annotated[
        float | None,
        typer.Option(help="With max-target: only trials within this many points of the best source."),
    ] = None,
    test: Annotated[
        bool, typer.Option("--test", help="Also print the trial's test-domain accuracy.")
    ] = False,
) -> None:
    """Write one trial's ArchConfig with provenance; `normsearch.build_model(FILE)` rebuilds it."""
    from normsearch.runs import choose, compute_front, find_trial, read_trials, write_export
    from normsearch.runs import export as make_export
    from normsearch.search import load_run

    if (trial is None) == (pick_rule is None):
        raise NormsearchError("export: give exactly one of --trial ID or --pick knee|max-target|max-source")
    recipe, _ = load_run(run_dir)
    trials = read_trials(run_dir)
    if trial is not None:
        chosen = find_trial(trials, trial)
    else:
        chosen = choose(compute_front(trials, recipe.search.objectives), pick_rule or "knee", max_source_drop)
    write_export(make_export(run_dir, recipe, chosen, pick_rule), out)
    metrics = chosen.metrics
    console.print(
        f"wrote {out}: trial {chosen.trial_id} ({chosen.status}), source val "
        f"{metrics.get('source_val_acc', float('nan')):.1f}, select target "
        f"{metrics.get('target_select_acc', float('nan')):.1f}"
    )
    if test:
        if not chosen.test:
            raise NormsearchError(f"trial {chosen.trial_id} has no test accuracies (it did not finish)")
        label = (
            "ORACLE (selected on these domains)"
            if recipe.data.selection == "oracle"
            else ("measured after selection")
        )
        parts = ", ".join(f"{k} {v:.1f}" for k, v in chosen.test.items())
        console.print(f"test accuracy, {label}: {parts}")


@app.command("train")
@user_errors
def train(
    config: Annotated[Path, typer.Argument(help="An ArchConfig or an exported file.")],
    recipe_path: Annotated[Path, typer.Option("--recipe", help="Recipe giving data and training.")],
    seeds: Annotated[int, typer.Option(min=1, help="Model seeds (recipe seed, +1, ...).")] = 3,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default: resources.cpu).")
    ] = None,
) -> None:
    """Retrain an architecture over several seeds; mean ± standard error on source, select and test."""
    from normsearch.arch import load_arch
    from normsearch.data.spec import load_data
    from normsearch.train import retrain_summary, train_candidate

    recipe, _ = _load(recipe_path)
    arch = load_arch(config)
    data = load_data(recipe.data)
    results = []
    with console.status("training...") as status:
        for k in range(seeds):
            label = f"seed {recipe.seed + k} ({k + 1}/{seeds})"
            status.update(f"training {label}")

            def show(m: dict[str, Any], label: str = label) -> None:
                status.update(
                    f"training {label}: epoch {m['epoch']}/{recipe.train.epochs}, source val "
                    f"{m['source_val_acc']:.1f}, select {m['target_select_acc']:.1f}"
                )

            results.append(
                train_candidate(
                    arch,
                    data,
                    recipe.data,
                    recipe.train,
                    seed=recipe.seed + k,
                    report=show,
                    threads=threads or recipe.resources.cpu,
                )
            )
    table = Table(
        title=f"{config} on {recipe.name}, {seeds} seed(s): {recipe.data.describe()}", title_justify="left"
    )
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


@spaces_app.callback()
@user_errors
def spaces(ctx: typer.Context) -> None:
    """List the spaces in search_spaces/ with their size and parameters."""
    if ctx.invoked_subcommand is not None:
        return
    from normsearch.space import list_spaces, load_space

    table = Table(title="search spaces", title_justify="left")
    for column in ("space", "configurations", "parameters", "explores"):
        table.add_column(column, overflow="fold")
    for path in list_spaces():
        space = load_space(str(path))
        size = space.size()
        table.add_row(
            space.name,
            str(size) if size is not None else "continuous",
            ", ".join(space.params),
            space.description,
        )
    console.print(table)


@spaces_app.command("validate")
@user_errors
def spaces_validate(
    path: Annotated[Path, typer.Argument(help="A search-space YAML.")],
    recipe_path: Annotated[
        Path | None, typer.Option("--recipe", help="Check against this recipe's model.")
    ] = None,
) -> None:
    """Parse a space and build the NormPlan of every configuration (or probes of continuous ones)."""
    from normsearch.arch import ArchConfig, Backbone
    from normsearch.space import load_space

    space = load_space(str(path), source=str(path))
    if recipe_path is not None:
        recipe, _ = _load(recipe_path)
        base = recipe.model
    else:
        preset = "resnet50" if space.requires.get("block") == "bottleneck" else "resnet-tiny"
        base = ArchConfig(backbone=Backbone(preset=preset))
    checked = space.check(base, str(path))
    console.print(_space_table(space))
    console.print(
        f"{path}: valid; built {checked} configuration(s) on {base.backbone.preset or 'the recipe model'}"
    )


@data_app.command("show")
@user_errors
def data_show(
    spec: Annotated[
        str, typer.Argument(metavar="SPEC_OR_RECIPE", help="synthetic, an image-folder root, or a recipe.")
    ],
    out: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write a PNG grid, one row per domain.")
    ] = None,
    per_row: Annotated[int, typer.Option(min=1, max=64, help="Images per domain in the grid.")] = 12,
) -> None:
    """Print the domains, their split sizes and class counts; write a sample grid for a person to look at."""
    import time

    from normsearch.data.spec import load_data
    from normsearch.data.view import domain_rows, save_grid, view_config

    config = view_config(spec)
    tic = time.perf_counter()
    data = load_data(config)
    seconds = time.perf_counter() - tic
    table = Table(
        title=f"{spec}: {len(data.domains)} domains, {data.num_classes} classes, loaded in {seconds:.1f} s",
        title_justify="left",
    )
    for column in ("domain", "role", "train", "val", "test", "per class (min-max)"):
        table.add_column(column, justify="left" if column in ("domain", "role") else "right")
    for row in domain_rows(data, config):
        table.add_row(*row)
    console.print(table)
    if out is not None:
        save_grid(data, config, out, per_row)
        console.print(f"wrote {out}")


def main() -> None:
    """Console-script entry point."""
    app()
