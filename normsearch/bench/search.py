"""`normsearch bench search`: what does the search machinery (Ray Tune, Optuna, the run folder, per-epoch
checkpoints) cost on top of training itself?

The same N trials are run twice:

1. **sequentially in this process** through `train.train_from_recipe`, with no Ray: the compute a trial needs,
   timed per trial around the call (same seed and torch threads as the search's trials). The first half
   of the N configurations is trained before the search and the second half after it, so that a change
   in the machine's load from other jobs during the bench falls on both sides instead of on one (a first
   version ran them all before the search and measured -12.5 % overhead: the load had dropped);
2. **as a search** through `search.tuner.run_search`, exactly what `normsearch run` calls: preflight, Ray
   start-up (unless this process already runs Ray), the study, the records, every trial's epoch
   checkpoints, timed from the call to its return.

Overhead = (search wall - Σ trial compute / concurrency) / search wall: the share of the search's wall time
not spent training. Start-up = the call to the moment the first trial's first epoch began (the first
record's time minus that epoch's `epoch_seconds`), so it holds preflight, Ray, the worker's imports and its
data loading.

The search never trains one configuration twice (a repeat is told its twin's result), so "the same N
trials of a fixed candidate" are N distinct configurations of equal cost: the recipe's network with IBN-a
in stages 1-2 (IBN-Net, Pan et al., 2018) at N different IN ratios, evenly spaced over [0.25, 0.75]. The
ratio only decides which channels are instance- rather than batch-normalized: the same parameters and
FLOPs for every value. The recipe's own space is replaced by this one; its data, model, training budget,
seed and `resources.cpu` (the torch threads of every trial, both ways) are kept.

On a 2-core machine the default is one trial at a time on one thread: running two would put both on the
cores the sequential run had alone and count their contention as overhead. Ray runs its workers at
niceness 15 (its `RAY_worker_niceness` default), the sequential run keeps this process's: on a machine
shared with other jobs a search trial gets less of the CPU than the same trial in this process, and the
bench counts that as overhead too, since `normsearch run` pays it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from normsearch.config import validate
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.recipe import Recipe
from normsearch.run.folder import RunFolder, check_new_output
from normsearch.search.tuner import run_search
from normsearch.space import Space, load_space
from normsearch.train import train_from_recipe

TARGET_OVERHEAD = 0.05  # issue 12: at most 5 % for 20 trials of >= 10 s each
TARGET_TRIALS = 20
TARGET_TRIAL_SECONDS = 10.0
RATIO_LOW, RATIO_HIGH = 0.25, 0.75


@dataclass(frozen=True)
class SearchBench:
    """The measured figures of one bench run (seconds of wall-clock time)."""

    trial_seconds: tuple[float, ...]  # sequential, in-process: each trial's compute
    search_wall: float  # run_search, call to return
    startup: float  # call to the first trial's first epoch
    concurrency: int
    threads: int
    ray_started: bool  # whether Ray's start-up is inside search_wall
    search_trial_seconds: tuple[float, ...]  # each search trial's Σ epoch_seconds, from its records
    run_dir: Path
    idle: float = 0.0  # of search_wall, the seconds no trial was between its first epoch and its end

    @property
    def trials(self) -> int:
        return len(self.trial_seconds)

    @property
    def compute(self) -> float:
        """Σ trial compute as measured by the sequential run."""
        return sum(self.trial_seconds)

    @property
    def seconds_per_trial(self) -> float:
        return self.compute / self.trials

    @property
    def overhead(self) -> float:
        """(search wall - Σ compute / concurrency) / search wall, as a fraction."""
        return (self.search_wall - self.compute / self.concurrency) / self.search_wall

    @property
    def idle_share(self) -> float:
        """`idle` / search wall: a lower bound of the overhead read from the search's own records alone,
        so a change of the machine's load between the sequential run and the search does not enter it (the
        per-epoch checkpoints inside a trial are not in it)."""
        return self.idle / self.search_wall

    @property
    def at_target_scale(self) -> bool:
        """Whether the run is one the target speaks of: >= 20 trials, each >= 10 s."""
        return self.trials >= TARGET_TRIALS and min(self.trial_seconds) >= TARGET_TRIAL_SECONDS

    @property
    def meets_target(self) -> bool:
        """Both the formula's overhead and its drift-free lower bound within the target: a formula value
        below its own lower bound means the load changed between the two runs, not a cheap search."""
        return max(self.overhead, self.idle_share) <= TARGET_OVERHEAD


def ratios(trials: int) -> list[float]:
    """`trials` distinct IBN-a IN ratios, evenly spaced over [RATIO_LOW, RATIO_HIGH]."""
    if trials < 1:
        raise NormsearchError(f"--trials {trials}: give at least 1")
    if trials == 1:
        return [(RATIO_LOW + RATIO_HIGH) / 2]
    step = (RATIO_HIGH - RATIO_LOW) / (trials - 1)
    values = [round(RATIO_LOW + k * step, 9) for k in range(trials)]
    if len(set(values)) != trials:
        raise NormsearchError(f"--trials {trials}: too many for distinct ratios; allowed: at most 10000")
    return values


def bench_space(trials: int) -> dict[str, Any]:
    """The bench's inline space: one categorical parameter, `norm.ibn.ratio`, over `ratios(trials)`."""
    return {
        "name": f"bench_ibn_ratio_{trials}",
        "fixed": {"norm.ibn.variant": "a", "norm.ibn.stages": [1, 2]},
        "params": {"ratio": {"type": "categorical", "choices": ratios(trials), "path": "norm.ibn.ratio"}},
    }


