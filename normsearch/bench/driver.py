"""The driver's own cost at hundreds of trials: `normsearch bench driver --trials N`.

Each measurement is one `run_search` in a fresh process (so that its peak RSS is its own), over a continuous
space (IBN-a's IN ratio, so no configuration repeats), where every trial is *null-cost*: the trainable
reports final metrics at once instead of training. Everything else is the real path: Ray, Tune, the
searcher asking the Optuna study on disk (SQLite), the ledger writing records and telling the study. Per
run it reports the driver's CPU seconds per trial (this process only: Ray's own processes are not the
driver), the study's mean `ask` time, the peak RSS, and the wall; on the largest run folder, the wall of
`show`, `collect` and `report` as the CLI runs them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from normsearch.config import read_mapping, validate
from normsearch.metrics import SOURCE_VAL_ACC, TARGET_SELECT_ACC
from normsearch.recipe import Recipe
from normsearch.search.preflight import Preflight
from normsearch.search.ray import start_ray
from normsearch.search.tuner import run_search
from normsearch.space import Space

ALGORITHMS = ("nsga2", "tpe", "random")
TARGET_CPU_MS = 50.0  # per trial at 1000 trials, NSGA-II and random
TARGET_GROWTH_MB = 50.0  # peak RSS from 100 to 1000 trials
TARGET_SHOW_S = 2.0
TARGET_REPORT_S = 10.0
SPACE = {
    "fixed": {"norm.ibn.variant": "a", "norm.ibn.stages": [1, 2]},
    "params": {"ratio": {"type": "float", "low": 0.0, "high": 1.0, "path": "norm.ibn.ratio"}},
}


def null_trial(config: dict[str, Any], recipe_json: str, space_json: str) -> None:
    """A trial that trains nothing: final metrics at once, a smooth function of the IN ratio (a two-objective
    trade-off, so the samplers have something to model)."""
    ratio = float(config.get("ratio", 0.0))
    tune.report(
        {
            "epoch": 1,
            "final": True,
            SOURCE_VAL_ACC: 90.0 - 20.0 * ratio**2,
            TARGET_SELECT_ACC: 40.0 + 30.0 * ratio - 10.0 * ratio**2,
        }
    )


def recipe_text(algorithm: str, trials: int, concurrency: int, space: Path) -> str:
    """The benchmark's recipe: the tiny built-in data (only checked, never trained on)."""
    return (
        f"name: driver-{algorithm}\nseed: 0\n"
        "data: {dataset: synthetic, n_train: 64, n_val: 32, n_test: 32}\n"
        "model: {backbone: {preset: resnet-mini}}\ntrain: {epochs: 1}\n"
        f"search: {{space: {space}, algorithm: {algorithm}, num_samples: {trials}, "
        f"max_concurrent: {concurrency}}}\n"
        "resources: {cpu: 1}\n"
    )


@dataclass
class DriverRun:
    """One measured run_search."""

    algorithm: str
    trials: int
    concurrency: int
    finished: int
    wall_s: float
    cpu_ms_per_trial: float
    ask_ms: float  # mean Study.ask
    peak_rss_mb: float
    run_dir: str


