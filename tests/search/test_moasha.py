"""MO-ASHA and reject_below: the ranking against hand-computed values, Ray's ASHA rule replayed exactly,
both schedulers driven by the same hand-made curves, the stop reason in the records, and one real search."""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.recipe import Recipe, RejectBelow, SchedulerConfig
from normsearch.results.pareto import crowding_distances, front_ranks
from normsearch.run.folder import RunFolder
from normsearch.run.study import open_study
from normsearch.search.ledger import Ledger
from normsearch.search.moasha import (
    asha_continues,
    moasha_continues,
    rejected,
    rung_milestones,
    stop_reason,
)
from normsearch.search.schedulers import make_scheduler
from normsearch.search.searcher import make_sampler
from normsearch.search.trial import TRIAL_KEY
from normsearch.space import Space

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
MAXMAX = ["max", "max"]
OBJ = {"source_val_acc": "max", "target_select_acc": "max"}
INF = math.inf


# --- front ranks and crowding distance (Deb et al. 2002), by hand ---------------------------------------
# Front 0: (1,5) (2,3) (4,2) (5,1). Front 1: (1,2) and (0.5,2.5), both dominated by (2,3). Front 2: (0,0).
# Crowding in front 0, both ranges 4: (2,3): (4-1)/4 + (5-2)/4 = 1.5; (4,2): (5-2)/4 + (3-1)/4 = 1.25.
POINTS = [(1, 5), (2, 3), (4, 2), (5, 1), (1, 2), (0.5, 2.5), (0, 0)]


def test_front_ranks_by_hand() -> None:
    assert front_ranks(POINTS, MAXMAX) == [0, 0, 0, 0, 1, 1, 2]
    # Minimising the second objective turns the order of (x, y) pairs around: (5,1) dominates (4,2).
    assert front_ranks([(5, 1), (4, 2), (1, 5), (5, 5)], ["max", "min"]) == [0, 1, 2, 1]
    assert front_ranks([(3, 3), (3, 3), (1, 1)], MAXMAX) == [0, 0, 1]  # equal points share a rank
    assert front_ranks([], MAXMAX) == []


def test_crowding_distances_by_hand() -> None:
    assert crowding_distances(POINTS, MAXMAX) == [INF, 1.5, 1.25, INF, INF, INF, INF]
    # Three objectives, one front of four points (no point dominates another); ranges 3, 3 and 30.
    # (1,2,10) sorted inner on x: (2-0)/3, on y: (3-1)/3, on z: (20-0)/30 -> 2/3 + 2/3 + 2/3 = 2.
    # (2,1,20) on x: (3-1)/3, on y: (2-0)/3, on z: (30-10)/30 -> 2.
    three = [(0, 3, 0), (1, 2, 10), (2, 1, 20), (3, 0, 30)]
    assert front_ranks(three, ["max", "max", "min"]) == [0, 0, 0, 0]
    got = crowding_distances(three, ["max", "max", "min"])
    assert got[0] == got[3] == INF and got[1] == pytest.approx(2.0) and got[2] == pytest.approx(2.0)


# --- Ray's ASHA rule, replayed ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("grace", "rf", "max_t"), [(1, 3, 10), (1, 2, 8), (2, 2.5, 30), (1, 1.1, 4), (3, 3, 3), (1, 4, 100)]
)
def test_rung_milestones_are_rays_rounded_up_below_max_t(grace: int, rf: float, max_t: int) -> None:
    from ray.tune.schedulers.async_hyperband import _Bracket

    ray_rungs = sorted({math.ceil(m) for m, _ in _Bracket(grace, max_t, rf, 0)._rungs})
    assert rung_milestones(grace, rf, max_t) == [m for m in ray_rungs if m < max_t]


