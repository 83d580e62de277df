"""Why a trial was stopped early: the rules of the schedulers and the one-line reason a stopped trial gets.

Three rules decide whether a running trial goes on, each on the per-epoch results it reports (the epoch is
the time axis, not Tune's iteration count: a continued trial's first report is its epoch k+1):

- ASHA (Li et al., 2020, "A System for Massively Parallel Hyperparameter Tuning"), on one scalar metric:
  at each rung a trial continues iff its value is at least the (1 - 1/rf) percentile of the values recorded
  there before it. `asha_continues` is Ray Tune's own rule (`_Bracket.cutoff` in
  ray/tune/schedulers/async_hyperband.py, Ray 2.60), so a search can be replayed from its records.
- MO-ASHA (Schmucker et al., 2021, "Multi-objective Asynchronous Successive Halving"): the same rungs, but
  the trials at a rung are ordered by non-dominated sorting over all the search's objectives, ties broken
  by crowding distance (NSGA-II, Deb et al. 2002), and a trial continues iff it is in the top 1/rf of that
  order or on the rung's first front (`moasha_continues`).
- reject_below (EvoNorm, Liu et al. 2020, §4: candidates under 20 % after 100 steps are dropped): a trial
  whose metric is under a bar once it has trained a given number of epochs is stopped (`rejected`).

Everything here is plain Python (numpy for Ray's percentile); the Ray schedulers that apply these rules,
and `make_scheduler` that picks one for a recipe, live in search/schedulers.py (which imports Ray).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from normsearch.errors import NormsearchError
from normsearch.results.pareto import crowding_distances, front_ranks

if TYPE_CHECKING:
    from normsearch.recipe import RejectBelow, SchedulerConfig

TIME_ATTR = "epoch"
MODES = ("max", "min")


def _check_modes(modes: Sequence[str]) -> None:
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise NormsearchError(f"scheduler: mode {bad[0]!r} is not one of {', '.join(MODES)}")


def rung_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which a trial can be stopped, ascending: Ray's bracket milestones grace·rf^k for
    k < int(log(max_t/grace)/log(rf) + 1) (the same float expressions as Ray's `_Bracket`), rounded up to
    whole epochs (Ray compares `epoch >= milestone`, so a milestone of 2.5 decides at epoch 3; milestones
    that round to the same epoch are one rung, as in Ray the trial decides at the larger of them), and only
    those below `max_t`: a trial at `max_t` has finished (Ray's ASHA stops it there before any rung
    decides). Empty when `max_t` does not exceed the grace period."""
    if grace_period < 1 or reduction_factor <= 1 or max_t < 1:
        raise NormsearchError(
            "scheduler: grace_period and max_t must be at least 1 and reduction_factor above 1 "
            f"(got {grace_period}, {reduction_factor}, {max_t})"
        )
    if max_t < grace_period:
        return []
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    milestones: list[int] = []
    for k in range(count):
        epoch = math.ceil(grace_period * reduction_factor**k)
        if epoch < max_t and epoch not in milestones:
            milestones.append(epoch)
    return milestones


def rung_of(epoch: int, milestones: Sequence[int]) -> int | None:
    """Index into `milestones` of the rung a report at `epoch` belongs to: the largest milestone not after
    it (a continued trial can reach a rung late), or None before the first."""
    reached = [k for k, m in enumerate(milestones) if m <= epoch]
    return reached[-1] if reached else None


def asha_continues(values: list[float], index: int, mode: str, reduction_factor: float) -> bool:
    """Ray ASHA's decision at one rung. `values` are the values recorded at the rung when the trial decides,
    its own at `index`. As in Ray (`_Bracket.on_result`), the cutoff is taken before the trial's own value
    is recorded: the (1 - 1/rf) percentile (`np.nanpercentile`, linear interpolation) of the others, with
    "min" values negated first. The trial continues iff its value is not below the cutoff, so the first trial
    at a rung always continues and so does a NaN value (a NaN is never below anything), as in Ray."""
    _check_modes([mode])
    sign = 1.0 if mode == "max" else -1.0
    others = [sign * float(v) for i, v in enumerate(values) if i != index]
    if not others:
        return True
    cutoff = np.nanpercentile(others, (1 - 1 / reduction_factor) * 100)
    return not sign * float(values[index]) < cutoff


def _worst_for_nan(point: Sequence[float], modes: Sequence[str]) -> tuple[float, ...]:
    # A diverged trial (NaN accuracy) must not escape the ranking: a NaN neither dominates nor is dominated,
    # so it would sit on the first front forever. It counts as the worst value instead.
    return tuple(
        (-math.inf if m == "max" else math.inf) if math.isnan(float(v)) else float(v)
        for v, m in zip(point, modes, strict=True)
    )


