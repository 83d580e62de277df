"""Run or resume a search: checks, Ray, the run folder, the study, and one Ray Tune experiment per driver.

The order matters: every check that can fail runs before the run folder exists (search/preflight.py);
then the folder is made (so that its path, once printed, is a run `resume` can continue even if the driver
is killed while Ray starts), and Ray is started within `ray.startup_timeout` (or the cluster joined and its
nodes checked; a cluster that cannot be used removes the folder again, nothing having run). Each driver
(`run`, then every `resume`) runs its own Tune experiment `tune/attempt-<k>` in the folder; what carries
over between them is the study and the records, reconciled on resume (run/reconcile.py): finished trials
are never run again and unfinished ones continue from their last epoch checkpoint under their own study
trial. Ray Tune's own files there (``tuner.pkl``, ``params.pkl``, its experiment state) are written for
Tune's tools and never read by normsearch: no driver restores a Tune experiment (`Tuner.restore`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune import Callback

from normsearch import __version__
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.metrics import SOURCE_VAL_ACC
from normsearch.models.weights import save_checkpoint
from normsearch.recipe import Recipe
from normsearch.run.folder import RunFolder
from normsearch.run.reconcile import Recovery, end_orphans, mark_interrupted, reconcile
from normsearch.run.records import UNIT_SEPARATOR
from normsearch.run.study import check_study, open_study, rebuild_study, require_sound_study
from normsearch.search.ledger import Ledger, make_callback
from normsearch.search.preflight import Preflight, check_nodes, preflight, trial_budget
from normsearch.search.progress import Progress
from normsearch.search.ray import (
    RayStartTimeout,
    check_cluster_resources,
    local_ray_processes,
    ray_temp_dir,
    start_ray,
)
from normsearch.search.schedulers import make_scheduler
from normsearch.search.searcher import make_sampler, make_searcher
from normsearch.search.trial import TRIAL_KEY, run_trial
from normsearch.search.warm_start import train_supernet
from normsearch.space import Space
from normsearch.train import init_mode, pretrain


def versions() -> dict[str, str]:
    """Versions of what produced the numbers, stored with every record."""
    return {
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "normsearch": __version__,
    }


@dataclass
class SearchOutcome:
    """What a driver did: how its trials ended, what it recovered, and whether it was interrupted."""

    folder: RunFolder
    progress: Progress | None = None
    recovery: Recovery | None = None
    interrupted: list[str] = field(default_factory=list)  # trials handed out and not finished
    incomplete: bool = False  # stopped before its budget was spent or its space visited (Ctrl-C)
    nothing_to_do: bool = False

    @property
    def all_failed(self) -> bool:
        p = self.progress
        return p is not None and p.failed > 0 and p.done == 0 and p.pruned == 0 and p.repeats == 0


def _message(on_change: Callable[[Progress], None] | None) -> Callable[[str], None] | None:
    """A progress line for work the driver does before the trials (the live view shows `message`)."""
    if on_change is None:
        return None
    progress = Progress(total=0)

    def show(text: str) -> None:
        progress.message = text
        on_change(progress)

    return show


def pretrained_bases(
    folder: RunFolder, recipe: Recipe, on_change: Callable[[Progress], None] | None = None
) -> dict[str, str]:
    """`train.init: pretrain`: the base architecture pretrained once per set of sources (a fold's base never
    sees its held-out domain) and kept in the run folder; a base already there is used, never retrained
    (resume). Returns unit name -> checkpoint path; empty for any other `train.init`."""
    if recipe.train.init_from is not None or init_mode(recipe.model, recipe.train, given=True) != "pretrain":
        return {}
    paths: dict[str, str] = {}
    by_sources: dict[tuple[str, ...], str] = {}
    data = None
    show = _message(on_change)
    for unit in recipe.data.units():
        if unit.sources in by_sources:
            paths[unit.name] = by_sources[unit.sources]
            continue
        path = folder.pretrained_path(unit.name)
        if not path.is_file():
            data = data or load_data(recipe.data)

            def report(metrics: dict, unit=unit) -> None:
                if show is not None:
                    show(
                        f"pretraining the base on {', '.join(unit.sources)}: epoch {metrics['epoch']}, "
                        f"source val {metrics[SOURCE_VAL_ACC]:.1f}"
                    )

            result = pretrain(recipe, unit, data=data, report=report)
            assert result.checkpoint is not None
            save_checkpoint(result.checkpoint, path)
        by_sources[unit.sources] = paths[unit.name] = str(path)
    return paths


def _trainable(recipe: Recipe, space: Space, trainable: Callable[..., None] = run_trial):
    return tune.with_resources(
        tune.with_parameters(
            trainable, recipe_json=recipe.model_dump_json(), space_json=space.model_dump_json()
        ),
        {"cpu": recipe.resources.cpu, "gpu": recipe.resources.gpu},
    )


def make_tuner(
    recipe: Recipe,
    space: Space,
    folder: RunFolder,
    experiment: str,
    searcher: Any,
    callback: Any,
    num_samples: int,
    trial_name: Callable[[Any], str],
    scheduler: Any = None,
    trainable: Callable[..., None] = run_trial,
) -> Any:
    """One Ray Tune experiment `tune/<experiment>` in the run folder, the way every driver runs one (a
    search attempt, a confirmation): the recipe's trainable and resources, concurrency, retries of lost
    workers from the last epoch checkpoint, Tune's result files, the trial directory named by the trial."""
    storage = folder.storage  # off the driver (run/storage.py): every node writes and reads it
    place = (
        {"storage_path": folder.storage_tune_path, "storage_filesystem": storage.filesystem}
        if storage is not None
        else {"storage_path": str(folder.tune_dir)}
    )
    return tune.Tuner(
        _trainable(recipe, space, trainable),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=recipe.search.max_concurrent,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            **place,
            verbose=0,
            callbacks=[callback] if storage is None else [callback, mirror_callback(folder)],
            failure_config=tune.FailureConfig(max_failures=recipe.search.failures.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def check_folder(folder: RunFolder, recipe: Recipe, space: Space, repair: bool) -> None:
    """Before Ray starts on `resume`: a record damaged in the middle of trials.jsonl is refused (a torn
    last line is repaired later, by `reconcile`); a damaged study.db is refused with the repair command,
    or, with `repair`, rebuilt from the records."""
    folder.records()
    problem = check_study(folder)
    if problem is not None and not repair:
        require_sound_study(folder)
    if problem is not None:
        rebuild_study(folder, recipe.name, recipe.search.objectives, space)


def start_run_ray(folder: RunFolder, recipe: Recipe, timeout: float) -> bool:
    """Start (or join) Ray within `ray.startup_timeout`; a local Ray's temp folder is recorded in
    driver.json before it starts, and its processes after, so that no process it starts is orphaned."""
    temp_dir = None
    if recipe.ray.address is None:
        temp_dir = ray_temp_dir(folder.path)
        folder.record_ray_dir(temp_dir)
    started = start_ray(recipe.ray.address, timeout=timeout, temp_dir=temp_dir)
    if recipe.ray.address is not None:
        check_cluster_resources(recipe.resources.cpu, recipe.resources.gpu)
        check_nodes(recipe, folder.path)  # every node sees the storage (or the run folder) and the data
    if started and recipe.ray.address is None:
        folder.record_processes(local_ray_processes())
    return started


def mirror_callback(folder: RunFolder) -> Any:
    """A Tune callback, after the ledger's, that mirrors the run folder to its storage after each record
    (so a new head node can resume); a failed copy is retried at the next record, not fatal."""

    class Mirror(Callback):
        def _mirror(self) -> None:
            # A failed copy: the next record (and the driver's last mirror) copies it again.
            with contextlib.suppress(OSError):
                folder.mirror()

        def on_trial_result(self, *args: Any, **info: Any) -> None:
            self._mirror()

        def on_trial_complete(self, *args: Any, **info: Any) -> None:
            self._mirror()

        def on_trial_error(self, *args: Any, **info: Any) -> None:
            self._mirror()

    return Mirror()


def _trial_name(trial) -> str:
    return str(trial.config[TRIAL_KEY])


def _claim_folder(
    recipe: Recipe, space: Space, run_dir: Path, resume: bool, checked: Preflight | None, repair: bool
) -> tuple[RunFolder, int, bool]:
    """The run folder this driver claims, after the preflight (unless `checked`): on `resume` the folder
    as checked and repaired, with the orphaned processes of a dead driver ended; otherwise a new run
    folder. Returns it, how many orphans were ended and whether the folder was made here."""
    if resume:
        folder = RunFolder.open(run_dir)
        check_folder(folder, recipe, space, repair)
        folder.claim()
        ended = end_orphans(folder)
        if checked is None:
            preflight(recipe, space, None)
        return folder, ended, False
    folder = RunFolder(run_dir)
    if checked is None:
        preflight(recipe, space, folder.path)
    made = not folder.path.exists()
    # The folder before Ray: a driver killed while Ray starts leaves a run that `resume` continues.
    folder = RunFolder.create(folder.path, recipe, space)
    folder.claim()
    return folder, 0, made


def _start_ray(
    folder: RunFolder, recipe: Recipe, startup_timeout: float | None, discard: bool | None
) -> None:
    """Start (or connect to) the run's Ray. A start-up past its bound says how to continue; a cluster that
    cannot be used discards a new run (`discard`: whether its folder was made here; None on resume)."""
    try:
        start_run_ray(folder, recipe, startup_timeout or recipe.ray.startup_timeout)
    except RayStartTimeout as error:
        resume_hint = f"normsearch resume {folder.path}"
        raise RayStartTimeout(f"{error}; nothing was trained. Continue with: {resume_hint}") from None
    except NormsearchError:
        if discard is not None:
            folder.discard(discard)  # a cluster that cannot be used: nothing ran, nothing is left behind
        raise


def run_search(
    recipe: Recipe,
    space: Space,
    run_dir: Path,
    on_change: Callable[[Progress], None] | None = None,
    resume: bool = False,
    checked: Preflight | None = None,
    on_folder: Callable[[RunFolder], None] | None = None,
    repair: bool = False,
    startup_timeout: float | None = None,
    trainable: Callable[..., None] = run_trial,
) -> SearchOutcome:
    """Run (or, with `resume`, continue) the search of `recipe` over `space` in `run_dir`.

    `checked` is the result of `preflight` when the caller already ran it (the CLI shows it first).
    `on_folder` is called once the run folder exists (the CLI prints its path then, not before). With
    `repair`, a damaged study.db is rebuilt from the records (run/study.py `rebuild_study`).
    `startup_timeout` replaces the recipe's `ray.startup_timeout` for this driver (not saved with the run).
    `trainable` is what each trial runs (`bench driver` gives one that trains nothing)."""
    folder, ended, made = _claim_folder(recipe, space, run_dir, resume, checked, repair)
    if on_folder is not None:
        on_folder(folder)
    objectives = recipe.search.objectives
    study = open_study(folder, recipe.name, objectives, make_sampler(recipe))
    unit_names = [u.name for u in recipe.data.units()]
    # Before Ray: reconciling reads every checkpoint a continued trial will get, so a planted one is one
    # line with nothing started.
    recovery = reconcile(folder, study, objectives, unit_names) if resume else None
    _start_ray(folder, recipe, startup_timeout, discard=None if resume else made)
    if folder.storage is not None:
        folder.mirror()

    bases = pretrained_bases(folder, recipe, on_change)
    train_supernet(folder, recipe, space, study, _message(on_change))
    if recovery is not None:
        recovery.ended_processes = ended
    trained_before = sum(
        t.finished and t.status != "repeat" and UNIT_SEPARATOR not in t.trial_id
        for t in (folder.trials() if folder.records_path.is_file() else [])
    )
    budget = max(trial_budget(recipe, space) - trained_before, 0)
    attempt = folder.new_attempt()
    ledger = Ledger(
        folder,
        study,
        recipe,
        space,
        attempt,
        budget,
        continued=recovery.continued if recovery else None,
        waiting=recovery.waiting if recovery else None,
        on_change=on_change,
        versions=versions(),
        pretrained=bases,
    )
    outcome = SearchOutcome(folder, ledger.progress, recovery)
    if budget == 0:
        outcome.nothing_to_do = True
        folder.release()
        return outcome
    tuner = make_tuner(
        recipe,
        space,
        folder,
        attempt,
        searcher=make_searcher(ledger),
        callback=make_callback(ledger),
        num_samples=budget * len(recipe.data.units()),
        trial_name=_trial_name,
        scheduler=make_scheduler(recipe),
        trainable=trainable,
    )
    try:
        tuner.fit()
    finally:
        outcome.interrupted = ledger.unfinished()
        outcome.incomplete = bool(outcome.interrupted) or (
            ledger.handed_out < budget and not ledger.exhausted
        )
        if outcome.interrupted:
            mark_interrupted(folder, study)
        folder.release()
        if folder.storage is not None:
            folder.mirror()
    return outcome