def test_rung_milestones_by_hand() -> None:
    assert rung_milestones(1, 3, 10) == [1, 3, 9]
    assert rung_milestones(2, 2.5, 30) == [2, 5, 13]  # 2, 5.0, 12.5 -> epoch 13
    assert rung_milestones(2, 3, 2) == [] and rung_milestones(3, 2, 2) == []


@pytest.mark.parametrize("rf", [2, 3, 2.5, 4])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_asha_continues_decides_as_rays_bracket(rf: float, mode: str) -> None:
    from ray.tune.experiment import Trial
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng = random.Random(f"{rf}{mode}")
    bracket = _Bracket(1, 10, rf, 0)
    sign = 1.0 if mode == "max" else -1.0
    values: list[float] = []
    for n in range(25):
        value = rng.choice([rng.uniform(0, 100), float(rng.randint(0, 5)) * 10])  # ties on purpose
        trial = Trial("x", stub=True, trial_id=f"t{n}")
        ray_action = bracket.on_result(trial, 1, sign * value)  # Ray's ASHA negates a "min" metric
        values.append(value)
        assert asha_continues(values, n, mode, rf) == (ray_action == "CONTINUE"), (n, values)


def test_asha_continues_by_hand() -> None:
    # The 2/3 percentile of [55, 60] is 55 + (2/3)·5 = 58.33: 58 stops, 58.5 continues; the first continues.
    assert asha_continues([60.0, 55.0, 58.0], 2, "max", 3) is False
    assert asha_continues([60.0, 55.0, 58.5], 2, "max", 3) is True
    assert asha_continues([10.0], 0, "max", 3) is True
    assert asha_continues([1.0, 2.0, 1.5], 2, "min", 3) is False  # as -1.5 against the 2/3 point of [-1, -2]


# --- MO-ASHA's rule -------------------------------------------------------------------------------------
def test_moasha_ranks_by_front_then_crowding() -> None:
    # n = 6, rf = 2: three continue. Front 0: p (dominates all); front 1: a, b, c (b inner, finite crowding;
    # a and c ends, infinite); front 2: d, e. Order: p, a|c, c|a, b, d|e.
    p, a, b, c, d, e = (100, 100), (50, 90), (70, 70), (90, 50), (10, 10), (20, 5)
    points = [p, a, b, c, d, e]
    decisions = [moasha_continues(points, i, MAXMAX, 2) for i in range(6)]
    assert decisions == [True, True, False, True, False, False]
    # The decision does not depend on the order the others are listed in.
    for seed in range(5):
        order = list(range(6))
        random.Random(seed).shuffle(order)
        shuffled = [points[i] for i in order]
        assert [moasha_continues(shuffled, order.index(i), MAXMAX, 2) for i in range(6)] == decisions


def test_moasha_first_front_always_continues_and_the_top_share_is_at_least_one() -> None:
    # Five mutually non-dominated trials with rf = 3 (top 1/3 = 1.67 places): all continue.
    front = [(10, 50), (20, 40), (30, 30), (40, 20), (50, 10)]
    assert all(moasha_continues(front, i, MAXMAX, 3) for i in range(5))
    # Two trials, the second dominated: max(1, 2/3) = 1 place, taken by the first.
    assert moasha_continues([(50, 50), (40, 40)], 1, MAXMAX, 3) is False
    assert moasha_continues([(40, 40)], 0, MAXMAX, 3) is True


def test_moasha_minimised_objective_and_nan() -> None:
    # (accuracy max, params min): (80, 2e6) dominates (70, 3e6); the dominated one is ranked 1 and stops.
    assert moasha_continues([(80.0, 2e6), (75.0, 1e6), (70.0, 3e6)], 2, ["max", "min"], 3) is False
    # A NaN accuracy is the worst value, not a free pass to the first front.
    assert moasha_continues([(50.0, 50.0), (math.nan, 60.0)], 1, MAXMAX, 3) is True  # 60 is still best
    assert moasha_continues([(50.0, 50.0), (math.nan, 40.0)], 1, MAXMAX, 3) is False


