"""`normsearch confirm`: re-train chosen configurations of a run with new model seeds, through Ray Tune.

A front built from one seed per configuration is noisy; confirming re-trains each chosen configuration
(the front's, or given trials) with the seeds ``recipe.seed + 1 .. recipe.seed + n`` under the run's own
recipe: same data, training, resources and protocol units, and the same pretrained base where the run
pretrained one. The machinery is the search's: one Tune experiment ``tune/confirm-<k>`` whose trainable is
`search.trial.run_trial` (the seed passed as `SEED_KEY`), one Tune trial per (configuration, seed, unit),
checkpointed every epoch, and a Tune callback that appends each unit's terminal record and, when a seed's
last unit ends, the combined record (`run.records.candidate_record`), exactly as the ledger does for the
search.

Confirmation records are new records: trial id ``t003/s<seed>`` (``t003/s<seed>@<unit>`` for a unit), field
``confirm_of: t003`` and ``seed``; they never enter the Optuna study, and `RunFolder.trials()` leaves them
out, so the front and the search's counts do not change. Confirming again is safe: a seed that already
finished is found in the records and not trained again (a failed one neither: training is deterministic, it
would fail the same way), and an interrupted one continues from its last epoch checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from normsearch.errors import NormsearchError
from normsearch.metrics import POLICIES
from normsearch.recipe import Recipe
from normsearch.results.front import RunSummary, find_trial, summarize
from normsearch.run.checkpoints import check_state
from normsearch.run.folder import CONFIRM_PREFIX, RunFolder
from normsearch.run.records import (
    TrialRecord,
    candidate_record,
    confirm_trial_id,
    fold_records,
    metrics_of,
    unit_trial_id,
)
from normsearch.search.ledger import _error_line
from normsearch.search.ray import check_local_resources
from normsearch.search.trial import FAILED, INIT_KEY, RESUME_KEY, SEED_KEY, TRACE, TRIAL_KEY, UNIT_KEY
from normsearch.search.tuner import make_tuner, pretrained_bases, start_run_ray, versions
from normsearch.space import Space


@dataclass
class ConfirmProgress:
    """What the progress bar shows: unit trainings done of all to do, and the last event."""

    total: int
    done: int = 0
    failed: int = 0
    message: str = ""


@dataclass
class ConfirmOutcome:
    """What a confirm did: the search trials confirmed, the seeds, what trained now and what was found."""

    folder: RunFolder
    chosen: list[str]
    seeds: list[int]
    trained: list[str] = field(default_factory=list)  # confirmation ids trained by this call
    found: list[str] = field(default_factory=list)  # already finished before this call
    failed: list[str] = field(default_factory=list)
    experiment: str | None = None
    unfinished: list[str] = field(default_factory=list)  # unit runs not ended (interrupted)


def choose_trials(summary: RunSummary, trial_ids: list[str] | None, front: bool) -> list[TrialRecord]:
    """The search trials to confirm: the given ids (each must be a complete candidate), or one trial per
    point of the front."""
    if trial_ids and front:
        raise NormsearchError("confirm: give --front or --trials ID,..., not both")
    if not trial_ids:
        chosen = [summary.front.trials[i][0] for i in summary.front.members]
        if not chosen:
            raise NormsearchError(f"{summary.folder.path}: no complete trial, so no front to confirm")
        return chosen
    out = []
    for tid in trial_ids:
        trial = find_trial(summary.candidates, tid)
        if not trial.complete:
            raise NormsearchError(
                f"--trials {tid}: {trial.status}; only a complete configuration can be confirmed"
            )
        if trial.trial_id not in {t.trial_id for t in out}:
            out.append(trial)
    return out


def confirm_seeds(recipe: Recipe, n: int) -> list[int]:
    """The confirmation seeds: the n seeds after the recipe's (the search trained with the recipe's)."""
    if n < 1:
        raise NormsearchError(f"--seeds {n}: give at least 1")
    return [recipe.seed + k for k in range(1, n + 1)]


class ConfirmBook:
    """The driver side of a confirm: the unit jobs to hand out, and the records of their outcomes."""

    def __init__(
        self,
        folder: RunFolder,
        recipe: Recipe,
        space: Space,
        chosen: list[TrialRecord],
        seeds: list[int],
        experiment: str,
        pretrained: dict[str, str],
        versions: dict[str, str],
        on_change: Callable[[ConfirmProgress], None] | None = None,
    ) -> None:
        self.folder, self.recipe, self.space = folder, recipe, space
        self.units = recipe.data.units()
        self.experiment, self.versions = experiment, versions
        self.on_change = on_change
        self.outcome = ConfirmOutcome(folder, [t.trial_id for t in chosen], seeds, experiment=experiment)
        done = {t.trial_id: t for t in folder.confirmations()}
        self.queue: list[dict[str, Any]] = []
        self.live: dict[str, dict[str, Any]] = {}  # unit trial id -> its job
        self.open: dict[str, dict[str, Any]] = {}  # confirmation id -> trial, seed, units left, outcomes
        self.ready: list[str] = []  # every unit finished before an interruption: only the combined record
        for trial in chosen:
            for seed in seeds:
                cid = confirm_trial_id(trial.trial_id, seed)
                if cid in done and done[cid].finished:
                    self.outcome.found.append(cid)
                    continue
                self._add(trial, seed, cid, done, pretrained)
        self.progress = ConfirmProgress(total=len(self.queue))

    def _add(
        self,
        trial: TrialRecord,
        seed: int,
        cid: str,
        done: dict[str, TrialRecord],
        pretrained: dict[str, str],
    ) -> None:
        outcomes: dict[str, TrialRecord] = {}
        left = set()
        for unit in self.units:
            uid = unit_trial_id(cid, unit.name)
            if uid != cid and uid in done and done[uid].finished:
                outcomes[unit.name] = done[uid]
                continue
            # An interrupted confirmation continues; its checkpoint is checked here, in the driver.
            checkpoint = check_state(self.folder.last_checkpoint(uid))
            left.add(unit.name)
            self.live[uid] = {"cid": cid, "unit": unit.name, "last": None}
            self.queue.append(
                {
                    **{k: v for k, v in trial.config.items() if k in self.space.params},
                    TRIAL_KEY: uid,
                    UNIT_KEY: unit.name,
                    SEED_KEY: seed,
                    RESUME_KEY: str(checkpoint) if checkpoint else None,
                    INIT_KEY: pretrained.get(unit.name),
                }
            )
        self.open[cid] = {"trial": trial, "seed": seed, "left": left, "outcomes": outcomes}
        if not left:
            self.ready.append(cid)

    @property
    def pending(self) -> bool:
        """Whether anything is left to train or to record."""
        return bool(self.queue or self.ready)

    def close_ready(self) -> None:
        """Write the combined records of seeds whose every unit had already finished."""
        for cid in self.ready:
            self._close(cid)
        self.ready = []

    def next_config(self) -> dict[str, Any] | None:
        return self.queue.pop(0) if self.queue else None

    def _base(self, cid: str) -> dict[str, Any]:
        job = self.open[cid]
        trial: TrialRecord = job["trial"]
        return {
            "confirm_of": trial.trial_id,
            "seed": job["seed"],
            "time": time.time(),
            "config": trial.config,
            "arch": trial.arch,
            "selection": self.recipe.data.selection,
            "attempt": self.experiment,
            "versions": self.versions,
        }

    def result(self, uid: str, result: dict[str, Any]) -> None:
        if uid in self.live:
            self.live[uid]["last"] = result
            if FAILED not in result and result.get("epoch") is not None:
                self.progress.message = f"{uid}: epoch {result['epoch']}/{self.recipe.train.epochs}"
                if self.on_change is not None:
                    self.on_change(self.progress)

    def ended(self, uid: str, error: str | None = None) -> None:
        """A unit's Tune trial ended: its terminal record, then the seed's combined record when it was the
        seed's last unit."""
        if uid not in self.live:
            return
        live = self.live.pop(uid)
        last = live["last"] or {}
        cid = live["cid"]
        record: dict[str, Any] = {"trial_id": uid, **self._base(cid)}
        if live["unit"]:
            record["unit"] = live["unit"]
        reason = error or last.get(FAILED)
        if reason is None and not last.get("final"):
            reason = "ended before its last epoch"
        record.update(epoch=last.get("epoch"), node_id=last.get("node_id"))
        if reason is None:
            record.update(status="complete", final=True, metrics=metrics_of(last))
            if isinstance(last.get("test"), dict):
                record["test"] = dict(last["test"])
            if isinstance(last.get(POLICIES), dict):  # each policy's numbers, read per (trial, policy) row
                record["extra"] = {POLICIES: last[POLICIES]}
        else:
            record.update(status="failed", reason=reason)
            if TRACE in last:
                record["traceback"] = last[TRACE]
        self.folder.append(record)
        job = self.open[cid]
        job["left"].discard(live["unit"])
        job["outcomes"][live["unit"]] = fold_records([record])[0]
        self.progress.done += 1
        self.progress.failed += reason is not None
        self.progress.message = f"{uid}: {record['status']}" + (f" ({reason})" if reason else "")
        if not job["left"]:
            self._close(cid)
        if self.on_change is not None:
            self.on_change(self.progress)

    def _close(self, cid: str) -> None:
        base = {k: v for k, v in self._base(cid).items() if k != "time"}
        job = self.open.pop(cid)
        if len(self.units) == 1:
            folded = job["outcomes"][self.units[0].name]
        else:
            record = candidate_record(cid, self.units, job["outcomes"], base)
            self.folder.append(record)
            folded = fold_records([record])[0]
        (self.outcome.trained if folded.complete else self.outcome.failed).append(cid)


