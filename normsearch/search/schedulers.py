"""The Ray Tune scheduler classes of search/moasha.py's rules: MO-ASHA and the reject_below wrapper.

Kept apart from the rules because defining them imports Ray; `make_scheduler` (at the end) builds the one a
recipe asks for. Tune's lifecycle, for both: `set_search_properties` once when the experiment starts,
`on_trial_add` when a trial is created, `on_trial_result` for every result (returning CONTINUE or STOP;
Tune then tells the callbacks, and so the ledger, the same result), then exactly one of
`on_trial_complete` (it ended or was stopped), `on_trial_error` or `on_trial_remove`. Tune pickles the
scheduler with the experiment, so the state is plain dicts, lists and numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from normsearch.search.moasha import TIME_ATTR, moasha_continues, rejected, rung_milestones, rung_of

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from normsearch.recipe import Recipe, RejectBelow


class MOASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving over several objectives (Schmucker et al., 2021): one bracket,
    rungs at `rung_milestones(grace_period, reduction_factor, max_t)`; at each rung a trial's objective
    tuple is recorded the first time it reports an epoch at or past the rung, and it goes on iff
    `moasha_continues` says so against every trial recorded at that rung so far (finished ones included).
    A trial continued from an earlier driver starts at its epoch k+1 and joins the highest rung reached;
    rungs it skipped are not filled in. A result without every objective is not ranked (CONTINUE)."""

    def __init__(
        self,
        objectives: dict[str, str],
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        time_attr: str = TIME_ATTR,
    ) -> None:
        super().__init__()
        self._objectives = dict(objectives)  # name -> "max" | "min", in the study's order
        self._max_t = max_t
        self._reduction_factor = float(reduction_factor)
        self._time_attr = time_attr
        self._milestones = rung_milestones(grace_period, reduction_factor, max_t)
        # One dict per rung: trial id -> objective tuple, in the order the trials reached the rung.
        self._rungs: list[dict[str, tuple[float, ...]]] = [{} for _ in self._milestones]
        self._num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # The objectives come from the recipe; Tune's single metric/mode (never passed here) are not used.
        return True

    def _record(self, trial: Trial, result: dict) -> tuple[dict[str, tuple[float, ...]], bool] | None:
        """The rung `result` reaches and whether this trial was just recorded there (None: no rung)."""
        when = result.get(self._time_attr)
        if when is None or when >= self._max_t or any(m not in result for m in self._objectives):
            return None
        k = rung_of(int(when), self._milestones)
        if k is None:
            return None
        recorded = self._rungs[k]
        if trial.trial_id in recorded:
            return recorded, False
        recorded[trial.trial_id] = tuple(float(result[m]) for m in self._objectives)
        return recorded, True

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        reached = self._record(trial, result)
        if reached is None or not reached[1]:
            return TrialScheduler.CONTINUE
        recorded = reached[0]
        ids = list(recorded)
        if moasha_continues(
            list(recorded.values()),
            ids.index(trial.trial_id),
            list(self._objectives.values()),
            self._reduction_factor,
        ):
            return TrialScheduler.CONTINUE
        self._num_stopped += 1
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        # As Ray's ASHA: a trial that ended at a rung it had not been recorded at still counts there.
        if result:
            self._record(trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        pass  # what it recorded stays: the rungs compare against every trial that reached them

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        pass

    def debug_string(self) -> str:
        rungs = " | ".join(
            f"epoch {m}: {len(r)} trial(s)" for m, r in zip(self._milestones, self._rungs, strict=True)
        )
        return (
            f"Using MO-ASHA on {', '.join(self._objectives)}: num_stopped={self._num_stopped}, "
            f"rf={self._reduction_factor:g}; rungs: {rungs or 'none'}"
        )


class RejectBelowScheduler(TrialScheduler):
    """`scheduler.reject_below` in front of any scheduler: a result that breaks the rule (`rejected`) STOPs
    its trial before the wrapped scheduler sees it; every other call goes to the wrapped scheduler, which
    still hears of the stopped trial through `on_trial_complete`."""

    def __init__(self, inner: TrialScheduler, rule: RejectBelow) -> None:
        super().__init__()
        self._inner = inner
        self._rule = rule
        self._num_rejected = 0

    @property
    def metric(self) -> str | None:
        return self._inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self._inner.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self._inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if rejected(result, self._rule):
            self._num_rejected += 1
            return TrialScheduler.STOP
        return self._inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        return self._inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        rule = self._rule
        return (
            f"{self._inner.debug_string()}\nreject_below: {rule.metric} < {rule.value:g} from epoch "
            f"{rule.epoch} (rejected {self._num_rejected})"
        )


def make_scheduler(recipe: Recipe):
    """The Ray Tune scheduler of `recipe.search.scheduler`: FIFO (`none`), Ray's ASHA (`asha`, on
    `scheduler.metric`) or MO-ASHA (`moasha`, on every objective), each behind the reject_below rule when one
    is set. The time axis is the epoch and the last rung is below `train.epochs`."""
    sched = recipe.search.scheduler
    if sched.kind == "asha":
        inner = ASHAScheduler(
            metric=sched.metric,
            mode=sched.mode,
            time_attr=TIME_ATTR,
            max_t=recipe.train.epochs,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    elif sched.kind == "moasha":
        inner = MOASHAScheduler(
            objectives=dict(recipe.search.objectives),
            max_t=recipe.train.epochs,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    else:
        inner = FIFOScheduler()
    if sched.reject_below is None:
        return inner
    return RejectBelowScheduler(inner, sched.reject_below)
