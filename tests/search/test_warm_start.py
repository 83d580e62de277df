"""The SN warm start: shares of each normalizer, distances to learned ratios by hand, the ranking, and phase
1 for real (a supernet trained, its ratios read, the nearest configuration the study's first trial)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from normsearch.arch import ArchConfig
from normsearch.norms.spec import NormSpec
from normsearch.recipe import Recipe
from normsearch.results.tables import warm_start_table
from normsearch.run.folder import RunFolder
from normsearch.run.study import open_study
from normsearch.search.ledger import Ledger
from normsearch.search.searcher import make_sampler
from normsearch.search.trial import TRIAL_KEY
from normsearch.search.warm_start import (
    confident_slots,
    distance,
    hard_choice,
    queue,
    rank_configs,
    spec_share,
    supernet_arch,
    train_supernet,
)
from normsearch.space import Space

MODEL = {"backbone": {"preset": "resnet-mini"}}
RATIO = {
    "params": {"ratio": {"type": "categorical", "choices": [0.0, 0.25, 0.5, 1.0], "path": "norm.ibn.ratio"}}
}


@pytest.mark.parametrize(
    ("spec", "share"),
    [
        ("bn", (0.0, 0.0, 1.0)),
        ("in", (1.0, 0.0, 0.0)),
        ("gn:groups=4", (0.0, 1.0, 0.0)),
        ("ibn:ratio=0.25", (0.25, 0.0, 0.75)),
        ("ibn", (0.5, 0.0, 0.5)),
        ("sn:mode=hard,mean=in,var=bn", (0.5, 0.0, 0.5)),
        ("sn", None),
        ("ssn", None),
    ],
)
def test_each_normalizer_has_its_in_ln_bn_share(spec: str, share: tuple | None) -> None:
    assert spec_share(NormSpec.parse(spec)) == share


def test_distance_is_the_total_variation_summed_over_slots_by_hand() -> None:
    arch = ArchConfig.from_dict({**MODEL, "norm": {"ibn": {"variant": "a", "stages": [1], "ratio": 0.25}}})
    slots = list(arch.resolve().slots)
    ratios = {slot: (0.2, 0.2, 0.6) for slot in slots}
    ibn_slots = [s for s, spec in arch.resolve().slots.items() if spec.kind == "ibn"]
    assert ibn_slots  # stage 1's first norms carry IBN-a
    # BN slot: 0.5 * (|0-.2| + |0-.2| + |1-.6|) = 0.4; IBN 0.25: 0.5 * (.05 + .2 + .15) = 0.2.
    expected = 0.4 * (len(slots) - len(ibn_slots)) + 0.2 * len(ibn_slots)
    d, agrees = distance(arch, ratios, {})
    assert d == pytest.approx(expected) and agrees
    fixed = {ibn_slots[0]: "in"}  # an IBN slot with ratio 0.25 leans BN, so it disagrees with a fixed IN
    assert distance(arch, ratios, fixed)[1] is False


def test_the_ranking_puts_the_configuration_nearest_the_learned_ratios_first() -> None:
    recipe = Recipe.model_validate(
        {"name": "u", "model": {**MODEL, "norm": {"ibn": {"stages": [1]}}}, "search": {"space": RATIO}}
    )
    space = Space.model_validate(RATIO)
    slots = list(recipe.model.resolve().slots)
    ratios = {s: ((0.3, 0.0, 0.7) if s.startswith("layer1") else (0.0, 0.05, 0.95)) for s in slots}
    ranked = rank_configs(space, recipe.model, ratios)
    assert [r.values["ratio"] for r in ranked] == [0.25, 0.5, 0.0, 1.0]  # |r - 0.3| in order
    assert queue(ranked, 2) == [{"ratio": 0.25}, {"ratio": 0.5}]
    # Fixing confident slots (BN at 0.95 everywhere but stage 1; stage 1's 0.7 is below 0.9) changes nothing
    # here; fixing at 0.6 makes stage 1 "bn", which IN ratio 1.0 contradicts.
    assert set(confident_slots(ratios, 0.9)) == {s for s in slots if not s.startswith("layer1")}
    ranked_fixed = rank_configs(space, recipe.model, ratios, fix_above=0.6)
    assert [r.values["ratio"] for r in ranked_fixed if not r.agrees] == [1.0]
    assert {"ratio": 1.0} not in queue(ranked_fixed, 4)
    assert hard_choice({"a": (0.5, 0.2, 0.3), "b": (0.1, 0.1, 0.8)}) == {"a": "in", "b": "bn"}


def test_the_supernet_is_soft_sn_in_every_slot_of_the_base() -> None:
    base = ArchConfig.from_dict({**MODEL, "norm": {"ibn": {"stages": [1, 2]}}})
    plan = supernet_arch(base).resolve()
    assert {str(spec) for spec in plan.slots.values()} == {"sn:mode=soft"}
    assert list(plan.slots) == list(base.resolve().slots)


def test_phase_one_trains_the_supernet_and_the_nearest_configuration_is_trained_first(tmp_path: Path) -> None:
    recipe = Recipe.model_validate(
        {
            "name": "warm",
            "data": {"n_train": 200, "n_val": 40, "n_test": 40},
            "train": {"epochs": 1, "batch_size": 32},
            "model": {**MODEL, "norm": {"ibn": {"stages": [1]}}},
            "search": {
                "space": RATIO,
                "algorithm": "nsga2",
                "num_samples": 4,
                "warm_start": {"kind": "sn", "neighbours": 2},
            },
        }
    )
    space = Space.model_validate(RATIO)
    folder = RunFolder.create(tmp_path / "run", recipe, space)
    study = open_study(folder, recipe.name, recipe.search.objectives, make_sampler(recipe))
    lines: list[str] = []
    record = train_supernet(folder, recipe, space, study, lines.append)
    assert record is not None and folder.warm_start() == record
    assert lines and "training the SN supernet" in lines[-1]
    slots = list(recipe.model.resolve().slots)
    assert list(record["ratios"]) == slots and all(
        sum(r) == pytest.approx(1.0) for r in record["ratios"].values()
    )
    expected = queue(rank_configs(space, recipe.model, {k: tuple(v) for k, v in record["ratios"].items()}), 2)
    assert [q["values"] for q in record["queue"]] == expected
    ledger = Ledger(folder, study, recipe, space, "attempt-1", budget=4)
    first, second = ledger.next_config(), ledger.next_config()
    assert [{"ratio": first["ratio"]}, {"ratio": second["ratio"]}] == expected
    assert first[TRIAL_KEY] == "t000"
    # A resumed driver finds the record and neither trains nor enqueues again.
    assert train_supernet(folder, recipe, space, study) == record
    assert len(study.trials) == 2
    text = Console(width=200, record=True)
    text.print(warm_start_table(record))
    shown = text.export_text()
    assert "SN warm start" in shown and slots[0] in shown and "queued first: 1." in shown