def moasha_continues(
    points: list[tuple[float, ...]], index: int, modes: list[str], reduction_factor: float
) -> bool:
    """MO-ASHA's decision at one rung. `points` are the objective tuples recorded at the rung (the deciding
    trial's own at `index`), `modes` each objective's direction.

    The trials are ordered by (front rank, larger crowding distance first) and the deciding trial continues
    iff its position is below max(1, n/rf), n counting itself. Among trials equal on both keys the deciding
    trial is placed first, as Ray's ASHA continues a trial whose value equals the cutoff; so the decision
    does not depend on the order in which the others are listed (up to exact duplicates, whose crowding
    distances follow their order). A NaN objective counts as the worst value.

    A trial on the rung's first front (no trial recorded there dominates it) always continues, even beyond
    the top n/rf (a departure from Schmucker et al., who promote the top n/rf strictly): stopping it could
    throw away a member of the final Pareto front, the one thing this search exists to find, on the
    strength of a partial curve, and among first-front trials the crowding tie-break only says which
    trade-off is more isolated, not which is better. What it costs: the fraction stopped is
    no longer guaranteed to be 1 - 1/rf. With two strongly conflicting objectives most trials at a rung can
    be mutually non-dominated, and in the worst case (all of them) MO-ASHA stops nothing there and spends
    the budget of a FIFO search on that rung."""
    _check_modes(modes)
    cleaned = [_worst_for_nan(p, modes) for p in points]
    ranks = front_ranks(cleaned, modes)
    if ranks[index] == 0:
        return True
    crowding = crowding_distances(cleaned, modes)
    order = sorted(range(len(cleaned)), key=lambda i: (ranks[i], -crowding[i], i != index, i))
    return order.index(index) < max(1.0, len(cleaned) / reduction_factor)


def rejected(result: Mapping[str, Any], rule: RejectBelow | None) -> bool:
    """Whether `result` breaks the `scheduler.reject_below` rule: its `epoch` is at least `rule.epoch` and
    its `rule.metric` is below `rule.value` (a NaN counts as below: a diverged trial clears no bar).

    The rule is checked at every report from `rule.epoch` on, not only at the first one. That keeps it
    stateless, so it holds the same way for a trial continued in a later driver (its first report there is
    its epoch k+1, past `rule.epoch`) and after Tune restores the scheduler; and a trial that falls under
    the bar later (it diverged) is as hopeless as one that never cleared it. What it costs: a trial that dips
    under the bar for one epoch late in training is stopped there; keep the bar low (EvoNorm's 20 %) so
    only broken candidates meet it. A result without the metric (a failure report) breaks nothing, and
    neither does a trial's final report: it has trained its last epoch, so stopping it saves nothing, and
    it is recorded as complete (the ledger goes by `final`), so a stop there would only disagree with it."""
    if rule is None or result.get("final"):
        return False
    epoch, value = result.get(TIME_ATTR), result.get(rule.metric)
    if epoch is None or value is None or epoch < rule.epoch:
        return False
    number = float(value)
    return math.isnan(number) or number < rule.value


def _number(value: float) -> str:
    return str(round(float(value), 3))


def stop_reason(
    scheduler_config: SchedulerConfig, last_result: Mapping[str, Any], objectives: Mapping[str, str]
) -> str:
    """The one-line reason recorded for a trial the scheduler stopped, from the last result it reported
    (the one the scheduler stopped it on; Tune tells the scheduler and then the callbacks the same result)."""
    epoch = last_result.get(TIME_ATTR)
    rule = scheduler_config.reject_below
    if rule is not None and rejected(last_result, rule):
        return (
            f"rejected: {rule.metric} {_number(last_result[rule.metric])} < {_number(rule.value)} "
            f"after epoch {epoch} (scheduler.reject_below)"
        )
    kind = scheduler_config.kind
    if kind == "none" or not isinstance(epoch, int | float):
        return f"stopped by Tune at epoch {epoch}, before its last epoch (no scheduler rule applies)"
    rf = scheduler_config.reduction_factor
    milestones = rung_milestones(scheduler_config.grace_period, rf, int(epoch) + 1)
    k = rung_of(int(epoch), milestones)
    if k is None:
        return f"stopped by {kind} at epoch {epoch}, before its first rung (no rung rule applies)"
    where = f"rung {k + 1}" if milestones[k] == epoch else f"rung {k + 1}, epoch {milestones[k]}"
    if kind == "moasha":
        rule_text = f"outside the top 1/{rf:g} by non-dominated rank on {', '.join(objectives)}"
    else:
        rule_text = f"{scheduler_config.metric} below the top 1/{rf:g}"
    return f"stopped by {kind} at epoch {epoch} ({where}: {rule_text})"
