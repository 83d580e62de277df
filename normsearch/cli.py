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


def main() -> None:
    """Console-script entry point."""
    app()
