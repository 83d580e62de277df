"""The `normsearch` command line: a thin Typer app. Parse, call the library, render with rich.

One module per command group: `run` (run, resume), `inputs` (plan, spaces, data), `inspect` (show,
pareto, export), `tools` (bench), `retrain` (train), `report` (confirm, collect, report, diagnose,
dashboard), `deploy` (finalize, evaluate, predict); `feedback` is the progress and Ctrl-C handling they
share. Heavy imports (torch, ray, optuna) happen inside commands so that `normsearch --help` stays fast.
Library errors (`NormsearchError`) become one red line and exit code 2.
"""

from __future__ import annotations

# Importing registers the commands; `normsearch --help` lists them in this order: a run's life from search to
# shipping, then the tools.
# isort: off
from normsearch.cli import run, inputs, inspect, report, deploy, retrain, tools  # noqa: F401
# isort: on
from normsearch.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
