"""The `normsearch` command line: a thin Typer app. Parse, call the library, render with rich.

One module per command group: `run` (run, resume), `inspect` (plan, spaces, data, show, pareto, export),
`tools` (bench), `retrain` (train), `report` (confirm, collect, report, diagnose, dashboard), `deploy`
(finalize, evaluate, predict); `feedback` is the progress and Ctrl-C handling they share. Heavy imports
(torch, ray, optuna) happen inside commands so that `normsearch --help` stays fast. Library errors
(`NormsearchError`) become one red line and exit code 2.
"""

from __future__ import annotations

from normsearch.cli import deploy, inspect, report, retrain, run, tools  # noqa: F401  (importing registers the commands)
from normsearch.cli.common import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