# --- the required hand-made curves: ASHA stops the trial best on objective 2, MO-ASHA keeps it -----------
CURVES = {  # trial -> per-epoch (source_val_acc, target_select_acc), epochs 1..4
    "A": [(60, 20), (64, 21), (70, 22), (72, 22)],  # best source, weakest target of the front
    "B": [(55, 25), (60, 26), (66, 21), (68, 22)],  # falls behind A on both at epoch 3
    "C": [(40, 40), (45, 43), (50, 45), (52, 46)],  # worst source, best target: the trial at stake
    "D": [(50, 15), (52, 16), (53, 16), (54, 17)],  # dominated by A and B at every epoch
}


def _drive(scheduler) -> dict[str, int | None]:
    """Feed every trial's curve, epoch by epoch in the order A, B, C, D; the epoch each was stopped at."""
    from ray.tune.experiment import Trial

    trials = {name: Trial("x", stub=True, trial_id=name) for name in CURVES}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    stopped: dict[str, int | None] = dict.fromkeys(CURVES)
    for epoch in range(1, 5):
        for name, curve in CURVES.items():
            if stopped[name] is not None:
                continue
            source, target = curve[epoch - 1]
            result = {"epoch": epoch, "source_val_acc": source, "target_select_acc": target}
            result["final"] = epoch == 4
            if scheduler.on_trial_result(None, trials[name], result) == "STOP" and epoch < 4:
                stopped[name] = epoch
                scheduler.on_trial_complete(None, trials[name], result)
    return stopped


def _recipe(kind: str, **scheduler) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "unit",
            "model": {"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"stages": [1]}}},
            "train": {"epochs": 4},
            "search": {
                "space": THREE,
                "objectives": OBJ,
                "scheduler": {
                    "kind": kind,
                    "metric": "source_val_acc",
                    "grace_period": 1,
                    "reduction_factor": 3,
                    **scheduler,
                },
            },
        }
    )


def test_moasha_keeps_the_trial_best_on_the_second_objective_that_asha_stops() -> None:
    from ray.tune.schedulers import ASHAScheduler

    asha = make_scheduler(_recipe("asha"))
    assert isinstance(asha, ASHAScheduler)
    # Rungs at epochs 1 and 3 (4 is the last epoch). Ray's ASHA on source accuracy, rung 1: A is first;
    # B's 55 is under the cutoff of [60] (60), C's 40 under the 2/3 point of [60, 55] (58.3), D's 50 under
    # that of [60, 55, 40] (56.7). Only A goes on.
    assert _drive(asha) == {"A": None, "B": 1, "C": 1, "D": 1}
    # MO-ASHA on both objectives, rung 1: A, B, C are mutually non-dominated (C has the best target), so
    # all three go on; D is dominated by A and B (rank 1, fourth of 4, outside max(1, 4/3) places) and
    # stops. Rung 3: A (70, 22) dominates B (66, 21): B is third of 3, outside max(1, 1) place, and stops;
    # C is still on the first front.
    assert _drive(make_scheduler(_recipe("moasha"))) == {"A": None, "B": 3, "C": None, "D": 1}


def test_moasha_scheduler_pickles_mid_search_and_decides_the_same() -> None:
    from ray.tune.experiment import Trial

    scheduler = make_scheduler(_recipe("moasha"))
    for name in "ABC":
        source, target = CURVES[name][0]
        trial = Trial("x", stub=True, trial_id=name)
        scheduler.on_trial_result(
            None, trial, {"epoch": 1, "source_val_acc": source, "target_select_acc": target}
        )
    restored = pickle.loads(pickle.dumps(scheduler))
    d = Trial("x", stub=True, trial_id="D")
    result = {"epoch": 1, "source_val_acc": 50, "target_select_acc": 15}
    assert restored.on_trial_result(None, d, result) == scheduler.on_trial_result(None, d, result) == "STOP"
    assert "num_stopped=1" in restored.debug_string() and "epoch 1: 4 trial(s)" in restored.debug_string()
    assert scheduler.set_search_properties(None, None) is True


