"""Looking at things: plans, spaces, domains, and finished runs (show, pareto, export)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from normsearch.cli.common import app, console, err_console, load_recipe_flags, space_table, user_errors
from normsearch.cli.feedback import working
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


@app.command("plan")
@user_errors
def plan(
    config: Annotated[Path, typer.Argument(help="An ArchConfig YAML/JSON (or an exported file).")],
    weights: Annotated[
        str | None,
        typer.Option(help="A checkpoint file or torchvision weights name: show what each slot inherits."),
    ] = None,
) -> None:
    """Print every normalization slot of the network CONFIG describes, and a summary; with --weights (or
    the config's backbone.weights), whether each slot is inherited, partly inherited or new."""
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
    from normsearch.arch import load_arch
    from normsearch.models import build_model

    arch = load_arch(config)
    resolved = arch.resolve(str(config))
    structure = arch.structure()
    model = build_model(arch, weights=weights)
    inheritance = getattr(model, "inheritance", None)
    title = f"norm plan of {config} ({structure.family}, {structure.num_stages} stages)"
    table = Table(title=title + (f" from {inheritance.source}" if inheritance else ""))
    columns = ("slot", "stage", "unit", "position", "channels", "normalizer")
    for column in columns + (("from checkpoint", "what") if inheritance else ()):
        table.add_column(column, justify="right" if column in ("channels", "stage") else "left")
    for slot, channels, normalizer in resolved.rows():
        info = structure.slots.get(slot)
        stage = "" if info is None or info.stage is None else str(info.stage)
        if info is None:  # an after-addition norm: its unit (or stage) is its module name's prefix
            stage = next((str(k) for k, (name, _) in structure.stage_posts.items() if name == slot), "")
        owner = slot.removesuffix(".post").removesuffix("_post")
        unit, position = (info.unit or "", info.position or "") if info else (owner, "post")
        got = inheritance.slots.get(slot) if inheritance else None
        row = (slot, stage, unit, position, str(channels), normalizer)
        table.add_row(*row, *((got.status, got.detail) if got else ()))
    if console.is_terminal:
        console.print(table)
    else:  # piped output: room for the structure and inheritance columns without wrapping a row
        from rich.console import Console

        Console(width=200, file=console.file).print(table)
    if not structure.traced:
        console.print(f"[yellow]structure unknown: {structure.note}; per-slot plans only[/yellow]")
    if inheritance:
        console.print(inheritance.summary(), highlight=False, soft_wrap=True)
        lists = (
            ("unused", inheritance.unused),
            ("missing", inheritance.missing),
            ("dropped", inheritance.dropped),
        )
        for label, keys in lists:
            if keys:
                console.print(f"{label}: {', '.join(keys)}", highlight=False, soft_wrap=True)
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


SHOW_ROWS = 50  # rows of `show`'s rich tables unless --top/--full: 1000 rows took seconds to render


def show_run(run_dir: Path, sort: str, top: int | None, show_all: bool, full: bool = False) -> None:
    """Print a run's trials table and front (also what `run` and `resume` end with). Unless `top` or
    `full` says otherwise, each table shows its best SHOW_ROWS rows and a line says how many more there
    are and how to list them (rendering a rich table of 1000 rows cost seconds; `bench driver`)."""
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
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
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
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
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
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
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
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
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
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


@spaces_app.callback()
@user_errors
def spaces(ctx: typer.Context) -> None:
    """List the shipped search spaces with their size and parameters."""
    if ctx.invoked_subcommand is not None:
        return
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
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
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
    from normsearch.arch import ArchConfig, Backbone
    from normsearch.space import load_space

    space = load_space(str(path), source=str(path))
    if recipe_path is not None:
        recipe, _ = load_recipe_flags(recipe_path)
        base = recipe.model
    else:
        preset = "resnet50" if space.requires.get("block") == "bottleneck" else "resnet-tiny"
        base = ArchConfig(backbone=Backbone(preset=preset))
    checked = space.check(base, str(path))
    console.print(space_table(space))
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
    # Imported here, not at the top: keeps torch and Ray out of `normsearch --help`.
    import time

    from normsearch.data.spec import load_data
    from normsearch.data.view import domain_rows, is_recipe_file, save_grid, view_config

    config = load_recipe_flags(Path(spec))[0].data if is_recipe_file(spec) else view_config(spec)
    tic = time.perf_counter()
    with working("data show", f"loading {spec} (decoding images the first time, then from the cache)"):
        data = load_data(config)
    seconds = time.perf_counter() - tic
    cap = f", at most {config.max_per_domain} images per domain" if config.max_per_domain else ""
    table = Table(
        title=f"{spec}: {len(data.domains)} domains, {data.num_classes} classes{cap}, "
        f"loaded in {seconds:.1f} s",
        title_justify="left",
    )
    for column in ("domain", "role", "train", "val", "test", "per class (min-max)"):
        table.add_column(column, justify="left" if column in ("domain", "role") else "right")
    for row in domain_rows(data, config):
        table.add_row(*row)
    console.print(table)
    if out is not None:
        from normsearch.run.files import os_errors

        with os_errors(out, "write here"):
            save_grid(data, config, out, per_row)
        console.print(f"wrote {out}")