def bench_recipe(
    recipe: Recipe, trials: int, concurrency: int, run_dir: Path, threads: int | None = None
) -> tuple[Recipe, Space]:
    """The recipe the bench searches: `recipe`'s budget over `bench_space(trials)`, a grid visiting each
    configuration once, no early stopping, no warm start, `concurrency` trials at a time."""
    raw = recipe.model_dump(mode="json", exclude_none=True)
    raw["output"] = str(run_dir)
    raw["search"] = {
        **raw["search"],
        "space": bench_space(trials),
        "algorithm": "grid",
        "num_samples": trials,
        "max_concurrent": concurrency,
        "scheduler": {"kind": "none"},
        "warm_start": {"kind": "none"},
        "constraints": [],
    }
    if threads is not None:
        raw["resources"] = {**raw.get("resources", {}), "cpu": threads}
    bench = validate(Recipe, raw, "bench search recipe")
    space = load_space(bench.search.space, source="bench search space")
    space.check(bench.model, "bench search space")
    return bench, space


def _startup(records: list[dict[str, Any]], called: float) -> float:
    """Seconds from `called` (time.time()) to the start of the first epoch any trial trained."""
    firsts = [
        r["time"] - float(r["metrics"]["epoch_seconds"])
        for r in records
        if r.get("status") == "running" and "epoch_seconds" in r.get("metrics", {})
    ]
    if not firsts:
        raise NormsearchError("bench search: the search recorded no epoch, so its start-up is unknown")
    return min(firsts) - called


def _idle(records: list[dict[str, Any]], called: float, returned: float) -> float:
    """Seconds of [called, returned] (time.time()) outside every trial's span, from the start of its first
    epoch to its terminal record: start-up, the gaps between trials, the end of the search."""
    spans: dict[str, list[float]] = {}
    for r in records:
        if r.get("status") == "running" and "epoch_seconds" in r.get("metrics", {}):
            start = r["time"] - float(r["metrics"]["epoch_seconds"])
            span = spans.setdefault(r["trial_id"], [start, start])
            span[0] = min(span[0], start)
        elif r.get("status") in ("complete", "pruned", "failed") and r["trial_id"] in spans:
            spans[r["trial_id"]][1] = max(spans[r["trial_id"]][1], r["time"])
    covered, reach = 0.0, called
    for start, end in sorted(spans.values()):
        start, end = max(start, reach), min(end, returned)
        if end > start:
            covered += end - start
            reach = end
    return (returned - called) - covered


def _search_trial_seconds(records: list[dict[str, Any]]) -> tuple[float, ...]:
    """Each trial's Σ epoch_seconds, from its per-epoch records."""
    per: dict[str, float] = {}
    for r in records:
        if r.get("status") == "running" and "epoch_seconds" in r.get("metrics", {}):
            per[r["trial_id"]] = per.get(r["trial_id"], 0.0) + float(r["metrics"]["epoch_seconds"])
    return tuple(per[k] for k in sorted(per))


def bench_search(
    recipe: Recipe,
    run_dir: Path,
    trials: int = TARGET_TRIALS,
    concurrency: int = 1,
    threads: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> SearchBench:
    """Run the bench (see the module docstring) with its search's run folder at `run_dir` (must not exist);
    `threads` overrides `recipe.resources.cpu`. `on_step` receives a line of progress now and then."""
    say = on_step or (lambda _: None)
    check_new_output(run_dir, "-o")
    bench, space = bench_recipe(recipe, trials, concurrency, run_dir, threads)
    assignments = space.assignments()
    assert assignments is not None and len(assignments) == trials
    threads = bench.resources.cpu

    data = load_data(bench.data)
    seconds: list[float] = []

    def sequential(part: list[dict[str, Any]]) -> None:
        previous = torch.get_num_threads()
        try:
            for values in part:
                say(f"sequential run, trial {len(seconds) + 1}/{trials} (ratio {values['ratio']})")
                arch = space.to_arch(bench.model, values)
                tic = time.perf_counter()
                train_from_recipe(bench, arch, data=data, threads=threads)
                seconds.append(time.perf_counter() - tic)
        finally:
            torch.set_num_threads(previous)

    half = (trials + 1) // 2
    sequential(assignments[:half])

    ray_started = not ray.is_initialized()
    say(f"search of the same {trials} configurations through Ray Tune")
    called = time.time()
    outcome = run_search(
        bench,
        space,
        run_dir,
        on_change=lambda p: say(f"search: {p.done}/{p.total} trials done, {len(p.running)} running"),
    )
    returned = time.time()
    wall = returned - called
    folder = RunFolder(run_dir)
    finished = [t for t in folder.trials() if t.complete]
    if outcome.incomplete or len(finished) != trials:
        reasons = "; ".join(f"{t.trial_id}: {t.reason}" for t in folder.trials() if not t.complete)
        raise NormsearchError(
            f"bench search: {len(finished)} of {trials} search trials completed ({reasons or 'interrupted'})"
        )
    records = folder.records()
    sequential(assignments[half:])
    return SearchBench(
        tuple(seconds),
        wall,
        _startup(records, called),
        concurrency,
        threads,
        ray_started,
        _search_trial_seconds(records),
        run_dir,
        _idle(records, called, returned),
    )