# --- reject_below --------------------------------------------------------------------------------------
def test_rejected_from_the_rule_epoch_on() -> None:
    rule = RejectBelow(metric="source_val_acc", value=20.0, epoch=2)
    assert not rejected({"epoch": 1, "source_val_acc": 5.0}, rule)  # too early to judge
    assert rejected({"epoch": 2, "source_val_acc": 19.9}, rule)
    assert not rejected({"epoch": 2, "source_val_acc": 20.0}, rule)
    assert rejected({"epoch": 5, "source_val_acc": 12.0}, rule)  # every report from epoch 2 on
    assert rejected({"epoch": 3, "source_val_acc": math.nan}, rule)
    assert not rejected({"epoch": 3, "failed": "NaN loss"}, rule)  # a failure report breaks nothing
    assert not rejected({"epoch": 3, "source_val_acc": 1.0}, None)
    assert not rejected({"epoch": 3, "source_val_acc": 1.0, "final": True}, rule)  # trained to the end


@pytest.mark.parametrize("kind", ["none", "asha", "moasha"])
def test_reject_below_stops_a_weak_trial_under_every_kind(kind: str) -> None:
    from ray.tune.experiment import Trial

    scheduler = make_scheduler(_recipe(kind, reject_below={"value": 20.0, "epoch": 1}))
    strong, weak = Trial("x", stub=True, trial_id="s"), Trial("x", stub=True, trial_id="w")
    for trial in (strong, weak):
        scheduler.on_trial_add(None, trial)
    assert (
        scheduler.on_trial_result(None, strong, {"epoch": 1, "source_val_acc": 60, "target_select_acc": 30})
        == "CONTINUE"
    )
    weak_result = {"epoch": 1, "source_val_acc": 12, "target_select_acc": 90}
    assert scheduler.on_trial_result(None, weak, weak_result) == "STOP"
    scheduler.on_trial_complete(None, weak, weak_result)  # the wrapped scheduler hears of it
    assert "rejected 1" in scheduler.debug_string()
    pickle.loads(pickle.dumps(scheduler))


def test_stop_reasons() -> None:
    rule = {"value": 20.0, "epoch": 1}
    config = SchedulerConfig(kind="moasha", grace_period=1, reduction_factor=3, reject_below=rule)
    assert (
        stop_reason(config, {"epoch": 1, "source_val_acc": 12.0}, OBJ)
        == "rejected: source_val_acc 12.0 < 20.0 after epoch 1 (scheduler.reject_below)"
    )
    assert (
        stop_reason(config, {"epoch": 3, "source_val_acc": 50.0}, OBJ)
        == "stopped by moasha at epoch 3 (rung 2: outside the top 1/3 by non-dominated rank on "
        "source_val_acc, target_select_acc)"
    )
    assert (  # a continued trial that reached rung 2 (epoch 3) late, at its epoch 4
        stop_reason(config, {"epoch": 4, "source_val_acc": 50.0}, OBJ)
        == "stopped by moasha at epoch 4 (rung 2, epoch 3: outside the top 1/3 by non-dominated rank on "
        "source_val_acc, target_select_acc)"
    )
    asha = SchedulerConfig(kind="asha", metric="source_val_acc", grace_period=2, reduction_factor=2)
    assert (
        stop_reason(asha, {"epoch": 4}, OBJ)
        == "stopped by asha at epoch 4 (rung 2: source_val_acc below the top 1/2)"
    )
    assert stop_reason(SchedulerConfig(), {"epoch": 1}, OBJ) == (
        "stopped by Tune at epoch 1, before its last epoch (no scheduler rule applies)"
    )


THREE = {"params": {"ratio": {"type": "categorical", "choices": [0.25, 0.5, 0.75], "path": "norm.ibn.ratio"}}}


