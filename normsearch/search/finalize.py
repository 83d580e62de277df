"""`normsearch finalize`: train the chosen configuration once on every source of the run, and keep it as a
deployable model.

A search (and `confirm`) trains each configuration per protocol unit: under rotation one network per fold,
each blind to its held-out domain, because those numbers are what selection and reporting need. Once a
configuration is chosen, DomainBed's practice is to train it on all the training domains; that network is the
one to ship. Finalize does it with the run's own recipe (model, training, resources, data splits), through
the same machinery as `confirm`: one Tune experiment whose trainable is `search.trial.run_trial`, one Tune
trial per seed, checkpointed every epoch. The recipe it hands the trials is the run's with its data section
collapsed to one unit (`final_data`): every source of the run trains, selection is the sources' own val
splits (nothing is selected any more: they only report progress), and the run's non-source domains are
reported after the last epoch.

Seeds: ``--seeds 1`` (default) trains one network with the recipe's seed; ``--seeds N`` trains N networks
(seeds ``recipe.seed .. recipe.seed + N - 1``) that `normsearch.load_model` averages as an ensemble of
their softmax probabilities. The output folder (run/finalized.py) holds the ArchConfig with provenance, the
weights (safetensors) and the preprocessing; an interrupted finalize continues from its last epoch checkpoint
when the same command runs again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.data.spec import DataConfig
from normsearch.errors import NormsearchError
from normsearch.metrics import SOURCE_VAL_ACC
from normsearch.recipe import Recipe
from normsearch.results.front import RunSummary, choose, find_trial, summarize
from normsearch.run.finalized import FinalFolder
from normsearch.run.records import TrialRecord, confirm_trial_id, metrics_of
from normsearch.run.storage import read_checkpoint
from normsearch.search.confirm import _callback, _searcher
from normsearch.search.final_model import preprocessing_for, write_model
from normsearch.search.ray import (
    check_cluster_resources,
    check_local_resources,
    local_ray_processes,
    start_ray,
)
from normsearch.search.trial import FAILED, INIT_KEY, RESUME_KEY, SEED_KEY, TRACE, TRIAL_KEY, UNIT_KEY
from normsearch.search.tuner import make_tuner, pretrained_bases, versions
from normsearch.space import Space

FINAL = "final"  # trial ids in a finalize folder: final/s<seed>


@dataclass
class FinalizeProgress:
    """What the progress view shows: seeds done of all, the epoch each running seed reached, last event."""

    total: int
    epochs: int
    done: int = 0
    failed: int = 0
    epoch: dict[str, int] = field(default_factory=dict)  # trial id -> last finished epoch
    message: str = ""

    @property
    def epochs_done(self) -> int:
        return sum(self.epoch.values())


@dataclass
class FinalizeOutcome:
    """What a finalize did: the trial, the seeds, what trained now, what was found, what is unfinished."""

    folder: FinalFolder
    trial: str
    seeds: list[int]
    trained: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> reason
    unfinished: list[str] = field(default_factory=list)
    written: bool = False  # the model was written by this call


def choose_trial(
    summary: RunSummary, trial_id: str | None, rule: str | None, max_source_drop: float | None = None
) -> TrialRecord:
    """The configuration to finalize: a complete candidate given by id, or the one a pick rule chooses."""
    if (trial_id is None) == (rule is None):
        raise NormsearchError("finalize: give exactly one of --trial ID or --pick RULE")
    if rule is not None:
        return choose(summary.front, rule, max_source_drop)
    trial = find_trial(summary.candidates, trial_id or "")
    if not trial.complete:
        raise NormsearchError(
            f"--trial {trial_id}: {trial.status}; only a complete configuration is finalized"
        )
    return trial


def prepare_finalize(
    run_dir: str | Path,
    out: str | Path,
    trial_id: str | None,
    rule: str | None,
    seeds: int = 1,
    max_source_drop: float | None = None,
) -> tuple[RunSummary, TrialRecord, list[int], FinalFolder]:
    """Every check before training: the run, the choice, the seeds and the output folder (a new one, or
    one holding this same request); the output folder and its request are written."""
    summary = summarize(run_dir)
    trial = choose_trial(summary, trial_id, rule, max_source_drop)
    seed_list = final_seeds(summary.recipe, seeds)
    folder = FinalFolder(out)
    folder.start({"run": str(summary.folder.path), "trial": trial.trial_id, "seeds": seed_list})
    return summary, trial, seed_list, folder


def final_data(data: DataConfig) -> DataConfig:
    """The run's data section as one unit: every source trains (under rotation, every domain that took a
    turn), the sources' val splits only report progress, and every other domain of the run is reported."""
    sources = data.sources
    reported = [d for d in data.targets if d not in sources]
    values = data.model_dump(mode="json")
    values.update(
        source=sources if len(sources) > 1 else sources[0],
        select=[],
        test=reported,
        selection="training_domain",
        rotate=False,
    )
    return DataConfig.model_validate(values)


