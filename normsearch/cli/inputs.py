"""Looking at inputs before a run: a network's norm plan (`plan`), the search spaces (`spaces`,
`spaces validate`) and the domains a recipe trains and evaluates on (`data show`).

Each command imports its implementation inside its function, so that `normsearch --help` (which
imports every command module) loads neither torch nor Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from normsearch.cli.common import app, console, load_recipe_flags, space_table, user_errors
from normsearch.cli.feedback import working


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


@spaces_app.callback()
@user_errors
def spaces(ctx: typer.Context) -> None:
    """List the shipped search spaces with their size and parameters."""
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