def measure_one(algorithm: str, trials: int, concurrency: int, run_dir: Path) -> DriverRun:
    """Run one null-cost search in this process and measure it (see the module docstring)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    space_path = run_dir.parent / f"{run_dir.name}-space.yaml"
    space_path.write_text(json.dumps(SPACE))
    recipe_path = run_dir.parent / f"{run_dir.name}-recipe.yaml"
    recipe_path.write_text(recipe_text(algorithm, trials, concurrency, space_path))
    recipe = validate(Recipe, read_mapping(recipe_path), str(recipe_path))
    space = validate(Space, SPACE, str(space_path)).model_copy(update={"name": "ibn-ratio-continuous"})
    checked = Preflight(trials, None, 0, {}, 0, 0.0)  # nothing to check: the trials train nothing

    asks: list[float] = []
    ask = optuna.study.Study.ask

    def timed_ask(self, *args: Any, **kwargs: Any):
        tic = time.perf_counter()
        try:
            return ask(self, *args, **kwargs)
        finally:
            asks.append(time.perf_counter() - tic)

    start_ray(None)  # Ray's start-up is not the per-trial cost: started before the clocks
    optuna.study.Study.ask = timed_ask  # instrumentation only: the same ask, timed
    cpu0 = time.process_time()
    tic = time.perf_counter()
    try:
        outcome = run_search(recipe, space, run_dir, checked=checked, trainable=null_trial)
    finally:
        optuna.study.Study.ask = ask
    wall = time.perf_counter() - tic
    cpu = time.process_time() - cpu0
    finished = outcome.progress.done if outcome.progress else 0
    return DriverRun(
        algorithm,
        trials,
        concurrency,
        finished,
        wall,
        1000 * cpu / max(trials, 1),
        1000 * sum(asks) / max(len(asks), 1),
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        str(run_dir),
    )


def _child(algorithm: str, trials: int, concurrency: int, run_dir: Path) -> DriverRun:
    """`measure_one` in a fresh process (its own Ray, its own peak RSS)."""
    code = (
        "import json, sys; from dataclasses import asdict; from pathlib import Path; "
        "from normsearch.bench.driver import measure_one; "
        f"r = measure_one({algorithm!r}, {trials}, {concurrency}, Path({str(run_dir)!r})); "
        "print('RESULT ' + json.dumps(asdict(r)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"bench driver run {algorithm} x{trials} failed: {' | '.join(tail)}")
    return DriverRun(**json.loads(lines[-1].removeprefix("RESULT ")))


def time_commands(run_dir: Path, out: Path) -> dict[str, float]:
    """Wall seconds of `show`, `collect` and `report` on a run folder, each as its own CLI process."""
    commands = {
        "show": ["show", str(run_dir)],
        "collect": ["collect", str(run_dir), "--format", "csv", "-o", str(out / "collect.csv")],
        "report": ["report", str(run_dir), "-o", str(out / "report.html")],
    }
    seconds = {}
    for name, args in commands.items():
        tic = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "normsearch", *args], capture_output=True, text=True)
        seconds[name] = time.perf_counter() - tic
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"normsearch {name} failed on {run_dir}: {' | '.join(tail)}")
    return seconds


@dataclass
class DriverBench:
    runs: list[DriverRun]
    commands: dict[str, float]
    commands_on: str
    load: str


def bench_driver(
    trials: list[int],
    concurrency: list[int],
    algorithms: list[str],
    out: Path,
    on_step: Any = None,
) -> DriverBench:
    """Every (algorithm, concurrency, N) as its own process, then the commands on the largest run."""
    runs = []
    for algorithm in algorithms:
        for conc in concurrency:
            for n in trials:
                if on_step is not None:
                    on_step(f"{algorithm}, {conc} at once, {n} null-cost trials...")
                runs.append(_child(algorithm, n, conc, out / f"{algorithm}-c{conc}-n{n}"))
    largest = max(runs, key=lambda r: (r.trials, r.algorithm == "nsga2"))
    if on_step is not None:
        on_step(f"show, collect and report on {largest.run_dir}...")
    commands = time_commands(Path(largest.run_dir), out)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    result = DriverBench(runs, commands, largest.run_dir, load)
    (out / "driver.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def growth(result: DriverBench, algorithm: str, concurrency: int) -> float | None:
    """Peak RSS of the largest N minus that of the smallest, for one algorithm and concurrency."""
    rows = sorted(
        (r for r in result.runs if r.algorithm == algorithm and r.concurrency == concurrency),
        key=lambda r: r.trials,
    )
    return rows[-1].peak_rss_mb - rows[0].peak_rss_mb if len(rows) > 1 else None


def verdicts(result: DriverBench) -> list[str]:
    """The targets against the measurements, one line each."""
    lines = []
    largest = max(r.trials for r in result.runs)
    for r in result.runs:
        if r.trials == largest:
            target = f"target <= {TARGET_CPU_MS:.0f}" if r.algorithm != "tpe" else "no target for TPE"
            lines.append(
                f"{r.algorithm} x{r.concurrency} at {largest} trials: {r.cpu_ms_per_trial:.1f} ms driver CPU "
                f"per trial, ask {r.ask_ms:.2f} ms ({target})"
            )
    for algorithm, concurrency in sorted({(r.algorithm, r.concurrency) for r in result.runs}):
        grown = growth(result, algorithm, concurrency)
        if grown is not None:
            lines.append(
                f"{algorithm} x{concurrency}: peak RSS grew {grown:.0f} MB up to {largest} trials "
                f"(target <= {TARGET_GROWTH_MB:.0f} from 100 to 1000)"
            )
    c = result.commands
    lines.append(
        f"on {result.commands_on}: show {c['show']:.1f} s (target <= {TARGET_SHOW_S:.0f}), collect "
        f"{c['collect']:.1f} s, report {c['report']:.1f} s (target <= {TARGET_REPORT_S:.0f}); each a fresh "
        "CLI process, start-up included"
    )
    return lines
