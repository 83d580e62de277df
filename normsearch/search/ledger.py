"""The driver's bookkeeping between Ray Tune, the Optuna study and the run folder.

One `Ledger` per driver. The searcher asks it for the next configuration (`next_config`), and a Tune
callback (`LedgerCallback`) tells it every trial event. For each event the ledger appends the record
first and tells the study second, so that after a killed driver the records always know at least as much
as the study (run/reconcile.py relies on this). It also keeps the rule that no configuration is trained
twice: a sampled configuration that was already trained (or is being trained) with the same seed becomes
a *repeat* study trial told its twin's outcome, and a finite space that has been fully visited ends the
search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from normsearch.errors import NormsearchError
from normsearch.metrics import POLICIES, SOURCE_VAL_ACC, TARGET_SELECT_ACC
from normsearch.recipe import Recipe
from normsearch.results.pareto import non_dominated
from normsearch.run.folder import RunFolder
from normsearch.run.journal import study_written
from normsearch.run.reconcile import Continued, repeat_record
from normsearch.run.records import (
    UNIT_SEPARATOR,
    TrialRecord,
    candidate_record,
    config_key,
    fold_records,
    metrics_of,
    trial_key,
    unit_trial_id,
)
from normsearch.run.study import close_trial, live_trial, set_attrs
from normsearch.search.constraints import best_values, parse_constraint, violations
from normsearch.search.moasha import stop_reason
from normsearch.search.preflight import network_count
from normsearch.search.progress import Progress
from normsearch.search.trial import FAILED, INIT_KEY, RESUME_KEY, STARTED_FROM, TRACE, TRIAL_KEY, UNIT_KEY
from normsearch.space import Space

MAX_REPEATS_IN_A_ROW = 200  # a sampler that proposes only visited points this often has nothing new


class Ledger:
    """See the module docstring. `budget` is how many trials this driver may train (continued included)."""

    def __init__(
        self,
        folder: RunFolder,
        study: Any,
        recipe: Recipe,
        space: Space,
        attempt: str,
        budget: int,
        continued: list[Continued] | None = None,
        waiting: dict[str, list[int]] | None = None,
        on_change: Callable[[Progress], None] | None = None,
        versions: dict[str, str] | None = None,
        pretrained: dict[str, str] | None = None,
    ) -> None:
        self.folder, self.study, self.recipe, self.space = folder, study, recipe, space
        self.objectives = recipe.search.objectives
        self.attempt = attempt
        self.budget = budget
        self.units = recipe.data.units()
        self.pretrained = pretrained or {}  # unit -> the pretrained base it fine-tunes from
        self.pending = list(continued or [])
        self.waiting: dict[str, list[int]] = {k: list(v) for k, v in (waiting or {}).items()}
        self.on_change = on_change
        self.versions = versions or {}
        self.size = network_count(recipe, space)  # distinct networks, not spellings of one
        self.exhausted = False
        self.handed_out = 0  # candidates
        self.queue: list[dict[str, Any]] = []  # unit configurations handed out next
        self.candidates: dict[
            str, dict[str, Any]
        ] = {}  # trial key -> number, config, arch, units left, outcomes
        self.live: dict[str, dict[str, Any]] = {}  # unit trial id -> {key, unit, last}
        self.trained: dict[str, TrialRecord] = {}  # config key -> the trial that trained it (finished)
        self.training: dict[str, str] = {}  # config key -> trial key training it now
        self.progress = Progress(total=budget, epochs_per_trial=recipe.train.epochs * len(self.units))
        self.constraints = [parse_constraint(text) for text in recipe.search.constraints]
        for trial in folder.trials() if folder.records_path.is_file() else []:
            if trial.finished and trial.status != "repeat" and UNIT_SEPARATOR not in trial.trial_id:
                self.trained.setdefault(trial.key(), trial)
                self._count(trial)
        self.progress.before = self.progress.done + self.progress.pruned + self.progress.failed
        self.progress.total = budget + self.progress.before

    # --- asking ----------------------------------------------------------------------------------------
    def next_config(self) -> dict[str, Any] | None:
        """The next (candidate, unit) to train, or None when the search is over (budget spent, space
        visited). All units of a candidate are handed out before the next candidate is asked for."""
        if self.queue:
            return self.queue.pop(0)
        if self.handed_out >= self.budget:
            return None
        if self.pending:
            job = self.pending.pop(0)
            # Sampled through a live trial: a trial asked just before the kill gets its missing values now.
            values = self.space.sample(live_trial(self.study, job.number))
            arch = self.space.to_arch(self.recipe.model, values).to_dict()
            if not self._placed(job.key, job.number, config_key(arch)):
                self._start(job.key, job.number, values, arch, job.jobs, job.finished)
                if not self.queue:  # every unit had finished before the kill: only the candidate is left
                    self._close_candidate(job.key)
            return self.next_config()
        for _ in range(MAX_REPEATS_IN_A_ROW):
            if self.size is not None and len(self.trained) + len(self.training) >= self.size:
                break
            asked = self.study.ask()
            study_written()  # a crash-test point between the ask and the first suggest (run/journal)
            values = self.space.sample(_WritePoints(asked))
            arch = self.space.to_arch(self.recipe.model, values).to_dict()
            key = trial_key(asked.number)
            if self._placed(key, asked.number, config_key(arch)):
                continue
            self._start(key, asked.number, values, arch, [(u.name, None, 0) for u in self.units], {})
            return self.queue.pop(0)
        self._exhausted()
        return None

    def _placed(self, key: str, number: int, ckey: str) -> bool:
        """Whether study trial `number` is a repeat of a configuration trained (told its twin's outcome now)
        or being trained (waits for its twin), instead of a candidate to train."""
        if ckey in self.trained:
            self._repeat(key, number, self.trained[ckey])
            return True
        if ckey in self.training:
            twin = self.training[ckey]
            set_attrs(self.study, number, {"trial": key, "repeat_of": twin})
            self.waiting.setdefault(twin, []).append(number)
            return True
        return False

    def _exhausted(self) -> None:
        self.exhausted = True
        self.progress.message = (
            f"space exhausted: all {self.size} configuration(s) trained"
            if self.size is not None
            else f"the sampler proposed only trained configurations {MAX_REPEATS_IN_A_ROW} times in a row"
        )
        if self.size is not None and self.recipe.search.num_samples > self.size:
            self.progress.message += (
                f" (num_samples {self.recipe.search.num_samples} is more than the space holds)"
            )
        self._changed()

    def _start(
        self,
        key: str,
        number: int,
        values: dict[str, Any],
        arch: dict[str, Any],
        jobs: list[tuple[str, Any, int]],
        finished: dict[str, TrialRecord],
    ) -> None:
        self.handed_out += 1
        self.candidates[key] = {
            "number": number,
            "config": values,
            "arch": arch,
            "left": {name for name, _, _ in jobs},
            "outcomes": dict(finished),
        }
        self.training[config_key(arch)] = key
        set_attrs(self.study, number, {"trial": key})
        for name, checkpoint, _ in jobs:
            uid = unit_trial_id(key, name)
            self.live[uid] = {"key": key, "unit": name, "last": None}
            self.queue.append(
                {
                    **values,
                    TRIAL_KEY: uid,
                    UNIT_KEY: name,
                    RESUME_KEY: str(checkpoint) if checkpoint else None,
                    INIT_KEY: self.pretrained.get(name),
                }
            )

    def _repeat(self, key: str, number: int, twin: TrialRecord) -> None:
        record = repeat_record(key, twin, attempt=self.attempt, versions=self.versions)
        self.folder.append(record)
        folded = fold_records([record])[0]
        close_trial(self.study, number, folded, self.objectives, self._violations(folded))
        self.progress.repeats += 1

    # --- trial events (from the Tune callback) ---------------------------------------------------------
    def _shared(self, candidate: dict[str, Any]) -> dict[str, Any]:
        """What every record of a candidate (and of its units) carries."""
        return {
            "config": candidate["config"],
            "arch": candidate["arch"],
            "seed": self.recipe.seed,
            "selection": self.recipe.data.selection,
            "attempt": self.attempt,
            "versions": self.versions,
        }

    def _base(self, uid: str, status: str) -> dict[str, Any]:
        candidate = self.candidates[self.live[uid]["key"] if uid in self.live else uid]
        record = {"trial_id": uid, "status": status, "time": time.time(), **self._shared(candidate)}
        if uid in self.live and self.live[uid]["unit"]:
            record["unit"] = self.live[uid]["unit"]
        return record

    def started(self, uid: str) -> None:
        if uid in self.live:
            self.progress.running.add(self.live[uid]["key"])
            self.progress.working_since = self.progress.working_since or time.time()
            self._changed()

    def result(self, uid: str, result: dict[str, Any]) -> None:
        """A per-epoch result: recorded as "running" (the terminal record comes when the trial ends)."""
        if uid not in self.live:
            return
        self.live[uid]["last"] = result
        if FAILED in result:
            return
        self.progress.epochs[uid] = int(result.get("epoch") or 0)
        self._changed()  # the ETA follows the epochs
        record = self._base(uid, "running")
        record.update(
            epoch=result.get("epoch"),
            final=bool(result.get("final")),
            metrics=metrics_of(result),
            node_id=result.get("node_id"),
        )
        if result.get("resumed_from") is not None:
            record["resumed_from"] = result["resumed_from"]
        self.folder.append(record)

    def ended(self, uid: str, error: str | None = None) -> None:
        """A unit's trial ended (finished, stopped, failed in our code, or lost its worker): its terminal
        record; once every unit of the candidate has ended, the candidate's record, then the study, then
        its waiting repeats."""
        if uid not in self.live:
            return
        last = self.live[uid]["last"] or {}
        if error is not None:
            status, reason = "failed", error
        elif FAILED in last:
            status, reason = "failed", str(last[FAILED])
        elif last.get("final"):
            status, reason = "complete", None
        else:
            status = "pruned"
            reason = stop_reason(self.recipe.search.scheduler, last, self.objectives)
        record = self._base(uid, status)
        epoch_result = last if status == "complete" else self._last_epoch_result(last)
        record.update(epoch=last.get("epoch"), final=status == "complete", node_id=last.get("node_id"))
        if epoch_result:
            record["metrics"] = metrics_of(epoch_result)
        if status == "complete" and isinstance(last.get("test"), dict):
            record["test"] = dict(last["test"])
        if reason:
            record["reason"] = reason
        if TRACE in last:
            record["traceback"] = last[TRACE]
        if last.get(STARTED_FROM):
            record["extra"] = {"init": last[STARTED_FROM]}
        if status == "complete" and isinstance(last.get(POLICIES), dict):  # the other test-time statistics
            record.setdefault("extra", {})[POLICIES] = last[POLICIES]
        self.folder.append(record)
        self.progress.epochs[uid] = self.recipe.train.epochs  # its work is done until the candidate closes
        live = self.live.pop(uid)
        candidate = self.candidates[live["key"]]
        candidate["left"].discard(live["unit"])
        candidate["outcomes"][live["unit"]] = fold_records([record])[0]
        if not candidate["left"]:
            self._close_candidate(live["key"])
        self._changed()

    def _close_candidate(self, key: str) -> None:
        """Every unit of `key` ended: its candidate record (the only record with one unit), the study."""
        candidate = self.candidates.pop(key)
        for unit in self.units:  # counted as a finished trial from here on
            self.progress.epochs.pop(unit_trial_id(key, unit.name), None)
        if len(self.units) == 1:
            folded = candidate["outcomes"][self.units[0].name]
        else:
            record = candidate_record(key, self.units, candidate["outcomes"], self._shared(candidate))
            self.folder.append(record)
            folded = fold_records([record])[0]
        close_trial(self.study, candidate["number"], folded, self.objectives, self._violations(folded))
        ckey = config_key(candidate["arch"])
        self.training.pop(ckey, None)
        self.trained.setdefault(ckey, folded)
        for number in self.waiting.pop(key, []):
            self._repeat(trial_key(number), number, folded)
        self.progress.running.discard(key)
        self._count(folded)
        if self.size is not None and len(self.trained) >= self.size and not self.exhausted:
            self._exhausted()  # Tune asks no further once the budget (capped at the space's size) is spent

    def _violations(self, trial: TrialRecord) -> list[float] | None:
        """`search.constraints` for `trial` in Optuna's form, `best` over the trials finished so far and
        this one; None without constraints."""
        if not self.constraints:
            return None
        finished = [t.metrics for t in self.trained.values() if t.status == "complete"]
        if trial.status in ("complete", "repeat"):
            finished.append(trial.metrics)
        return violations(self.constraints, trial.metrics, best_values(self.constraints, finished))

    @staticmethod
    def _last_epoch_result(last: dict[str, Any]) -> dict[str, Any] | None:
        return last if last and FAILED not in last and "epoch" in last and SOURCE_VAL_ACC in last else None

    # --- progress --------------------------------------------------------------------------------------
    def _count(self, trial: TrialRecord) -> None:
        p = self.progress
        if trial.status == "complete":
            p.done += 1
            if all(m in trial.metrics for m in self.objectives):
                p.points[trial.trial_id] = tuple(float(trial.metrics[m]) for m in self.objectives)
                p.front_size = len(non_dominated(list(p.points.values()), list(self.objectives.values())))
            src, tgt = trial.metrics.get(SOURCE_VAL_ACC), trial.metrics.get(TARGET_SELECT_ACC)
            if src is not None:
                p.best_source = max(p.best_source or src, src)
            if tgt is not None:
                p.best_target = max(p.best_target or tgt, tgt)
        elif trial.status == "pruned":
            p.pruned += 1
        elif trial.status == "failed":
            p.failed += 1

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.progress)

    def unfinished(self) -> list[str]:
        """Candidates handed out and not ended (interrupted ones, after `fit` returns)."""
        return sorted(self.candidates)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks and searcher with the experiment; the ledger (a study connection, a
        # live view) is never restored from there, so it pickles as nothing.
        raise NormsearchError("a Ledger is driver-side state and is not pickled")


def make_callback(ledger: Ledger):
    """The Tune callback that feeds trial events into `ledger`."""
    # Ray Tune only where the callback is built: tests and confirm drive the ledger without it.
    from ray.tune import Callback

    class LedgerCallback(Callback):
        def __init__(self, ledger: Ledger) -> None:
            self.ledger: Ledger | None = ledger

        def __getstate__(self) -> dict[str, Any]:
            return {"ledger": None}

        @staticmethod
        def _key(trial: Any) -> str:
            return str(trial.config.get(TRIAL_KEY))

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.ledger:
                self.ledger.started(self._key(trial))

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            if self.ledger:
                self.ledger.result(self._key(trial), result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.ledger:
                self.ledger.ended(self._key(trial))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.ledger:
                self.ledger.ended(self._key(trial), error=_error_line(trial))

    return LedgerCallback(ledger)


def _error_line(trial: Any) -> str:
    """The first line of what Tune knows about a trial's failure (a lost worker, a crashed process)."""
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file:
        try:
            with open(error_file) as handle:
                text = handle.read()
        except OSError:
            text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    died = next((line for line in lines if "died" in line.lower() or "killed" in line.lower()), None)
    head = died or (lines[-1] if lines else "the trial's process failed")
    return f"worker lost: {head}"[:400]


class _WritePoints:
    """An Optuna trial whose every `suggest_*` is a crash-test write point (run/journal), so the
    crash-consistency test also kills the driver between two suggests of one trial."""

    def __init__(self, trial: Any) -> None:
        self._trial = trial

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(*args: Any, **kwargs: Any) -> Any:
            value = attr(*args, **kwargs)
            study_written()
            return value

        return suggest