def final_recipe(recipe: Recipe) -> Recipe:
    """The run's recipe with `final_data`: what the finalize trials train with. Nothing is selected on
    any more, so the objectives become the sources' val accuracy (a run's `target_select_acc` has no
    select domain under `final_data`), and the recipe is validated here, as each worker validates it."""
    values = recipe.model_dump(mode="json")
    values["data"] = final_data(recipe.data).model_dump(mode="json")
    values["search"].update(objectives={SOURCE_VAL_ACC: "max"}, constraints=[])
    return Recipe.model_validate(values)


def final_seeds(recipe: Recipe, n: int) -> list[int]:
    if n < 1:
        raise NormsearchError(f"--seeds {n}: give at least 1")
    return [recipe.seed + k for k in range(n)]


class FinalBook:
    """The driver side of a finalize: one job per seed not yet finished, and their terminal records (the
    searcher and callback of `confirm` drive it: `next_config`, `result`, `ended`)."""

    def __init__(
        self,
        folder: FinalFolder,
        recipe: Recipe,
        space: Space,
        trial: TrialRecord,
        seeds: list[int],
        pretrained: dict[str, str],
        extra: dict[str, Any],
        on_change: Callable[[FinalizeProgress], None] | None = None,
    ) -> None:
        self.folder, self.recipe, self.trial = folder, recipe, trial
        self.extra, self.on_change = extra, on_change
        self.outcome = FinalizeOutcome(folder, trial.trial_id, seeds)
        self.progress = FinalizeProgress(total=len(seeds), epochs=recipe.train.epochs)
        done = {t.trial_id: t for t in folder.trials()}
        self.queue: list[dict[str, Any]] = []
        self.live: dict[str, dict[str, Any]] = {}
        for seed in seeds:
            uid = confirm_trial_id(FINAL, seed)
            if uid in done and done[uid].finished:
                self.outcome.found.append(uid)
                if done[uid].status != "complete":
                    self.outcome.failed[uid] = done[uid].reason or done[uid].status
                self.progress.done += 1
                self.progress.epoch[uid] = done[uid].epoch or 0
                continue
            # An interrupted finalize continues; its checkpoint is read (safely) here, in the driver, so
            # that a planted file is one line before any trial is handed it (as confirm and resume do).
            checkpoint = folder.last_checkpoint(uid)
            if checkpoint is not None:
                read_checkpoint(checkpoint)
            self.live[uid] = {"seed": seed, "last": None}
            self.queue.append(
                {
                    **{k: v for k, v in trial.config.items() if k in space.params},
                    TRIAL_KEY: uid,
                    UNIT_KEY: "",
                    SEED_KEY: seed,
                    RESUME_KEY: str(checkpoint) if checkpoint else None,
                    INIT_KEY: pretrained.get(""),
                }
            )
        self.progress.message = (
            f"training {trial.trial_id} on {', '.join(recipe.data.sources)}: {len(self.queue)} seed(s), "
            f"{recipe.train.epochs} epoch(s) each"
            if self.queue
            else "every seed is on record"
        )

    def next_config(self) -> dict[str, Any] | None:
        return self.queue.pop(0) if self.queue else None

    def result(self, uid: str, result: dict[str, Any]) -> None:
        if uid not in self.live:
            return
        self.live[uid]["last"] = result
        if result.get("epoch") is not None and FAILED not in result:
            self.progress.epoch[uid] = int(result["epoch"])
            acc = result.get(SOURCE_VAL_ACC)
            self.progress.message = f"{uid}: epoch {result['epoch']}/{self.progress.epochs}" + (
                f", source val {acc:.1f}" if isinstance(acc, int | float) else ""
            )
            self._changed()

    def ended(self, uid: str, error: str | None = None) -> None:
        """A seed's Tune trial ended: its terminal record."""
        if uid not in self.live:
            return
        live = self.live.pop(uid)
        last = live["last"] or {}
        reason = error or last.get(FAILED)
        if reason is None and not last.get("final"):
            reason = "ended before its last epoch"
        record: dict[str, Any] = {
            "trial_id": uid,
            "time": time.time(),
            "finalize_of": self.trial.trial_id,
            "seed": live["seed"],
            "config": self.trial.config,
            "arch": self.trial.arch,
            "epoch": last.get("epoch"),
            **self.extra,
        }
        if last.get("resumed_from") is not None:  # continued from an interrupted finalize's checkpoint
            record["resumed_from"] = last["resumed_from"]
        if reason is None:
            record.update(status="complete", final=True, metrics=metrics_of(last))
            if isinstance(last.get("test"), dict):
                record["test"] = dict(last["test"])
            if last.get("started_from") is not None:
                record["extra"] = {"init": last["started_from"]}
            self.outcome.trained.append(uid)
        else:
            record.update(status="failed", reason=reason)
            if TRACE in last:
                record["traceback"] = last[TRACE]
            self.outcome.failed[uid] = reason
        self.folder.append(record)
        self.progress.done += 1
        self.progress.failed += reason is not None
        self.progress.message = f"{uid}: {record['status']}" + (f" ({reason})" if reason else "")
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.progress)


