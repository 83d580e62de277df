"""Every test-time statistics policy of a space measured on one trained network, in one training run: the
per-policy numbers it records equal evaluating the trained weights under each policy separately, and
measuring them changes nothing of the training or of the network's own numbers."""

from __future__ import annotations

import json

import pytest

from normsearch import build_model
from normsearch.arch import ArchConfig
from normsearch.data.pipeline import Standardizer
from normsearch.data.spec import DataConfig, load_data
from normsearch.metrics import POLICIES
from normsearch.train import TrainConfig, train_candidate
from normsearch.train.evaluation import epoch_metrics, final_accuracies, unit_sets

pytestmark = pytest.mark.slow

ONE = DataConfig(select=["pastel"], test=["fog", "noisy"], n_train=120, n_val=30, n_test=30)
TRAIN = TrainConfig(epochs=1, batch_size=30)
SPACE_POLICIES = ["running", "batch", "adabn", "mix:alpha=0.5"]


@pytest.fixture(scope="module")
def one():
    return load_data(ONE)


def _arch(norm: dict, classes: int) -> ArchConfig:
    return ArchConfig.from_dict({"backbone": {"preset": "resnet-mini", "num_classes": classes}, "norm": norm})


@pytest.mark.parametrize("norm", [{}, {"ibn": {"variant": "a", "stages": [1]}}], ids=["bn", "ibn_a"])
def test_recorded_policy_numbers_equal_evaluating_the_trained_network_under_each(one, norm: dict) -> None:
    arch = _arch(norm, one.num_classes)
    result = train_candidate(
        arch, one, ONE, TRAIN, seed=3, threads=1, keep_weights=True, policies=SPACE_POLICIES
    )
    recorded = dict(result.history[-1][POLICIES])
    assert list(recorded) == SPACE_POLICIES[1:]  # the network's own (norm.inference: running) is not repeated
    final = result.history[-1]
    own = {k: final[k] for k in recorded["batch"]["metrics"]}  # what every epoch reported, under running
    recorded["running"] = {"metrics": own, "test": result.test}

    # The trained weights rebuilt, measured under each policy on its own, in the reverse order.
    model = build_model(arch, weights=result.checkpoint).eval()
    unit = ONE.units()[0]
    sets = unit_sets(one, unit, lambda t: t)
    standardize = Standardizer.fit(sets.train_images())
    for policy in reversed(SPACE_POLICIES):
        assert epoch_metrics(model, sets, standardize, policy) == recorded[policy]["metrics"], policy
        assert (
            final_accuracies(model, one, unit, standardize, policy) == recorded[policy]["test"]
        )
    # The policies measure differently here (or the comparison above could not tell them apart).
    assert len({json.dumps(r["test"], sort_keys=True) for r in recorded.values()}) >= 3


def test_measuring_the_policies_changes_neither_training_nor_the_own_numbers(one) -> None:
    arch = _arch({"inference": "adabn"}, one.num_classes)
    alone = train_candidate(arch, one, ONE, TRAIN, seed=5, threads=1)
    together = train_candidate(
        arch, one, ONE, TRAIN, seed=5, threads=1, policies=["running", "adabn", "batch"]
    )
    assert alone.final["loss"] == together.final["loss"] and alone.test == together.test
    assert POLICIES not in alone.history[-1]
    # The network's own policy is its reported numbers, the others in the list's order.
    assert list(together.history[-1][POLICIES]) == ["running", "batch"]
