"""Training with DSON and cross-domain MixStyle on two sources (the trainer passes the balanced batches'
domain labels), and the test-time statistics policy as an evaluation-only choice."""

from __future__ import annotations

import pytest

from normsearch.arch import ArchConfig
from normsearch.data.pipeline import domain_labels
from normsearch.data.spec import DataConfig, load_data
from normsearch.errors import NormsearchError
from normsearch.train import TrainConfig, train_candidate

pytestmark = pytest.mark.slow

TWO = DataConfig(
    source=["plain", "texture"], select=["pastel"], test=["fog"], n_train=120, n_val=30, n_test=30
)
ONE = DataConfig(select=["pastel"], test=["fog"], n_train=120, n_val=30, n_test=30)
TRAIN = TrainConfig(epochs=1, batch_size=30)
MINI = {"preset": "resnet-mini"}


@pytest.fixture(scope="module")
def two():
    return load_data(TWO)


def _arch(norm: dict) -> ArchConfig:
    return ArchConfig.from_dict({"backbone": MINI, "norm": norm})


def test_dson_and_crossdomain_mixstyle_train_deterministically_on_two_sources(two) -> None:
    arch = _arch({"dson": {"domains": 2}, "mixstyle": {"p": 1.0, "mix": "crossdomain"}})
    first = train_candidate(arch, two, TWO, TRAIN, seed=1, threads=1, keep_weights=True)
    second = train_candidate(arch, two, TWO, TRAIN, seed=1, threads=1)
    assert first.final["loss"] == second.final["loss"] and first.test == second.test
    # Every DSON branch was trained on its own domain: both branches' running means moved from 0.
    running = {k: v for k, v in first.checkpoint.state_dict.items() if k.endswith("running_mean")}
    assert len(running) == 9 and all(v.shape[0] == 2 and (v.abs().sum(1) > 0).all() for v in running.values())
    assert list(arch.resolve().inserts) == ["layer1.0.mixstyle", "layer2.0.mixstyle"]


def test_balanced_batch_labels_are_one_block_per_domain() -> None:
    assert domain_labels(7, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert domain_labels(6, 3).tolist() == [0, 0, 1, 1, 2, 2]


def test_a_dson_rule_for_another_number_of_sources_is_a_clear_error(two) -> None:
    with pytest.raises(NormsearchError, match="trains on 2 source domain"):
        train_candidate(_arch({"dson": {"domains": 3}}), two, TWO, TRAIN, seed=0, threads=1)
    one = load_data(ONE)
    with pytest.raises(NormsearchError, match="two or more source domains"):
        train_candidate(_arch({"mixstyle": {"mix": "crossdomain"}}), one, ONE, TRAIN, seed=0, threads=1)


def test_the_inference_policy_changes_evaluation_only(two) -> None:
    running = train_candidate(_arch({}), two, TWO, TRAIN, seed=2, threads=1)
    adabn = train_candidate(_arch({"inference": "adabn"}), two, TWO, TRAIN, seed=2, threads=1)
    # Same training (the policy is evaluation-only) ...
    assert (
        running.final["loss"] == adabn.final["loss"]
        and running.final["train_acc"] == adabn.final["train_acc"]
    )
    # ... measured differently: AdaBN re-estimates the statistics on each evaluated domain.
    assert running.test != adabn.test


def test_resume_gives_the_uninterrupted_numbers_with_mixstyle_dsu_and_dson(two) -> None:
    # The layers' own generators are part of the training state, so a resumed run draws what the
    # uninterrupted one drew.
    arch = _arch({"dson": {}, "mixstyle": {"mix": "crossdomain"}, "dsu": {"stages": [2]}})
    config = TrainConfig(epochs=2, batch_size=30)
    states = []
    whole = train_candidate(arch, two, TWO, config, seed=4, threads=1, snapshot=states.append)
    resumed = train_candidate(arch, two, TWO, config, seed=4, threads=1, resume=states[0])
    timing = ("epoch_seconds", "images_per_s")
    strip = [[{k: v for k, v in h.items() if k not in timing} for h in r.history] for r in (whole, resumed)]
    assert strip[0] == strip[1]
    assert {"module:layer1.0.mixstyle", "module:layer2.0.dsu"} <= set(states[0].generators)
