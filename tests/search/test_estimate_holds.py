"""The dry run's estimate holds: for two networks of different cost (the quickstart's resnet-mini and the
deeper resnet-tiny), the estimated wall time of a tiny search is within 2x of the wall time the same
`normsearch run` then takes, measured right after it on the same machine (at about the same load)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import Tiny

pytestmark = pytest.mark.slow

ENV = {**os.environ, "COLUMNS": "200"}
# Two trials, one at a time, one thread each: the quickstart's search at the suite's tiny budget.
TWO_TRIALS = {"search.num_samples": 2, "search.max_concurrent": 1}


def _normsearch(*args: object) -> tuple[str, float]:
    """Run the CLI as a user would; its output and wall seconds (the process's whole life)."""
    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "normsearch", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=1800,
    )
    wall = time.perf_counter() - tic
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, wall


@pytest.mark.parametrize("preset", ["resnet-mini", "resnet-tiny"])
def test_the_dry_run_estimate_is_within_2x_of_the_run(preset: str, tiny: Tiny, tmp_path: Path) -> None:
    flags = [*tiny.but(TWO_TRIALS), "--set", f"model.backbone.preset={preset}"]
    dry, _ = _normsearch("run", "recipes/quickstart.yaml", *flags, "--dry-run")
    found = re.search(r"about [\d.]+ min \((\d+) s\) in all", dry)
    assert found is not None, dry[-2000:]
    estimated = float(found.group(1))
    load_before = os.getloadavg()[0]
    _, measured = _normsearch("run", "recipes/quickstart.yaml", *flags, "--output", tmp_path / "run")
    ratio = measured / estimated
    print(
        f"\n{preset}: estimated {estimated:.0f} s, measured {measured:.0f} s (ratio {ratio:.2f}); "
        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        + next(line for line in dry.splitlines() if line.startswith("measured on this machine"))
    )
    assert estimated / 2 <= measured <= estimated * 2
