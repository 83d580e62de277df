"""Tools: benchmarks and retraining one architecture over seeds.

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from normsearch.cli.common import bench_app, console, load_recipe_flags, user_errors
from normsearch.cli.feedback import working
from normsearch.errors import NormsearchError


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@bench_app.command("data")
@user_errors
def bench_data(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="A recipe YAML.")],
    batches: Annotated[int, typer.Option(min=1, help="Timed batches (median reported).")] = 5,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default: resources.cpu).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. --set data.size=224.")
    ] = None,
) -> None:
    """Images/s of the input pipeline and of the recipe's train step, same threads, one run."""
    from normsearch.bench.data import bench_data as run_bench

    recipe, _ = load_recipe_flags(recipe_path, overrides=overrides)
    with working("bench data", "decoding the data and timing the pipeline and the train step"):
        result = run_bench(recipe, batches=batches, threads=threads)
    table = Table(
        title=(
            f"{recipe.name}: {recipe.model.backbone.preset or 'model'} at {result.size} px, batch "
            f"{result.batch_size}, {result.threads} thread(s), augmentation {result.augment}, median of "
            f"{result.batches} batches (data loaded in {result.load_seconds:.1f} s)"
        ),
        title_justify="left",
    )
    for column in ("stage", "images/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    table.add_row(
        "input pipeline (slice, augment per image, standardise)", f"{result.pipeline_images_per_s:,.0f}"
    )
    if result.batched_images_per_s is not None:
        table.add_row(
            "input pipeline (slice, augment batched, standardise)", f"{result.batched_images_per_s:,.0f}"
        )
    table.add_row("train step (forward, backward, optimizer)", f"{result.step_images_per_s:,.1f}")
    console.print(table)
    verdict = (
        "the pipeline is not the bottleneck"
        if result.ratio >= 3
        else "[red]the pipeline limits training[/red]"
    )
    console.print(f"pipeline / train step = {result.ratio:.1f}x: {verdict} (target >= 3x)")
    if result.batched_images_per_s is not None:
        faster = "batched" if result.batched_images_per_s > result.pipeline_images_per_s else "per-image"
        console.print(
            f"batched / per-image augmentation = "
            f"{result.batched_images_per_s / result.pipeline_images_per_s:.2f}x here: {faster} is faster"
        )


@bench_app.command("gpu")
@user_errors
def bench_gpu(
    device: Annotated[
        str, typer.Option(help="cuda (cuda:N), or cpu: the same code paths at toy sizes (a dry run).")
    ] = "cuda",
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown table to this file.")] = None,
) -> None:
    """On a CUDA device: normalizers vs BatchNorm (fp32/bf16, channels_last), the input pipeline vs the
    ResNet-18/50 train steps, four trials sharing the device vs one; a Markdown table with the targets."""
    from normsearch.bench.gpu import bench_gpu as run_bench
    from normsearch.bench.gpu import markdown, require_cuda

    require_cuda(device)  # before any work: no CUDA is one line
    with working("bench gpu", f"benchmarking on {device}"):
        table = markdown(run_bench(device))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
    print(table)


