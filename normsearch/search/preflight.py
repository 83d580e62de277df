"""Every check that can fail before Ray starts and before the run folder exists; `--dry-run` runs exactly
these and prints what they found.

- the output folder can be made (not a file, not an existing run, a place this process may write);
- a trial fits in its GPU fraction: a probe forward+backward of the network at the recipe's batch and
  image size measures its device memory (`train.probe`; `NORMSEARCH_DEVICE_MEMORY_GB` plans for a device
  this machine does not have);
- the per-trial resources fit this machine (local Ray) and a given cluster address answers in time;
- every configuration of a finite space (a sample of an infinite one) resolves to a NormPlan *and* builds as
  a network, so that no trial fails on its architecture; the weights training starts from can be read;
- the data: roots, domains, class folders, readable images (a folder domain is decoded into the image cache
  here, once, so trials only read it) and enough images per class for the splits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normsearch.errors import NormsearchError
from normsearch.recipe import Recipe
from normsearch.run.folder import check_new_output
from normsearch.space import Space

SAMPLED_CONFIGS = 16  # an infinite space is checked on this many random configurations (plus its probes)
RAY_STARTUP_SECONDS = 15.0


@dataclass(frozen=True)
class Preflight:
    """What the checks found, for the dry run and the run's header."""

    trials: int  # trials the run will train: num_samples, at most the space's size
    size: int | None
    networks: int  # configurations built as networks
    domains: dict[str, int]  # domain -> images
    classes: int
    data_seconds: float


def network_count(recipe: Recipe, space: Space) -> int | None:
    """How many distinct networks a finite space builds on the recipe's model (None when continuous):
    fewer than its configurations where two of them resolve to the same NormPlan (run/records.config_key)."""
    from normsearch.run.records import config_key

    values = space.assignments()
    if values is None:
        return None
    return len({config_key(space.to_arch(recipe.model, v).to_dict()) for v in values})


def trial_budget(recipe: Recipe, space: Space) -> int:
    """How many trials a run trains: `num_samples`, but never more than the distinct networks a finite
    space holds (no configuration is trained twice)."""
    size = network_count(recipe, space)
    return recipe.search.num_samples if size is None else min(recipe.search.num_samples, size)


def check_networks(recipe: Recipe, space: Space, source: str = "search.space") -> int:
    """Build the network of every configuration (finite spaces up to 512, else the probes and a random
    sample), on the meta device so no memory is spent; returns how many were built."""
    import optuna
    import torch

    from normsearch.models import build_model

    values_list = space.assignments()
    if values_list is None or len(values_list) > 512:
        values_list = list(space.probe_assignments())
        sampler = optuna.samplers.RandomSampler(seed=recipe.search_seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=sampler)
        for _ in range(SAMPLED_CONFIGS):
            values_list.append(space.sample(study.ask()))
    for values in values_list:
        where = f"{source} ({space.name} with {values})"
        arch = space.to_arch(recipe.model, values, where)
        # Weights are checked once (check_weights), not loaded into every configuration.
        arch = arch.model_copy(update={"backbone": arch.backbone.model_copy(update={"weights": None})})
        try:
            try:
                with torch.device("meta"):
                    build_model(arch)
            except RuntimeError as error:
                if "meta" not in str(error):
                    raise
                build_model(arch)  # a layer that draws a random number at construction: build it for real
        except NormsearchError as error:
            raise NormsearchError(f"{where}: {error}") from None
        except (RuntimeError, ValueError) as error:
            raise NormsearchError(
                f"{where}: the network does not build ({str(error).splitlines()[0]})"
            ) from None
    return len(values_list)


def check_weights(recipe: Recipe) -> None:
    """The checkpoint training starts from exists and reads: `backbone.weights` (a torchvision name, read
    from the hub cache offline, or a file) and `train.init_from`; a missing one is one line."""
    from normsearch.models.weights import load_weights

    if recipe.model.backbone.weights is not None:
        load_weights(recipe.model.backbone.weights, recipe.model.backbone, "model.backbone.weights")
    if recipe.train.init_from is not None:
        load_weights(recipe.train.init_from, recipe.model.backbone, "train.init_from")


