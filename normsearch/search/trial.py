"""The Ray Tune trainable: one trial = one candidate trained by train.py, checkpointed every epoch.

The searcher hands each trial its sampled values plus keys of its own: `TRIAL_KEY` (the stable trial id
of the run's records), `RESUME_KEY` (the checkpoint folder of an unfinished trial to continue) and, for a
confirmation run, `SEED_KEY` (the model seed; the recipe's otherwise). After
every epoch the trial reports its metrics together with a Tune checkpoint of its `TrainState`; Tune keeps
the newest in the run folder, restores from it when it retries a trial whose worker died, and the next
`resume` continues from it. A trial that fails in our code (bad data, a NaN loss, any exception) does not
raise into Tune, which would retry it to the same end: it reports the reason as its last result and stops.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import traceback
from functools import lru_cache
from typing import Any

import ray
import torch
from ray import tune

from normsearch.data.spec import DataConfig, load_data
from normsearch.errors import NormsearchError
from normsearch.recipe import Recipe
from normsearch.run.checkpoints import read_state, write_state
from normsearch.run.storage import read_checkpoint
from normsearch.space import Space
from normsearch.train import Diverged, train_from_recipe

TRIAL_KEY = "__trial__"
UNIT_KEY = "__unit__"  # which unit of the data protocol (data/protocol.py) this trial trains
RESUME_KEY = "__resume__"
INIT_KEY = "__init__"  # `train.init: pretrain`: the run's pretrained base this unit fine-tunes from
SEED_KEY = "__seed__"  # a model seed other than the recipe's (`normsearch confirm` re-seeds a configuration)
STARTED_FROM = "started_from"  # result key: what the trial's training started from (weights, inheritance)
FAILED = "failed"  # result key holding a failure's reason
TRACE = "traceback"


@lru_cache(maxsize=2)
def _cached_data(data_json: str):
    """Domains are built once per worker process (actors are reused across trials)."""
    return load_data(DataConfig.model_validate_json(data_json))


@lru_cache(maxsize=4)
def _parsed(recipe_json: str, space_json: str) -> tuple[Recipe, Space]:
    return Recipe.model_validate_json(recipe_json), Space.model_validate_json(space_json)


def failure_reason(error: BaseException) -> str:
    """One line for a failed trial: our own errors as they are, others as ``Type: first line``."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if isinstance(error, NormsearchError | Diverged):
        return text[:400]
    return f"{type(error).__name__}: {text}"[:400]


def run_trial(config: dict[str, Any], recipe_json: str, space_json: str) -> None:
    """Train the configuration in `config`, reporting every epoch with a checkpoint (see module doc)."""
    recipe, space = _parsed(recipe_json, space_json)
    device = "cuda" if recipe.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    where = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "device": device,
    }
    pending: dict[str, Any] = {}
    state = None
    epoch = 0
    try:
        restored = tune.get_checkpoint()  # Tune retrying this trial after its worker died
        if restored is not None:
            with restored.as_directory() as folder:
                state = read_state(folder)
        elif config.get(RESUME_KEY):
            state = read_checkpoint(config[RESUME_KEY])  # `resume` continuing it (a path or a URI)
        resumed = {"resumed_from": state.epoch} if state is not None else {}
        epoch = state.epoch if state is not None else 0
        values = {k: config[k] for k in space.params if k in config}
        unit = next(u for u in recipe.data.units() if u.name == config.get(UNIT_KEY, ""))
        # Resolved by the driver when it sampled them; here once, by training (issue 19: once per trial).
        arch = space.to_arch(recipe.model, values, resolve=False)
        data = _cached_data(recipe.data.model_dump_json())

        def snapshot(train_state: Any) -> None:
            folder = tempfile.mkdtemp(prefix="normsearch-ckpt-")
            write_state(train_state, folder)
            pending["checkpoint"] = folder
            pending["init"] = train_state.init

        def report(metrics: dict[str, Any]) -> None:
            nonlocal epoch
            epoch = int(metrics["epoch"])
            folder = pending.pop("checkpoint", None)
            checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
            try:
                started = (
                    {STARTED_FROM: pending.pop("init")} if metrics.get("final") and "init" in pending else {}
                )
                tune.report({**metrics, **where, **resumed, **started}, checkpoint=checkpoint)
            finally:
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)

        train_from_recipe(
            recipe,
            arch,
            unit,
            seed=int(config[SEED_KEY]) if config.get(SEED_KEY) is not None else None,
            data=data,
            report=report,
            device=device,
            snapshot=snapshot,
            resume=state,
            init=config.get(INIT_KEY),
            policies=space.policies,
        )
    except Exception as error:  # our code failed: say why, once, and end the trial (no Tune retry)
        tune.report(
            {
                FAILED: failure_reason(error),
                TRACE: "".join(traceback.format_exception(error))[-4000:],
                "epoch": epoch,
                "final": False,
                **where,
            }
        )
