"""Training one candidate: determinism, per-epoch reports, test domains kept apart, the plan's hooks."""

from __future__ import annotations

import pytest

from normsearch.arch import ArchConfig
from normsearch.data.spec import DataConfig, load_data
from normsearch.norms.switchable import SwitchNorm2d
from normsearch.train import Diverged, TrainConfig, retrain_summary, switch_to_hard, train_candidate

DATA = DataConfig(select=["texture", "pastel"], test=["fog"], n_train=200, n_val=40, n_test=40)
TRAIN = TrainConfig(epochs=2, batch_size=50)
MINI = {"backbone": {"preset": "resnet-mini"}}


@pytest.fixture(scope="module")
def data():
    return load_data(DATA)


def test_same_seed_same_numbers_and_reports_per_epoch(data) -> None:
    reports = []
    arch = ArchConfig.from_dict(MINI)
    first = train_candidate(arch, data, DATA, TRAIN, seed=3, report=reports.append, threads=1)
    second = train_candidate(arch, data, DATA, TRAIN, seed=3, threads=1)
    other = train_candidate(arch, data, DATA, TRAIN, seed=4, threads=1)
    assert [r["epoch"] for r in reports] == [1, 2] and [r["final"] for r in reports] == [False, True]
    timing = {"epoch_seconds", "images_per_s"}
    for a, b in zip(first.history, second.history, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }
    assert first.final["loss"] != other.final["loss"]
    final = reports[-1]
    assert final["target_select_acc"] == pytest.approx((final["select/texture"] + final["select/pastel"]) / 2)
    assert "test" not in reports[0]  # test domains only after training
    assert set(final["test"]) == {"source", "texture", "pastel", "fog", "test_mean"}
    assert final["test"]["test_mean"] == final["test"]["fog"]


def test_switchable_goes_hard_at_the_fraction_and_keeps_parameters() -> None:
    arch = ArchConfig.from_dict({**MINI, "norm": {"switchable": {"stages": [1], "hard_at": 0.5}}})
    from normsearch.models import build_model

    model = build_model(arch)
    weights = {id(m.weight) for m in model.modules() if isinstance(m, SwitchNorm2d)}
    assert switch_to_hard(model) == 2  # bn1 and bn2 of layer1.0 (stage 1 has no shortcut norm)
    hard = [m for m in model.modules() if isinstance(m, SwitchNorm2d)]
    assert all(m.mode == "hard" for m in hard) and {id(m.weight) for m in hard} == weights
    assert switch_to_hard(model) == 0


def test_plan_hooks_run_during_training(data) -> None:
    arch = ArchConfig.from_dict(
        {
            **MINI,
            "norm": {
                "switchable": {"stages": [1], "hard_at": 0.5, "batch_average": True},
                "crossnorm": {"p": 1.0, "stages": [2]},
            },
        }
    )
    result = train_candidate(arch, data, DATA, TRAIN, seed=0, threads=1)
    assert result.extra["switched_to_hard"] >= 2
    assert 0.0 <= result.final["source_val_acc"] <= 100.0


def test_retrain_summary_gives_mean_and_standard_error(data) -> None:
    arch = ArchConfig.from_dict(MINI)
    runs = [
        train_candidate(arch, data, DATA, TrainConfig(epochs=1, batch_size=50), seed=s, threads=1)
        for s in (0, 1)
    ]
    rows = {name: (mean, se, values) for name, mean, se, values in retrain_summary(runs)}
    mean, se, values = rows["source val"]
    assert values == [r.final["source_val_acc"] for r in runs]
    assert mean == pytest.approx(sum(values) / 2)
    assert se == pytest.approx(abs(values[0] - values[1]) / 2)
    assert "test: fog" in rows and "group: headline" in rows


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("epoch_seconds", "images_per_s")} for h in history]


@pytest.mark.parametrize(
    "norm",
    [
        {},
        {
            "switchable": {"stages": [1], "hard_at": 0.5},
            "crossnorm": {"p": 1.0, "stages": [2], "crop": "both"},
        },
    ],
)
def test_resume_from_any_epoch_gives_the_uninterrupted_numbers(data, norm) -> None:
    arch = ArchConfig.from_dict({**MINI, "norm": norm})
    config = TrainConfig(epochs=3, batch_size=50)
    states = []
    whole = train_candidate(arch, data, DATA, config, seed=5, threads=1, snapshot=states.append)
    assert [s.epoch for s in states] == [1, 2, 3]
    for state in states[:2]:
        reports = []
        resumed = train_candidate(
            arch, data, DATA, config, seed=5, threads=1, resume=state, report=reports.append
        )
        assert _without_timing(resumed.history) == _without_timing(whole.history)
        assert [r["epoch"] for r in reports] == list(range(state.epoch + 1, 4))  # finished epochs not redone
    reports = []
    again = train_candidate(
        arch, data, DATA, config, seed=5, threads=1, resume=states[-1], report=reports.append
    )
    assert [r["epoch"] for r in reports] == [3] and again.test == whole.test  # only re-reported


def test_a_nan_loss_ends_training_with_the_epoch_named(data) -> None:
    with pytest.raises(Diverged, match=r"^(NaN|infinite) loss at epoch 1$"):
        train_candidate(ArchConfig.from_dict(MINI), data, DATA, TrainConfig(epochs=2, batch_size=50, lr=1e6))
