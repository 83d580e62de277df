"""Plain progress lines when the output is not a terminal: nothing from a command that ends at once (a bad
input stays one line), the step announced once it has worked GRACE_SECONDS, a change said when it comes."""

from __future__ import annotations

import io
import time

from rich.console import Console

from normsearch.cli.feedback import GRACE_SECONDS, Feedback


def _piped() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_a_step_that_ends_at_once_prints_nothing() -> None:
    console, out = _piped()
    with Feedback("run", "reading r.yaml", console).shown() as feedback:
        feedback.update("checking the data")
    assert out.getvalue() == ""


def test_a_longer_step_is_announced_once_and_each_change_after_it() -> None:
    console, out = _piped()
    with Feedback("run", "reading r.yaml", console).shown() as feedback:
        time.sleep(GRACE_SECONDS + 1.0)
        feedback.update("checking the data")
        feedback.update("checking the data")  # no change: no line
    lines = out.getvalue().splitlines()
    assert [line.rsplit(" (", 1)[0] for line in lines] == ["run: reading r.yaml", "run: checking the data"]