@bench_app.command("norms")
@user_errors
def bench_norms(
    repeats: Annotated[int, typer.Option(min=3, help="Timed repeats per layer (median reported).")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up calls.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    device: Annotated[Device, typer.Option(help="auto: cpu, and cuda when available.")] = Device.auto,
    shapes: Annotated[
        str | None,
        typer.Option(help="N×C×H×W shapes, comma-separated, e.g. 8x16x8x8 (default: the standard three)."),
    ] = None,
) -> None:
    """Time every normalizer's train step and eval forward against nn.BatchNorm2d, in one run."""
    import torch

    from normsearch.bench.norms import SHAPES, parse_shapes
    from normsearch.bench.norms import bench_norms as run_bench

    shape_list = parse_shapes(shapes) if shapes else SHAPES

    if device is Device.auto:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        if device is Device.cuda and not torch.cuda.is_available():
            raise NormsearchError("--device cuda: no CUDA device is available here; allowed: cpu, auto")
        devices = [device.value]
    for dev in devices:
        table = Table(
            title=f"normalizers vs nn.BatchNorm2d ({dev}, {threads} thread(s), median of {repeats})"
        )
        for column in ("layer", "shape", "train ms", "train ×BN", "target", "eval ms", "eval ×BN", "target"):
            table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
        misses = 0
        with working("bench norms", f"benchmarking on {dev}") as status:
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


@bench_app.command("efficiency")
@user_errors
def bench_efficiency(
    recipe_path: Annotated[
        Path,
        typer.Argument(
            metavar="RECIPE",
            help="A recipe with a finite space, e.g. recipes/bench_efficiency_ibn_ratio.yaml.",
        ),
    ],
    table: Annotated[
        Path | None,
        typer.Option(
            help="The tabulated space (JSON); missing rows are trained first (default: OUT/<name>.json)."
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Model seeds the space is tabulated over.")] = 2,
    search_seeds: Annotated[
        int, typer.Option(min=1, help="Search seeds every method is replayed with.")
    ] = 20,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Trained trials per replay (default: search.num_samples).")
    ] = None,
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Where the table, CSV, PNG and Markdown go.")
    ] = Path("benchmarks/efficiency"),
) -> None:
    """Tabulate a space once, replay every search method on it; hypervolume against trial-epochs."""
    from normsearch.bench.efficiency import run_bench, tabulate

    recipe, _ = load_recipe_flags(recipe_path)
    table_path = table or out / f"{recipe.name}.json"
    with working("bench efficiency", "tabulating") as status:
        tabulate(
            recipe_path, table_path, seeds=seeds, progress=lambda line: status.update(f"tabulating {line}")
        )
        status.update("replaying...")
        result = run_bench(
            recipe_path,
            table_path,
            out,
            search_seeds=search_seeds,
            max_trials=trials,
            progress=lambda line: status.update(line),
        )
    summary = result.summary
    grid = summary.grid_hypervolume
    rendered = Table(
        title=(
            f"{summary.table}: full grid {summary.grid_epochs} trial-epochs, hypervolume {grid:.1f}; "
            f"HV in % of the full grid's at the same table seed, median over {summary.search_seeds} search "
            "seeds"
        ),
        title_justify="left",
    )
    for column in ("method", "final HV % of grid", "epochs to grid −1 %", "fraction of grid", "epochs spent"):
        rendered.add_column(column, justify="left" if column == "method" else "right")
    ordered = sorted(
        summary.methods.values(), key=lambda m: (m.epochs_to_grid is None, m.epochs_to_grid or 0)
    )
    for m in ordered:
        reached = m.epochs_to_grid is not None
        rendered.add_row(
            m.method,
            f"{m.final_median:.1f}",
            str(m.epochs_to_grid) if reached else "not reached",
            f"{summary.fraction(m.epochs_to_grid):.2f}" if reached else "",
            f"{m.median_epochs:.0f}",
        )
    console.print(rendered)
    for line in result.markdown_file.read_text().splitlines():
        if line.startswith("- target"):
            console.print(line)
    console.print(f"wrote {table_path}, {result.csv}, {result.png}, {result.markdown_file}")


@bench_app.command("search")
@user_errors
def bench_search(
    recipe_path: Annotated[
        Path, typer.Argument(metavar="RECIPE", help="A recipe giving the trial budget.")
    ] = Path("recipes/bench_search.yaml"),
    trials: Annotated[int, typer.Option(min=1, help="Trials, each a distinct IBN-a ratio.")] = 20,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Trials at once in the search (2-core machine: 1).")
    ] = 1,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads per trial (default: resources.cpu).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="train.epochs of every trial.")] = None,
    n_train: Annotated[int | None, typer.Option(min=10, help="data.n_train of every trial.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="The search's run folder (default: runs/...).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. --set data.n_val=50.")
    ] = None,
) -> None:
    """Search overhead: the same N trials through `normsearch run` and sequentially in this process."""
    from normsearch.bench.search import TARGET_OVERHEAD, TARGET_TRIAL_SECONDS, TARGET_TRIALS
    from normsearch.bench.search import bench_search as run_bench
    from normsearch.run.folder import default_output

    extra = [f"train.epochs={epochs}"] * (epochs is not None) + [f"data.n_train={n_train}"] * (
        n_train is not None
    )
    recipe, _ = load_recipe_flags(recipe_path, overrides=[*(overrides or []), *extra])
    run_dir = output or default_output(recipe)
    with working("bench search", "sequential run") as status:
        result = run_bench(
            recipe, run_dir, trials=trials, concurrency=concurrency, threads=threads, on_step=status.update
        )
    table = Table(
        title=(
            f"{recipe.name}: {recipe.data.describe()}; {result.concurrency} trial(s) at once, "
            f"{result.threads} thread(s) each; Ray start-up "
            f"{'included' if result.ray_started else 'not included (Ray was running)'}"
        ),
        title_justify="left",
    )
    columns = ("trials", "s / trial", "search wall s", "Σ compute s", "start-up s", "overhead", "target")
    for column in (*columns, "not training"):
        table.add_column(column, justify="right")
    verdict = "[green]met[/green]" if result.meets_target else "[red]missed[/red]"
    table.add_row(
        str(result.trials),
        f"{result.seconds_per_trial:.1f}",
        f"{result.search_wall:.1f}",
        f"{result.compute:.1f}",
        f"{result.startup:.1f}",
        f"{100 * result.overhead:.1f} %",
        f"≤{100 * TARGET_OVERHEAD:.0f} % {verdict}",
        f"{result.idle:.1f} s = {100 * result.idle_share:.1f} %",
    )
    console.print(table)
    console.print(
        f"overhead = (search wall - Σ compute / {result.concurrency}) / search wall; Σ compute from the "
        f"sequential run (trials {min(result.trial_seconds):.1f}-{max(result.trial_seconds):.1f} s); the "
        f"search's own trials spent {sum(result.search_trial_seconds):.1f} s in their epochs; run folder "
        f"{result.run_dir}",
        highlight=False,
    )
    console.print(
        "not training: the search's wall outside every trial's span (first epoch to end), from its own "
        "records; a lower bound of the overhead that a change of load between the two runs cannot shift",
        highlight=False,
    )
    if not result.at_target_scale:
        console.print(
            f"[yellow]the target is stated for >= {TARGET_TRIALS} trials of >= {TARGET_TRIAL_SECONDS:.0f} s "
            "each; this run is smaller, so its verdict is not the target's[/yellow]"
        )