def _train(
    folder: FinalFolder,
    recipe: Recipe,
    space: Space,
    trial: TrialRecord,
    seeds: list[int],
    on_change: Callable[[FinalizeProgress], None] | None,
) -> FinalizeOutcome:
    """Train the seeds not yet on record through Ray Tune (the `confirm` machinery)."""
    if recipe.ray.address is None:
        check_local_resources(recipe.resources.cpu, recipe.resources.gpu)
    folder.claim()
    try:
        started = start_ray(recipe.ray.address)
        if recipe.ray.address is not None:
            check_cluster_resources(recipe.resources.cpu, recipe.resources.gpu)
        elif started:
            folder.record_processes(local_ray_processes())
        bases = pretrained_bases(folder, recipe)  # init: pretrain: a base pretrained on every source
        experiment = folder.new_attempt()
        extra = {"attempt": experiment, "versions": versions()}
        book = FinalBook(folder, recipe, space, trial, seeds, bases, extra, on_change)
        book._changed()
        if book.queue:
            tuner = make_tuner(
                recipe,
                space,
                folder,
                experiment,
                searcher=_searcher(book),  # type: ignore[arg-type]  (duck-typed: next_config/result/ended)
                callback=_callback(book),  # type: ignore[arg-type]
                num_samples=len(book.queue),
                trial_name=lambda t: FinalFolder.trial_dirname(str(t.config[TRIAL_KEY])),
            )
            tuner.fit()
        book.outcome.unfinished = sorted(book.live)
        return book.outcome
    finally:
        folder.release()


def run_finalize(
    run_dir: str | Path,
    out: str | Path,
    trial_id: str | None = None,
    rule: str | None = None,
    seeds: int = 1,
    max_source_drop: float | None = None,
    on_change: Callable[[FinalizeProgress], None] | None = None,
) -> FinalizeOutcome:
    """Finalize a configuration of the run in `run_dir` into the folder `out` (module docstring); a rerun of
    the same request continues it, and a finished one is found, not trained again."""
    summary, trial, seed_list, folder = prepare_finalize(run_dir, out, trial_id, rule, seeds, max_source_drop)
    recipe = final_recipe(summary.recipe)
    if FinalFolder.is_finished(folder.path):
        ids = [confirm_trial_id(FINAL, s) for s in seed_list]
        return FinalizeOutcome(folder, trial.trial_id, seed_list, found=ids)
    preprocessing = preprocessing_for(recipe, trial)  # loads the data: a moved folder fails before Ray
    probe = FinalBook(folder, recipe, summary.space, trial, seed_list, {}, {})
    if probe.queue:
        outcome = _train(folder, recipe, summary.space, trial, seed_list, on_change)
    else:  # every seed on record (interrupted while writing the model): nothing starts Ray
        outcome = probe.outcome
    if not outcome.unfinished and not outcome.failed:
        write_model(folder, summary, recipe, trial, rule, seed_list, preprocessing)
        outcome.written = True
    return outcome