def _searcher(book: ConfirmBook) -> Any:
    """A Tune Searcher that hands out the book's unit jobs in order, then says it is finished."""

    class ConfirmSearcher(Searcher):
        # The book comes in through __init__, never through the closure: Tune pickles this class.
        def __init__(self, book: ConfirmBook) -> None:
            super().__init__()
            self.book: ConfirmBook | None = book

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "book": None}  # driver-side; the records are the state

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            config = self.book.next_config() if self.book else None
            return Searcher.FINISHED if config is None else config

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass  # the callback records

    return ConfirmSearcher(book)


def _callback(book: ConfirmBook) -> Any:

    class ConfirmCallback(Callback):
        def __init__(self, book: ConfirmBook) -> None:
            self.book: ConfirmBook | None = book

        def __getstate__(self) -> dict[str, Any]:
            return {"book": None}

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            if self.book:
                self.book.result(str(trial.config.get(TRIAL_KEY)), result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.book:
                self.book.ended(str(trial.config.get(TRIAL_KEY)))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.book:
                self.book.ended(str(trial.config.get(TRIAL_KEY)), error=_error_line(trial))

    return ConfirmCallback(book)


def run_confirm(
    run_dir: str,
    trial_ids: list[str] | None = None,
    front: bool = False,
    seeds: int = 3,
    on_change: Callable[[ConfirmProgress], None] | None = None,
) -> ConfirmOutcome:
    """Confirm the chosen configurations of the run in `run_dir` with `seeds` new model seeds (module
    docstring); returns what was trained and what was found already done."""
    summary = summarize(run_dir)
    folder, recipe, space = summary.folder, summary.recipe, summary.space
    chosen = choose_trials(summary, trial_ids, front)
    seed_list = confirm_seeds(recipe, seeds)
    experiment = folder.new_attempt(CONFIRM_PREFIX)
    probe = ConfirmBook(folder, recipe, space, chosen, seed_list, experiment, {}, {})
    if not probe.pending:  # every seed of every configuration is on record: nothing starts Ray
        probe.outcome.experiment = None
        return probe.outcome
    if recipe.ray.address is None:
        check_local_resources(recipe.resources.cpu, recipe.resources.gpu)
    folder.claim()
    try:
        start_run_ray(folder, recipe, recipe.ray.startup_timeout)
        bases = pretrained_bases(folder, recipe)  # the run's bases, pretrained once (found on disk)
        book = ConfirmBook(folder, recipe, space, chosen, seed_list, experiment, bases, versions(), on_change)
        book.close_ready()
        if on_change is not None:
            on_change(book.progress)
        if book.queue:

            def name(trial: Any) -> str:
                return RunFolder.trial_dirname(str(trial.config[TRIAL_KEY]))

            tuner = make_tuner(
                recipe,
                space,
                folder,
                experiment,
                searcher=_searcher(book),
                callback=_callback(book),
                num_samples=len(book.queue),
                trial_name=name,
            )
            tuner.fit()
        book.outcome.found = probe.outcome.found
        book.outcome.unfinished = sorted(book.live)  # Ctrl-C: Tune stops, these never ended
        return book.outcome
    finally:
        folder.release()