@bench_app.command("driver")
@user_errors
def bench_driver(
    trials: Annotated[
        list[int] | None, typer.Option("--trials", min=2, help="N (repeatable; default 100, 300, 1000).")
    ] = None,
    concurrency: Annotated[
        list[int] | None, typer.Option("--concurrency", min=1, help="Trials at once (default 1 and 8).")
    ] = None,
    algorithms: Annotated[
        list[str] | None, typer.Option("--algorithm", help="nsga2, tpe, random (default: all three).")
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where the run folders and driver.json go.")
    ] = Path("benchmarks/driver"),
) -> None:
    """The driver's cost at many trials: null-cost trials through the real search path (Ray, Tune, the
    study on disk, records), per algorithm and concurrency: CPU and ask time per trial, peak RSS; then
    show, collect and report on the largest run folder."""
    from normsearch.bench.driver import ALGORITHMS, verdicts
    from normsearch.bench.driver import bench_driver as run_bench

    chosen = algorithms or list(ALGORITHMS)
    unknown = sorted(set(chosen) - set(ALGORITHMS))
    if unknown:
        raise NormsearchError(f"--algorithm {unknown[0]}: allowed {', '.join(ALGORITHMS)}")
    sizes = sorted(set(trials or [100, 300, 1000]))
    at_once = sorted(set(concurrency or [1, 8]))
    with working("bench driver", "bench driver") as status:
        result = run_bench(sizes, at_once, chosen, output, on_step=status.update)
    title = f"null-cost trials; load average {result.load} (shared machine)"
    table = Table(title=title, title_justify="left")
    columns = ("algorithm", "at once", "trials", "finished", "wall s", "CPU ms/trial", "ask ms", "peak MB")
    for column in columns:
        table.add_column(column, justify="right")
    for r in result.runs:
        cells = (r.algorithm, r.concurrency, r.trials, r.finished, f"{r.wall_s:.1f}")
        table.add_row(
            *map(str, cells), f"{r.cpu_ms_per_trial:.1f}", f"{r.ask_ms:.2f}", f"{r.peak_rss_mb:.0f}"
        )
    console.print(table)
    for line in verdicts(result):
        console.print(line, highlight=False)
    console.print(f"results in {output / 'driver.json'}", highlight=False)
