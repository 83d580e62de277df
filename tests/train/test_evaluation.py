"""Per-source, worst-source and select accuracies, computed on hand-made domains with a fixed classifier."""

from __future__ import annotations

import torch
from torch import nn

from normsearch.data.domains import Domain, DomainSet
from normsearch.data.pipeline import Standardizer
from normsearch.data.protocol import Unit
from normsearch.train.evaluation import epoch_metrics, evaluation_split, final_accuracies, unit_sets


class AlwaysClass(nn.Module):
    """Predicts class `k` for every image (a real module; its answers are known in advance)."""

    def __init__(self, k: int, classes: int = 3) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(k), classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def _domain(name: str, labels: list[int], splits: dict[str, list[int]]) -> Domain:
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    return Domain(name, images, torch.tensor(labels), {k: torch.tensor(v) for k, v in splits.items()})


def test_union_mean_and_worst_source_on_known_answers() -> None:
    # Domain a: val labels 0,0,0,1 -> 75 % for "always 0"; domain b: val labels 1,1 -> 0 %.
    a = _domain("a", [0, 0, 0, 0, 1, 2], {"train": [0, 5], "val": [1, 2, 3, 4], "test": [0]})
    b = _domain("b", [1, 1, 1, 0], {"train": [0], "val": [1, 2], "test": [3]})
    c = _domain("c", [0, 0, 1, 2], {"val": [0, 1], "test": [2, 3]})
    data = DomainSet(["x", "y", "z"], {"a": a, "b": b, "c": c})
    unit = Unit("", ("a", "b"), ("c",), ("c",))
    sets = unit_sets(data, unit, lambda t: t)
    std = Standardizer(torch.zeros(3), torch.ones(3))
    metrics = epoch_metrics(AlwaysClass(0).eval(), sets, std)
    assert metrics["source/a"] == 75.0 and metrics["source/b"] == 0.0
    assert metrics["source_val_acc"] == 100.0 * 3 / 6  # the union of the val splits, not a mean of means
    assert metrics["worst_source_val_acc"] == 0.0
    assert metrics["target_select_acc"] == metrics["select/c"] == 100.0
    test = final_accuracies(AlwaysClass(0).eval(), data, unit, std)
    assert test["source"] == 100.0 and test["source/a"] == 100.0 and test["source/b"] == 100.0
    assert test["c"] == 0.0 and test["test_mean"] == 0.0


def test_a_held_out_domain_is_reported_on_everything_selection_did_not_see() -> None:
    d = _domain("d", [0, 1, 2, 0, 1], {"train": [0, 1], "val": [2], "test": [3, 4]})
    _, labels = evaluation_split(d)
    assert labels.tolist() == [0, 1, 0, 1]  # all but the val image
    only = _domain("e", [0, 1], {"val": [0], "test": [1]})
    assert evaluation_split(only)[1].tolist() == [1]
