"""Feedback for every command that can take longer than a few seconds: a Rich bar or spinner on a terminal;
when the output is not a terminal (a pipe, a log file, CI), plain lines: one per change, and a "still
working" line at least every HEARTBEAT_SECONDS, so that a log never goes silent for a minute. Ctrl-C in a
long command ends with `interrupted`: exit code 130, what was kept, and the command that continues."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from normsearch.cli.common import console

HEARTBEAT_SECONDS = 30.0  # piped output: a line at least this often while a command works
# Piped output: a step's first line waits this long, so a command that ends at once (a bad input's one error
# line, a quick answer) prints nothing else; anything longer is announced within a second or two.
GRACE_SECONDS = 1.5


def progress_bar(stream: Console | None = None) -> Any:
    """A transient Rich progress bar (spinner, description, bar, done/total, elapsed) on `stream`."""
    # Imported here, not at the top: keeps the CLI's start fast.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stream or console,
        transient=True,
    )


class Feedback:
    """Progress for a long command: a rich bar on a terminal; when the output is not a terminal, one plain
    line per change (the first once the command has worked GRACE_SECONDS) and a "still working" line at
    least every HEARTBEAT_SECONDS. `update(message)` is the
    same call either way (and is thread-safe: Ray Tune's callbacks call it from its own thread)."""

    def __init__(self, command: str, message: str, stream: Console | None = None) -> None:
        self.stream = stream or console  # stderr when stdout carries a machine-readable table
        self.command, self.started = command, time.monotonic()
        self.plain = not self.stream.is_terminal
        self.last_line = self.started
        self.message = message
        self.lock = threading.Lock()
        self.bar: Any = None
        self.task: Any = None

    def update(self, message: str, completed: float | None = None, total: float | None = None) -> None:
        """Show `message` (and, on a terminal, the bar at `completed` of `total`)."""
        with self.lock:
            changed, self.message = message != self.message, message
            if self.bar is not None:
                self.bar.update(self.task, description=message, completed=completed, total=total)
            elif changed and self.plain and time.monotonic() - self.started >= GRACE_SECONDS:
                self._line(message)

    def _line(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.print(f"{self.command}: {message} ({elapsed:.0f} s)", highlight=False, soft_wrap=True)
        self.stream.file.flush()
        self.last_line = time.monotonic()

    @contextmanager
    def shown(self) -> Iterator[Feedback]:
        """Show the progress while the block runs (the bar, or the plain lines and their heartbeat)."""
        if not self.plain:
            with progress_bar(self.stream) as bar:
                self.bar, self.task = bar, bar.add_task(self.message, total=None)
                try:
                    yield self
                finally:
                    self.bar = None
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(0.5):
                with self.lock:
                    now = time.monotonic()
                    if self.last_line == self.started:  # nothing said yet
                        if now - self.started >= GRACE_SECONDS:  # and still working: say what it does
                            self._line(self.message)
                    elif now - self.last_line >= HEARTBEAT_SECONDS:
                        self._line(f"still working: {self.message}")

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


@contextmanager
def working(command: str, message: str, stream: Console | None = None) -> Iterator[Feedback]:
    """A spinner with `message` on a terminal (like `console.status`), plain lines when piped; the yielded
    object's `update(message)` changes the message either way."""
    with Feedback(command, message, stream).shown() as feedback:
        yield feedback


def interrupted(kept: str, command: str) -> typer.Exit:
    """Print the interruption line (what was kept, the command that continues); the exit to raise."""
    if console.is_terminal:  # a live line may still hold the cursor: the interruption is a line of its own
        console.print()
    console.print(
        f"[yellow]interrupted[/yellow]: {kept}. Continue with: {command}", highlight=False, soft_wrap=True
    )
    return typer.Exit(130)


def quoted(*parts: Any) -> str:
    """A command line's words, each quoted for the shell where it needs to be."""
    return " ".join(shlex.quote(str(p)) for p in parts)
