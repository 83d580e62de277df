"""The dry run's time estimate, from measurements on this machine at its present load.

What a run costs, and where each part comes from:

- the command's own work before Ray starts, as the dry run just timed it (`checks_seconds`: reading the
  recipe with its imports, and the checks; the run repeats them, from the image cache);
- Ray's start: `RAY_START_WORKERS` times the measured start of one Python worker (a Ray start launches
  its own Python processes: the driver's connection, the log monitor and the first workers);
- each of the `max_concurrent` trial workers starts once (Tune reuses them): the measured import of a
  worker (`python -c "import ray, torchvision, normsearch.search.trial"` in a subprocess) and the measured
  load of the data from the image cache;
- each training unit: `train.timing.time_training` on the recipe's network and on one configuration of the
  space (their mean): the loop's own set-up, real optimisation steps at the recipe's batch and image size
  on `resources.cpu` threads, and an evaluation pass, scaled to the unit's split sizes and `train.epochs`;
  units run `max_concurrent` at once, in waves;
- contention: when the trials at once want more cores than the machine has beyond its present load, each
  is slowed by the ratio of demand to cores (measured alone, the step saw `threads + load` of demand).

Every measurement is printed with the 1-minute load average it was taken under: the same run takes longer
on a busier machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from normsearch.arch import ArchConfig
from normsearch.data.spec import load_data
from normsearch.recipe import Recipe
from normsearch.run.records import config_key
from normsearch.space import Space
from normsearch.train import time_training

# A local Ray start (its processes, then the first trial workers' registration) costs about 1.5 worker
# starts: first calibrated at 3 on the tiny quickstart (shared 2-core machine, load 10-20: 150 s against
# 40 s); recalibrated once Ray stopped prestarting idle workers (search/ray.py) and a worker's measured start
# came to include torchvision: at 3, the idle machine's estimate was 65 s (36 s of it Ray) for a 32 s run.
RAY_START_WORKERS = 1.5
# torchvision too: a trial worker imports it at its first augmented batch (transforms v2), not with the
# trial's module, which a search's driver imports without it.
WORKER_IMPORT = "import ray, torchvision, normsearch.search.trial"
SECOND_NETWORK_SECONDS = 15.0  # the space's configuration is timed too when the recipe's took less than this


@dataclass(frozen=True)
class Estimate:
    """The dry run's estimate and what it was measured from."""

    unit_seconds: float  # one training unit, under the run's contention
    total_seconds: float
    units: int  # training units the run trains (trials x the protocol's units)
    step_seconds: float
    worker_seconds: float  # one worker's start: imports and the data from the cache
    ray_seconds: float
    checks_seconds: float
    contention: float
    load: float  # 1-minute load average when the steps were timed
    cores: int
    networks: list[str]

    def lines(self, recipe: Recipe) -> list[str]:
        """The estimate as printed by the dry run."""
        r = recipe
        at_once = f"{r.search.max_concurrent} at once on {r.resources.cpu} thread(s) each"
        slowed = f", x{self.contention:.2f} for {at_once}" if self.contention > 1.0 else f", {at_once}"
        return [
            f"measured on this machine ({self.cores} cores, load average {self.load:.2f}): "
            f"{self.step_seconds * 1000:.0f} ms per step of {' and '.join(self.networks)} at batch "
            f"{r.train.batch_size}, {r.data.size} px; a worker starts in {self.worker_seconds:.1f} s, Ray in "
            f"about {self.ray_seconds:.0f} s, the checks took {self.checks_seconds:.0f} s",
            f"estimated {self.unit_seconds:.0f} s per training unit ({r.train.epochs} epoch(s){slowed}); "
            f"{self.units} unit(s): about {self.total_seconds / 60:.1f} min ({self.total_seconds:.0f} s) "
            "in all, at this load",
        ]


def worker_start_seconds() -> float:
    """Seconds a fresh Python process takes to import what a trial worker imports (measured now)."""
    tic = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", WORKER_IMPORT], check=False, capture_output=True, env=dict(os.environ)
    )
    return time.perf_counter() - tic


def contention(threads: int, concurrent: int, load: float, cores: int) -> float:
    """How much slower each trial runs than the lone measurement: CPU demand over cores during the run
    (`concurrent * threads` plus the load that is not ours) against the same during the measurement."""
    background = max(load - threads, 0.0)  # the measurement's own threads are part of the load it saw

    def slowdown(demand: float) -> float:
        return max(1.0, (demand + background) / cores)

    return slowdown(concurrent * threads) / slowdown(threads)


def timed_archs(recipe: Recipe, space: Space) -> list[tuple[str, ArchConfig]]:
    """The networks timed: the recipe's own and one configuration of the space (its last probe, which
    switches on the most), when it differs."""
    found: list[tuple[str, ArchConfig]] = [(recipe.model.backbone.preset or "the model", recipe.model)]
    probes = space.probe_assignments()
    if probes:
        arch = space.to_arch(recipe.model, probes[-1])
        if config_key(arch.to_dict()) != config_key(recipe.model.to_dict()):
            found.append((f"a {space.name} configuration", arch))
    return found


def estimate(recipe: Recipe, space: Space, trials: int, checks_seconds: float = 0.0) -> Estimate:
    """Measure and estimate (see the module docstring). Slow by design: a few seconds of real training."""
    worker = worker_start_seconds()
    tic = time.perf_counter()
    data = load_data(recipe.data)  # from the image cache the preflight filled, as a worker loads it
    worker += time.perf_counter() - tic
    device = "cuda" if recipe.resources.gpu > 0 and _cuda() else "cpu"
    unit = recipe.data.units()[0]
    archs = timed_archs(recipe, space)
    timings = []
    for _, arch in archs:
        tic = time.perf_counter()
        timings.append(
            time_training(arch, data, recipe.data, recipe.train, unit, recipe.resources.cpu, device)
        )
        if time.perf_counter() - tic > SECOND_NETWORK_SECONDS:  # a slow network: one measurement will do
            archs = archs[: len(timings)]
            break
    cores = os.cpu_count() or 1
    load = sum(t.load for t in timings) / len(timings)
    slow = contention(recipe.resources.cpu, recipe.search.max_concurrent, load, cores)
    per_unit = slow * sum(t.unit_seconds(recipe.train.epochs) for t in timings) / len(timings)
    units = trials * len(recipe.data.units())
    concurrent = min(recipe.search.max_concurrent, units)
    rounds = math.ceil(units / max(recipe.search.max_concurrent, 1))
    pretrain = 0.0
    if recipe.train.init == "pretrain" and recipe.train.init_from is None:
        epochs = recipe.train.pretrain_epochs or recipe.train.epochs
        pretrain = len(recipe.data.units()) * timings[0].unit_seconds(epochs)
    ray = RAY_START_WORKERS * worker if recipe.ray.address is None else 0.0
    # Workers start together and contend for the cores like the trials do.
    starts = worker * contention(1, concurrent, load, cores)
    total = checks_seconds + ray + starts + pretrain + rounds * per_unit
    step = sum(t.step_seconds for t in timings) / len(timings)
    names = [n for n, _ in archs]
    return Estimate(per_unit, total, units, step, worker, ray, checks_seconds, slow, load, cores, names)


def _cuda() -> bool:
    return torch.cuda.is_available()
