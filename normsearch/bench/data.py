"""`normsearch bench data RECIPE`: can the input pipeline keep the recipe's training step fed?

Both sides run in this process at the same torch thread count, alternately: the pipeline (batches sliced
from the decoded, memory-mapped domains, augmented, standardised) and the train step of the recipe's base
network (forward, loss, backward, optimizer step) on batches it was given.
The pipeline must not be what limits training: its images/s should be a multiple of the step's.

The pipeline is timed both ways, on the same batches' sizes: augmented per image (transforms v2 in a
Python loop) and batched (`data.augment_batched`); `train.augment.engine: auto` picks between them by
device, and these two numbers are what that choice rests on.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from normsearch.data.pipeline import Standardizer, balanced_batches, make_augment
from normsearch.data.spec import load_data
from normsearch.models import build_model
from normsearch.recipe import Recipe
from normsearch.train import unit_sets


@dataclass(frozen=True)
class DataBench:
    """Medians over the measured batches, images per second, and what was measured."""

    pipeline_images_per_s: float  # per-image augmentation
    step_images_per_s: float
    batch_size: int
    size: int
    threads: int
    batches: int
    augment: str
    load_seconds: float
    batched_images_per_s: float | None = None  # batched augmentation (None: nothing to augment)

    @property
    def ratio(self) -> float:
        return self.pipeline_images_per_s / self.step_images_per_s


def bench_data(recipe: Recipe, batches: int = 5, threads: int | None = None, warmup: int = 1) -> DataBench:
    """Time the recipe's input pipeline against its train step (see the module docstring)."""
    threads = threads or recipe.resources.cpu
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tic = time.perf_counter()
        data = load_data(recipe.data)
        load_seconds = time.perf_counter() - tic
        unit = recipe.data.units()[0]
        sets = unit_sets(data, unit, lambda t: t)
        parts = list(sets.train.values())
        standardize = Standardizer.fit(sets.train_images())
        per_image = recipe.train.augment.model_copy(update={"engine": "per_image"})
        batched = recipe.train.augment.model_copy(update={"engine": "batched"})
        augment = make_augment(per_image, recipe.data.size)
        augment_batched = make_augment(batched, recipe.data.size)
        batch = recipe.train.batch_size
        arch = recipe.model.model_copy(
            update={
                "backbone": recipe.model.backbone.model_copy(
                    update={"num_classes": data.num_classes, "weights": None}
                )
            }
        )
        model = build_model(arch).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(recipe.seed)

        def batches_forever(aug, gen):
            while True:
                yield from balanced_batches(parts, batch, gen, aug)

        stream = batches_forever(augment, generator)
        stream_batched = batches_forever(augment_batched, torch.Generator().manual_seed(recipe.seed))
        pipeline, step, fast = [], [], []
        for k in range(warmup + batches):
            if augment_batched is not None:
                tic = time.perf_counter()
                standardize(next(stream_batched)[0])
                fast.append(batch / (time.perf_counter() - tic))
            tic = time.perf_counter()
            x, y = next(stream)
            x = standardize(x)
            pipe = time.perf_counter() - tic
            tic = time.perf_counter()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train = time.perf_counter() - tic
            if k >= warmup:
                pipeline.append(len(y) / pipe)
                step.append(len(y) / train)
    finally:
        torch.set_num_threads(previous)
    return DataBench(
        statistics.median(pipeline),
        statistics.median(step),
        batch,
        recipe.data.size,
        threads,
        batches,
        recipe.train.augment.preset if recipe.train.augment.preset != "none" else "translate/flip",
        load_seconds,
        statistics.median(fast[warmup:]) if fast else None,
    )
