"""Feedback when the output is a pipe (a log file, CI): every long command prints a plain progress line
within a minute, and Ctrl-C (SIGINT) ends it with exit code 130, an "interrupted" line saying what was kept,
and the command that continues. Driven as subprocesses, as a user's shell would: `run` (then its `resume`,
which leaves one finished tiny run), `train`, `confirm` and `finalize` on that run."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import Tiny

pytestmark = pytest.mark.slow

FIRST_LINE_SECONDS = 60.0  # the bound: a progress line within a minute of the start
TRAINING_SECONDS = 600.0  # the shared 2-core machine may be very busy: reaching an epoch can take minutes
# One trial of one configuration, one thread: the quickstart recipe at the suite's tiny budget.
ONE_TRIAL = {"search.num_samples": 1, "search.max_concurrent": 1}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


class Piped:
    """A normsearch subprocess with stdout and stderr to one pipe, its lines read on a thread."""

    def __init__(self, *args: object) -> None:
        self.command = [sys.executable, "-m", "normsearch", *map(str, args)]
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.started = time.monotonic()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, match: Callable[[str], bool], seconds: float, what: str) -> str:
        """The first line (from the start of the output) for which `match` holds, within `seconds`."""
        deadline = time.monotonic() + seconds
        for line in self.seen:
            if match(line):
                return line
        while True:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                ended = self.process.poll() is not None and not self.reader.is_alive()
                if ended or time.monotonic() > deadline:
                    self.stop()
                    why = f"ended ({self.process.returncode})" if ended else f"not in {seconds:.0f} s"
                    raise AssertionError(f"no {what}, {why}: {''.join(self.seen)[-3000:]}") from None
                continue
            self.seen.append(line)
            if match(line):
                return line

    def interrupt(self) -> str:
        """SIGINT (Ctrl-C), then everything it printed; asserts the exit code 130."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=300)
        self.reader.join(timeout=30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        output = "".join(self.seen)
        assert self.process.returncode == 130, output[-3000:]
        return output

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)


def first_line_in_time(piped: Piped, command: str) -> None:
    """A plain progress line of `command` arrives within FIRST_LINE_SECONDS."""
    line = piped.wait_for(lambda s: s.startswith(f"{command}: "), FIRST_LINE_SECONDS, "progress line")
    assert time.monotonic() - piped.started < FIRST_LINE_SECONDS + 1, line


def continue_line(output: str, command: str) -> list[str]:
    """The interruption line's command, split as a shell would; asserts the line says what was kept."""
    found = re.search(r"^.*interrupted\b(.*)Continue with: (.*)$", output, re.MULTILINE)
    assert found is not None, output[-3000:]
    assert found.group(1).strip(" .:("), found.group(0)  # what was kept, between the two
    again = shlex.split(found.group(2))
    assert again[:2] == ["normsearch", command], found.group(0)
    return again


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny: Tiny) -> Path:
    """`run` piped and interrupted during its trial's first epochs, then `resume` to the end: the
    finished tiny run that confirm and finalize start from."""
    out = tmp_path_factory.mktemp("piped") / "run"
    piped = Piped("run", "recipes/quickstart.yaml", *tiny.but(ONE_TRIAL), "--output", out)
    try:
        first_line_in_time(piped, "run")
        piped.wait_for(lambda s: bool(re.search(r"\b1 running\b", s)), TRAINING_SECONDS, "running trial")
        output = piped.interrupt()
    finally:
        piped.stop()
    assert continue_line(output, "resume") == ["normsearch", "resume", str(out)]
    resumed = subprocess.run(
        [sys.executable, "-m", "normsearch", "resume", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=1200,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return out


def test_run_is_piped_and_interrupted(finished_run: Path) -> None:
    assert (finished_run / "trials.jsonl").is_file()  # the fixture asserted the lines; the run resumed


def test_train_prints_epochs_when_piped_and_ctrl_c_gives_the_remaining_seeds(tiny: Tiny) -> None:
    piped = Piped("train", "examples/bn.yaml", "--recipe", "recipes/quickstart.yaml", "--seeds", 2, *tiny)
    try:
        first_line_in_time(piped, "train")
        piped.wait_for(lambda s: "epoch 1/" in s, TRAINING_SECONDS, "epoch line")
        output = piped.interrupt()
    finally:
        piped.stop()
    again = continue_line(output, "train")
    left, first = int(again[again.index("--seeds") + 1]), int(again[again.index("--first-seed") + 1])
    assert first in (0, 1) and left + first == 2  # the seeds not finished: up to the last asked for, seed 1
    assert again[again.index("--recipe") + 1] == "recipes/quickstart.yaml" and "train.epochs=2" in again


def test_confirm_prints_epochs_when_piped_and_ctrl_c_says_how_to_continue(finished_run: Path) -> None:
    piped = Piped("confirm", finished_run, "--trials", "t000", "--seeds", 1)
    try:
        first_line_in_time(piped, "confirm")
        piped.wait_for(lambda s: "epoch 1/" in s, TRAINING_SECONDS, "epoch line")
        output = piped.interrupt()
    finally:
        piped.stop()
    assert continue_line(output, "confirm")[2:] == [str(finished_run), "--trials", "t000", "--seeds", "1"]


def test_finalize_prints_epochs_when_piped_and_ctrl_c_says_how_to_continue(
    finished_run: Path, tmp_path: Path
) -> None:
    piped = Piped("finalize", finished_run, "--trial", "t000", "-o", tmp_path / "model")
    try:
        first_line_in_time(piped, "finalize")
        piped.wait_for(lambda s: "epoch 1/" in s, TRAINING_SECONDS, "epoch line")
        output = piped.interrupt()
    finally:
        piped.stop()
    assert continue_line(output, "finalize")[2] == str(finished_run)