def test_the_rejection_reason_reaches_the_record_and_the_study(tmp_path: Path) -> None:
    from ray.tune.experiment import Trial

    recipe = _recipe("moasha", reject_below={"value": 20.0, "epoch": 1})
    space = Space.model_validate(THREE)
    folder = RunFolder.create(tmp_path / "run", recipe, space)
    study = open_study(folder, recipe.name, OBJ, make_sampler(recipe))
    ledger = Ledger(folder, study, recipe, space, "attempt-1", budget=1)
    uid = ledger.next_config()[TRIAL_KEY]
    scheduler = make_scheduler(recipe)
    result = {"epoch": 1, "final": False, "source_val_acc": 12.0, "target_select_acc": 30.0}
    assert scheduler.on_trial_result(None, Trial("x", stub=True, trial_id=uid), result) == "STOP"
    ledger.result(uid, result)  # Tune tells the callbacks the result the scheduler stopped it on
    ledger.ended(uid)
    (trial,) = folder.trials()
    reason = "rejected: source_val_acc 12.0 < 20.0 after epoch 1 (scheduler.reject_below)"
    assert trial.status == "pruned" and trial.reason == reason
    (told,) = study.trials
    assert told.state == optuna.trial.TrialState.PRUNED and told.user_attrs["reason"] == reason


# --- one real search -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_moasha_search_prunes_with_reasons(tmp_path: Path, ray_local, tiny: Tiny) -> None:
    out = tmp_path / "moasha"
    smaller = {"train.epochs": 3, "data.n_train": 200, "data.n_val": 40, "data.n_test": 40}
    budget = [*tiny.but(smaller), "--num-samples", "3"]
    # Rungs: epoch 1 only (rf 3, 3 epochs). The rejection bar is on the parameter count, which training does
    # not change, so which trials it stops is known beforehand: of the five quickstart networks only IBN-b
    # (78,138 parameters; the others 78,042) clears 78,100. Every trial MO-ASHA lets past epoch 1 is either
    # IBN-b, which completes, or rejected at epoch 2: whatever the accuracies, at most one of the three
    # trials (grid order) completes and the others are stopped, each with its reason.
    scheduler = ["--set", "search.scheduler.kind=moasha", "--set", "search.scheduler.grace_period=1"]
    scheduler += ["--set", "search.scheduler.reject_below={metric: params, value: 78100, epoch: 2}"]
    result = CliRunner().invoke(
        app, ["run", str(ROOT / "recipes" / "quickstart.yaml"), "--output", str(out), *budget, *scheduler]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = RunFolder.open(out).trials()
    assert len(trials) == 3
    at_rung = [t for t in trials if t.status == "pruned" and t.epoch == 1]
    rejected_ = [t for t in trials if t.status == "pruned" and t.epoch == 2]
    complete = [t for t in trials if t.status == "complete"]
    assert len(at_rung) + len(rejected_) + len(complete) == 3
    assert len(at_rung) <= 2  # the first trial at a rung always continues
    for t in at_rung:
        assert t.reason.startswith("stopped by moasha at epoch 1 (rung 1: outside the top 1/3 by non-dom")
    for t in rejected_:
        assert t.metrics["params"] == 78042
        assert t.reason == "rejected: params 78042.0 < 78100.0 after epoch 2 (scheduler.reject_below)"
    assert all(t.metrics["params"] == 78138 and t.epoch == 3 for t in complete)
    study = optuna.load_study(study_name="quickstart", storage=RunFolder(out).study_url)
    told = {t.user_attrs["trial"]: t for t in study.trials}
    for t in at_rung + rejected_:
        assert told[t.trial_id].state == optuna.trial.TrialState.PRUNED
        assert told[t.trial_id].user_attrs["reason"] == t.reason
    assert len(complete) <= 1 and len(at_rung) + len(rejected_) >= 2
