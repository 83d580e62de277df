"""How long one candidate's training takes, measured rather than guessed: the dry run's estimate.

`time_training` sets a unit up exactly as training does (`loop._set_up`: the actual network, its starting
weights, the unit's real images, the augmentation, the optimizer and schedule of the recipe), then times a
few real optimisation steps at the recipe's batch and image size on the trial's thread count, and an
evaluation forward pass under the network's test-time statistics policy. Scaled by the unit's real split
sizes this gives the seconds of one training unit; the machine's load average (`os.getloadavg`) is
recorded with it, since the same steps take longer on a busy machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from normsearch.arch import ArchConfig
from normsearch.data.domains import DomainSet
from normsearch.data.pipeline import domain_labels
from normsearch.data.protocol import Unit
from normsearch.data.spec import DataConfig
from normsearch.data.stream import epoch_batches
from normsearch.norms.domains import set_domains
from normsearch.train.config import TrainConfig
from normsearch.train.evaluation import correct_count, evaluation_split

# The loop's own set-up and step: the timed step is the trained step, not a copy of it (same package).
from normsearch.train.loop import _prepare_evaluation, _set_up, _step, _with_classes
from normsearch.train.precision import resolve_device

TIMED_STEPS = 4  # optimisation steps timed after one warm-up step...
TIMED_SECONDS = 5.0  # ...or fewer, once this long was timed (a big network on a CPU: one step is enough)


@dataclass(frozen=True)
class Timing:
    """One training unit, measured: seconds per optimisation step and per evaluated image, the set-up,
    the unit's work (steps per epoch, images evaluated per epoch and once at the end), and the conditions
    (threads, device, the 1-minute load average when measured)."""

    step_seconds: float
    eval_image_seconds: float
    setup_seconds: float
    steps_per_epoch: int
    evaluated_per_epoch: int
    tested: int
    threads: int
    device: str
    load: float

    def unit_seconds(self, epochs: int) -> float:
        """Seconds of one training unit of `epochs` epochs: set-up, every epoch's steps and evaluation,
        and the test evaluation after the last."""
        steps = self.steps_per_epoch * self.step_seconds
        per_epoch = steps + self.evaluated_per_epoch * self.eval_image_seconds
        return self.setup_seconds + epochs * per_epoch + self.tested * self.eval_image_seconds


def _eval_images(data: DomainSet, unit: Unit) -> tuple[int, int]:
    """(images evaluated after each epoch: the sources' and select domains' val splits; images evaluated
    once after training: the sources' test splits and every target's reported images)."""
    per_epoch = sum(len(data[n].split("val")[1]) for n in (*unit.sources, *unit.select))
    tested = sum(len(data[n].split("test")[1]) for n in unit.sources)
    tested += sum(len(evaluation_split(data[n])[1]) for n in unit.targets)
    return per_epoch, tested


def time_training(
    arch: ArchConfig,
    data: DomainSet,
    data_config: DataConfig,
    config: TrainConfig,
    unit: Unit,
    threads: int,
    device: str = "cpu",
    steps: int = TIMED_STEPS,
) -> Timing:
    """Measure one training unit of `arch` (see the module docstring). `threads` is the trial's
    `resources.cpu`; the caller's thread count is restored afterwards. `train.init: pretrain` is timed
    from scratch (a fine-tuning step costs what a step from scratch costs)."""
    load = os.getloadavg()[0]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = resolve_device(device, config.cudnn_benchmark)
        if config.init == "pretrain":
            config = config.model_copy(update={"init": "scratch", "init_from": None})
        arch = _with_classes(arch, data.num_classes)
        tic = time.perf_counter()
        run = _set_up(arch, data, data_config, config, 0, dev, None, None, unit)
        setup = time.perf_counter() - tic
        run.model.train()
        step_seconds = _timed_steps(run, dev, steps)
        _prepare_evaluation(run)
        x, y = next(iter(run.sets.val.values()))
        # One training batch's worth of images: per image, an evaluation batch costs about the same.
        x, y = x[: config.batch_size], y[: config.batch_size]
        correct_count(run.model, x[:8], y[:8], run.standardize, policy=run.inference)  # warm-up
        _sync(dev)
        tic = time.perf_counter()
        correct_count(run.model, x, y, run.standardize, policy=run.inference)
        _sync(dev)
        eval_image = (time.perf_counter() - tic) / max(len(y), 1)
    finally:
        torch.set_num_threads(before)
    per_epoch, tested = _eval_images(data, unit)
    return Timing(
        step_seconds, eval_image, setup, run.steps_per_epoch, per_epoch, tested, threads, dev.type, load
    )


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed_steps(run: Any, dev: torch.device, steps: int) -> float:  # run: loop._Run (private)
    """Seconds per optimisation step: one warm-up step, then `steps` timed ones (fewer once TIMED_SECONDS
    were timed), through the epoch's own batches (slicing, augmentation and the plan's per-step hooks
    included)."""
    timed = 0
    tic = 0.0
    while timed < steps:
        batches = epoch_batches(run.train_parts, run.config.batch_size, run.generator, run.augment, dev)
        for x, y in batches:
            if run.policy:
                run.policy.step()
            if run.routed:
                set_domains(run.model, domain_labels(len(y), len(run.train_parts)).to(dev))
            _step(run, x, y)
            if tic == 0.0:  # the first step warms up (allocations, kernel choice): not timed
                _sync(dev)
                tic = time.perf_counter()
                continue
            timed += 1
            if timed >= steps or time.perf_counter() - tic >= TIMED_SECONDS:
                break
        if timed and time.perf_counter() - tic >= TIMED_SECONDS:
            break
    _sync(dev)
    return (time.perf_counter() - tic) / timed
