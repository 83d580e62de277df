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

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from normsearch.data.cache import cache_dir
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.models.weights import load_weights
from normsearch.recipe import Recipe
from normsearch.run.folder import RunFolder, check_new_output
from normsearch.run.records import config_key
from normsearch.run.storage import Storage
from normsearch.search.ray import check_local_resources, probe_address
from normsearch.space import Space
from normsearch.train import GiB, Probe, check_fraction, device_capacity, probe_step_memory

SAMPLED_CONFIGS = 16  # an infinite space is checked on this many random configurations (plus its probes)


@dataclass(frozen=True)
class Preflight:
    """What the checks found, for the dry run and the run's header."""

    trials: int  # trials the run will train: num_samples, at most the space's size
    size: int | None
    networks: int  # configurations built as networks
    domains: dict[str, int]  # domain -> images
    classes: int
    data_seconds: float
    space_file: str = "inline"  # the file search.space named (a bare name may be a shipped space)


def network_count(recipe: Recipe, space: Space) -> int | None:
    """How many distinct networks a finite space builds on the recipe's model (None when continuous):
    fewer than its configurations where two of them resolve to the same NormPlan (run/records.config_key)."""
    values = space.assignments()
    if values is None:
        return None
    return len({config_key(space.to_arch(recipe.model, v).to_dict()) for v in values})


def trial_budget(recipe: Recipe, space: Space) -> int:
    """How many trials a run trains: `num_samples`, but never more than the distinct networks a finite
    space holds (no configuration is trained twice)."""
    size = network_count(recipe, space)
    return recipe.search.num_samples if size is None else min(recipe.search.num_samples, size)


def _meta_device() -> contextlib.ExitStack:
    """`torch.device("meta")` as a context, with `Tensor.normal_` on a meta tensor a no-op: a meta tensor
    holds no values to fill, and torch runs that fill through a Python reference that imports
    torch._dynamo on first use, which cost a driver that never compiles anything ~2 s of CPU."""
    from torch.overrides import TorchFunctionMode

    class NoFill(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
        ) -> Any:
            if func is torch.Tensor.normal_ and args and getattr(args[0], "is_meta", False):
                return args[0]
            return func(*args, **(kwargs or {}))

    stack = contextlib.ExitStack()
    stack.enter_context(torch.device("meta"))
    stack.enter_context(NoFill())
    return stack


def check_networks(recipe: Recipe, space: Space, source: str = "search.space") -> int:
    """Build the network of every configuration (finite spaces up to 512, else the probes and a random
    sample), on the meta device so no memory is spent; returns how many were built."""
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
                with _meta_device():
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
    if recipe.model.backbone.weights is not None:
        load_weights(recipe.model.backbone.weights, recipe.model.backbone, "model.backbone.weights")
    if recipe.train.init_from is not None:
        load_weights(recipe.train.init_from, recipe.model.backbone, "train.init_from")


def check_gpu_fraction(recipe: Recipe, capacity: int | None = None) -> int | None:
    """One line when a trial's probed device memory (plus `data.device_cache_gb`) exceeds its
    `resources.gpu` share of the device (`capacity` bytes, default `train.probe.device_capacity`), naming
    the fraction that fits; returns the bytes needed, None when nothing was checked (no GPU asked for, or
    no capacity known)."""
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
    tic = time.perf_counter()
    data = load_data(recipe.data)
    return {name: len(d) for name, d in data.domains.items()}, data.num_classes, time.perf_counter() - tic


def check_storage(recipe: Recipe, output: Path | None) -> None:
    """`storage:` opens and takes a small object written, read back and deleted (run/storage.py), and holds
    no run of this name yet; each failure is one line before Ray starts."""
    if not recipe.storage:
        return
    storage = Storage.parse(recipe.storage)
    storage.probe()
    if output is not None and RunFolder.stored_run(storage, output.name):
        raise NormsearchError(
            f"storage {recipe.storage}: already holds a run named {output.name}; use `normsearch resume "
            f"{storage.url(output.name)}` or another --output"
        )


def preflight(recipe: Recipe, space: Space, output: Path | None) -> Preflight:
    """Run every check (see the module docstring); `output` None skips the output check (resume)."""
    if output is not None:
        check_new_output(output)
    check_storage(recipe, output)
    check_gpu_fraction(recipe)
    if recipe.ray.address is None:
        check_local_resources(recipe.resources.cpu, recipe.resources.gpu)
    else:
        probe_address(recipe.ray.address)
    networks = check_networks(recipe, space)
    check_weights(recipe)
    domains, classes, seconds = check_data(recipe)
    found = Preflight(trial_budget(recipe, space), space.size(), networks, domains, classes, seconds)
    return replace(found, space_file=space.file or "inline (in the recipe)")