def check_gpu_fraction(recipe: Recipe, capacity: int | None = None) -> int | None:
    """One line when a trial's probed device memory (plus `data.device_cache_gb`) exceeds its
    `resources.gpu` share of the device (`capacity` bytes, default `train.probe.device_capacity`), naming
    the fraction that fits; returns the bytes needed, None when nothing was checked (no GPU asked for, or
    no capacity known)."""
    from normsearch.models import build_model
    from normsearch.train.probe import GiB, Probe, check_fraction, device_capacity, probe_step_memory

    if recipe.resources.gpu <= 0:
        return None
    capacity = capacity or device_capacity()
    if capacity is None:
        return None
    arch = recipe.model.model_copy(
        update={"backbone": recipe.model.backbone.model_copy(update={"weights": None})}
    )
    batch, size = recipe.train.batch_size, recipe.data.size
    probe = probe_step_memory(
        lambda: build_model(arch),
        batch,
        size,
        arch.backbone.in_channels,
        arch.backbone.num_classes,
        recipe.train.precision,
        recipe.train.channels_last,
    )
    cache = int((recipe.data.device_cache_gb or 0) * GiB)
    probe = Probe(probe.need + cache, probe.how)
    name = arch.backbone.preset or "the model"
    what = f"probe of {name} at batch {batch}, {size} px, {recipe.train.precision}"
    check_fraction(recipe.resources.gpu, probe, capacity, what)
    return probe.need


def check_data(recipe: Recipe) -> tuple[dict[str, int], int, float]:
    """Load (and for folders, decode into the cache) every domain the recipe uses, with its checks."""
    from normsearch.data.spec import load_data

    tic = time.perf_counter()
    data = load_data(recipe.data)
    return {name: len(d) for name, d in data.domains.items()}, data.num_classes, time.perf_counter() - tic


def preflight(recipe: Recipe, space: Space, output: Path | None) -> Preflight:
    """Run every check (see the module docstring); `output` None skips the output check (resume)."""
    from normsearch.search.ray import check_local_resources, probe_address

    if output is not None:
        check_new_output(output)
    check_gpu_fraction(recipe)
    if recipe.ray.address is None:
        check_local_resources(recipe.resources.cpu, recipe.resources.gpu)
    else:
        probe_address(recipe.ray.address)
    networks = check_networks(recipe, space)
    check_weights(recipe)
    domains, classes, seconds = check_data(recipe)
    return Preflight(trial_budget(recipe, space), space.size(), networks, domains, classes, seconds)


def estimate_seconds(recipe: Recipe, trials: int, steps: int = 3) -> tuple[float, float]:
    """(seconds per trial, seconds for the run): a few timed train steps of the base model on random
    inputs at the recipe's batch and image size and thread count, scaled to the training budget, plus
    evaluation and a fixed Ray start-up allowance. A rough guide, not a promise."""
    import torch

    from normsearch.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.resources.cpu)
    try:
        model = build_model(recipe.model)
        size = recipe.data.size
        x = torch.randn(recipe.train.batch_size, recipe.model.backbone.in_channels, size, size)
        y = torch.zeros(recipe.train.batch_size, dtype=torch.long)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        model(x).sum()  # warm-up
        tic = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_step = (time.perf_counter() - tic) / steps
    finally:
        torch.set_num_threads(threads)
    n_train = recipe.data.n_train if recipe.data.dataset == "synthetic" else 1000
    steps_per_epoch = math.ceil(n_train / recipe.train.batch_size)
    evaluated = recipe.data.n_val * (1 + len(recipe.data.select))
    per_trial = recipe.train.epochs * (steps_per_epoch * per_step * 1.2 + evaluated / 3000) + 4
    waves = math.ceil(trials * len(recipe.data.units()) / recipe.search.max_concurrent)
    return per_trial, waves * per_trial + RAY_STARTUP_SECONDS


def describe(pre: Preflight) -> dict[str, Any]:
    """The checks' findings as plain values (for the dry run's table)."""
    return {
        "trials": pre.trials,
        "space size": pre.size if pre.size is not None else "continuous",
        "networks built": pre.networks,
        "classes": pre.classes,
        "domains": ", ".join(f"{k} ({v})" for k, v in pre.domains.items()),
        "data loaded in": f"{pre.data_seconds:.1f} s",
    }
