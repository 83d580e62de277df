"""DomainBed's protocol: units per selection rule and rotation, how units combine, the rule named."""

from __future__ import annotations

import pytest

from normsearch.data.protocol import Unit, combine_units, describe_rule, expand_units
from normsearch.data.spec import DataConfig
from normsearch.recipe import Recipe

S = ["art", "cartoon", "photo"]


def test_units_per_rule_without_rotation() -> None:
    assert expand_units(S, ["sketch"], ["x"], "held_out", False) == [Unit("", tuple(S), ("sketch",), ("x",))]
    assert expand_units(S, [], ["x"], "training_domain", False) == [Unit("", tuple(S), (), ("x",))]
    lodo = expand_units(S, [], ["x"], "leave_one_domain_out", False)
    assert [(u.name, u.sources, u.select) for u in lodo] == [
        ("art", ("cartoon", "photo"), ("art",)),
        ("cartoon", ("art", "photo"), ("cartoon",)),
        ("photo", ("art", "cartoon"), ("photo",)),
    ]


def test_units_under_rotation() -> None:
    folds = expand_units(S, [], [], "training_domain", True)
    assert [(u.name, u.sources, u.test, u.held_out) for u in folds] == [
        ("art", ("cartoon", "photo"), ("art",), "art"),
        ("cartoon", ("art", "photo"), ("cartoon",), "cartoon"),
        ("photo", ("art", "cartoon"), ("photo",), "photo"),
    ]
    oracle = expand_units(S, [], ["x"], "oracle", True)
    assert (oracle[0].select, oracle[0].test) == (("art",), ("art", "x"))  # the held-out domain selects
    nested = expand_units(S, [], [], "leave_one_domain_out", True)
    assert [(u.name, u.sources, u.select) for u in nested[:2]] == [
        ("art~cartoon", ("photo",), ("cartoon",)),
        ("art~photo", ("cartoon",), ("photo",)),
    ]
    assert len(nested) == 6 and {u.held_out for u in nested} == set(S)


def test_units_combine_into_fold_means_and_domainbed_columns() -> None:
    units = expand_units(["a", "b"], [], [], "training_domain", True)
    finals = {
        "a": {"source_val_acc": 80.0, "epoch": 2, "final": True},
        "b": {"source_val_acc": 90.0, "epoch": 2},
    }
    tests = {"a": {"a": 40.0, "source": 70.0}, "b": {"b": 60.0, "source": 90.0}}
    metrics, test = combine_units(units, finals, tests)
    assert metrics == {"source_val_acc": 85.0, "epoch": 2.0}
    assert test == {"a": 40.0, "b": 60.0, "avg": 50.0, "source": 80.0}


def test_every_rule_is_named_and_the_oracle_labelled() -> None:
    assert "training-domain validation" in describe_rule("training_domain", S, [], [], False)
    assert "leave-one-domain-out" in describe_rule("leave_one_domain_out", S, [], [], True)
    assert describe_rule("oracle", S, [], [], True).startswith("ORACLE")
    assert "held out in turn" in describe_rule("held_out", S, ["sketch"], [], True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"source": ["plain", "texture"], "selection": "training_domain", "select": ["fog"]},
            "select must be empty",
        ),
        (
            {"source": ["plain"], "rotate": True, "selection": "training_domain"},
            "at least 2 domains in source",
        ),
        ({"source": ["plain", "texture"], "rotate": True, "selection": "leave_one_domain_out"}, "at least 3"),
        ({"source": ["plain", "plain"], "select": ["fog"]}, "listed twice"),
        ({"source": ["plain", "plain+fog@2"], "select": ["fog"]}, "cannot be a source"),
    ],
)
def test_protocol_misuse_is_one_line(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig.model_validate(data)


def test_training_domain_selection_has_source_objectives() -> None:
    recipe = Recipe.model_validate(
        {
            "name": "r",
            "data": {"source": ["plain", "texture"], "selection": "training_domain", "test": ["fog"]},
            "search": {"space": {"params": {}}},
        }
    )
    assert recipe.search.objectives == {"source_val_acc": "max", "worst_source_val_acc": "max"}
    with pytest.raises(ValueError, match="no target is selected on"):
        Recipe.model_validate(
            {
                "name": "r",
                "data": {"source": ["plain", "texture"], "selection": "training_domain"},
                "search": {"space": {"params": {}}, "objectives": {"target_select_acc": "max"}},
            }
        )