def describe(pre: Preflight) -> dict[str, Any]:
    """The checks' findings as plain values (for the dry run's table)."""
    return {
        "space file": pre.space_file,
        "trials": pre.trials,
        "space size": pre.size if pre.size is not None else "continuous",
        "networks built": pre.networks,
        "classes": pre.classes,
        "domains": ", ".join(f"{k} ({v})" for k, v in pre.domains.items()),
        "data loaded in": f"{pre.data_seconds:.1f} s",
    }


# --- every node of a cluster ----------------------------------------------------------------------------
NODE_CHECK_SECONDS = 120.0


def file_list_hash(root: str) -> tuple[int, str]:
    """(files, sha256 of the sorted relative paths and sizes) under a data root: two nodes whose roots
    hash alike hold the same domains and files."""
    import hashlib
    import os

    digest = hashlib.sha256()
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            entries.append(f"{os.path.relpath(path, root)}\t{os.path.getsize(path)}")
    for entry in sorted(entries):
        digest.update(entry.encode() + b"\n")
    return len(entries), digest.hexdigest()[:16]


def node_report(storage: str | None, marker: str | None, token: str, root: str | None) -> dict[str, Any]:
    """Run on one node (a Ray task): what it could not see or use of the run; see `check_nodes`."""
    import os
    import socket
    import tempfile

    problems: list[str] = []
    if storage:
        try:
            Storage.parse(storage).probe()
        except NormsearchError as error:
            problems.append(str(error))
    elif marker is not None:
        try:
            seen = Path(marker).read_text() == token
        except OSError:
            seen = False
        if not seen:
            problems.append(
                f"cannot see {Path(marker).parent} (where the driver keeps the run folder: this node does "
                "not share that disk); give --storage s3://bucket/prefix (or a path every node mounts)"
            )
    data = None
    if root:
        if not Path(root).is_dir():
            problems.append(f"data.root {root}: not there (every node must hold the data at the same path)")
        else:
            data = file_list_hash(root)
    try:
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".probe-"):
            pass
    except OSError as error:
        problems.append(f"image cache {cache_dir()}: cannot write there ({error.strerror or error})")
    return {"host": socket.gethostname(), "pid": os.getpid(), "problems": problems, "data": data}


def check_nodes(recipe: Recipe, output: Path) -> int:
    """Before the first trial, a tiny Ray task on every alive node of the joined cluster checks what a
    trial there will need: the storage writable and readable (or, with no storage, the driver's run-folder
    place visible there: a marker written here must read back there), the data root holding the same files
    (hash of the file list) and the image cache writable. The first node that fails is one line naming it.
    Returns how many nodes were checked."""
    import shutil
    import tempfile
    import uuid

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    marker_dir = None
    marker = None
    token = uuid.uuid4().hex
    if not recipe.storage:
        existing = output if output.is_dir() else output.parent
        while not existing.is_dir():
            existing = existing.parent
        marker_dir = tempfile.mkdtemp(dir=existing, prefix=".normsearch-nodes-")
        marker = str(Path(marker_dir) / "marker")
        Path(marker).write_text(token)
    root = recipe.data.root if recipe.data.dataset == "folder" else None
    expected = file_list_hash(root) if root and Path(root).is_dir() else None
    task = ray.remote(num_cpus=0, max_retries=0)(node_report)
    try:
        refs = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                recipe.storage, marker, token, root
            )
            for n in nodes
        ]
        try:
            reports = ray.get(refs, timeout=NODE_CHECK_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise NormsearchError(
                f"ray.address {recipe.ray.address}: the nodes' checks did not finish in "
                f"{NODE_CHECK_SECONDS:.0f} s (a node without the Python environment?)"
            ) from None
    finally:
        if marker_dir is not None:
            shutil.rmtree(marker_dir, ignore_errors=True)
    for node, report in zip(nodes, reports, strict=True):
        name = f"node {node.get('NodeManagerAddress')} ({report['host']}, id {node['NodeID'][:8]})"
        if report["problems"]:
            raise NormsearchError(f"{name}: {report['problems'][0]}")
        if expected is not None and report["data"] != expected:
            files, _ = report["data"]
            raise NormsearchError(
                f"{name}: data.root {root} holds other files than on the driver ({files} files there, "
                f"{expected[0]} here); every node must hold the same data at the same path"
            )
    return len(nodes)
