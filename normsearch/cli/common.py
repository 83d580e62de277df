"""The Typer app, the consoles and the one-red-line error wrapper that every command module shares.

`load_recipe_flags` imports the recipe inside the function, so that `normsearch --help` (which imports
this module) loads neither torch nor Ray."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from normsearch import __version__
from normsearch.errors import NormsearchError


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Typer ≥ 0.20 raises its own vendored click's exceptions (under `typer.TyperException`); older
    Typer raises click's. Both are caught."""
    found: list[type[BaseException]] = []
    if hasattr(typer, "TyperException"):
        found.append(typer.TyperException)
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


USAGE_ERRORS = _usage_error_types()


class OneLineErrors(TyperGroup):
    """The root command group: a usage error (an unknown option, a missing argument, a bad value for a
    typed option) is one red line naming the command's help, exit code 2, like every other bad input."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except USAGE_ERRORS as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as asked for
                error.show()
                sys.exit(error.exit_code)
            where = f" (see `{error.ctx.command_path} --help`)" if getattr(error, "ctx", None) else ""
            # pydantic coercion errors arrive as "Value error, ...": the message is the useful part
            print_error(f"{error.format_message().replace('Value error, ', '')}{where}")
            sys.exit(error.exit_code)
        except typer.Abort:
            err_console.print("[yellow]aborted[/yellow]")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="normsearch",
    help="Search per-layer normalizers that make a CNN hold its accuracy under domain shift.",
    cls=OneLineErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(
    help="Speed benchmarks.", no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]}
)
app.add_typer(bench_app, name="bench")


console = Console()
if not console.is_terminal:
    console = Console(width=140)  # piped output: do not squeeze tables into 80 columns
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def print_error(message: str) -> None:
    """One red ``error:`` line. The message is the user's own text (paths, domain names, values), so it is
    printed literally: a ``[tag]`` is not Rich markup and a ``:name:`` is not an emoji code."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)


def user_errors(fn: F) -> F:
    """Turn a NormsearchError raised by the library into one red line and exit code 2 (or the error's own
    `exit_code`: 1 for Ray not starting in time, which is not bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NormsearchError as error:
            print_error(str(error))
            raise typer.Exit(getattr(error, "exit_code", 2)) from None

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


def load_recipe_flags(recipe_path: Path, **flags: Any):
    from normsearch.recipe import load_recipe

    return load_recipe(recipe_path, **flags)


def space_table(space: Any) -> Table:
    size = space.size()
    table = Table(
        title=f"{space.name}: {size if size is not None else 'continuous'} configurations",
        title_justify="left",
    )
    for column in ("parameter", "values", "active when"):
        table.add_column(column)
    for row in space.summary():
        table.add_row(*row)
    if getattr(space, "policies", None):  # evaluated on each trained network, not searched
        table.add_row("test-time statistics", " | ".join(space.policies), "evaluated on every network")
    return table
