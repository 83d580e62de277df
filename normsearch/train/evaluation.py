"""What one training unit trains on and is measured on, and the accuracies it reports.

Per epoch (what the search sees): ``source_val_acc`` over the union of the sources' val splits,
``worst_source_val_acc`` (the lowest source), ``source/<domain>`` for each of several sources, and, when the
unit has select domains, ``target_select_acc`` (their mean) with ``select/<domain>``. After the last epoch,
once: the test accuracies: ``source`` (the sources' test splits together), each target domain, and
``test_mean``. A domain's val split only ever selects. A target is reported on its test split, or, where it
was stored with a train split too (a folder domain, a source of another fold), on everything but its val
split.

Every accuracy is measured under the network's test-time statistics policy (`norm.inference`:
running | batch | adabn | mix:alpha=A, `normsearch.norms.running`): ``batch`` and ``mix`` normalize each
evaluation batch (`EVAL_BATCH` images of one domain) with its own statistics, ``adabn`` re-estimates them on
all the evaluated images of that domain first (unlabelled), and each domain starts from the trained
running statistics again. `policy_results` measures the same trained weights under several policies at
once (a space's `policies`): the same functions, once per policy, nothing retrained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from normsearch.data.domains import Domain, DomainSet
from normsearch.data.pipeline import Standardizer
from normsearch.data.protocol import Unit
from normsearch.metrics import (
    SELECT_PREFIX,
    SOURCE_PREFIX,
    SOURCE_VAL_ACC,
    TARGET_SELECT_ACC,
    WORST_SOURCE_VAL_ACC,
)
from normsearch.norms.running import StatsPolicy, inference_statistics

Pair = tuple[torch.Tensor, torch.Tensor]
EVAL_BATCH = 500  # images per evaluation forward pass (and per test batch for the batch and mix policies)


def evaluation_split(domain: Domain) -> Pair:
    """A target domain's reported images: its test split, or everything outside its val split when the
    domain also has a train split (nothing selection saw is reported)."""
    if "train" not in domain.splits:
        return domain.split("test")
    keep = torch.ones(len(domain), dtype=torch.bool)
    keep[domain.splits["val"]] = False
    index = keep.nonzero().flatten()
    return domain.images[index], domain.labels[index]


@dataclass
class UnitSets:
    """The tensors of one unit: each source's train and val split, the select domains' val splits."""

    train: dict[str, Pair]
    val: dict[str, Pair]
    select: dict[str, Pair]

    def train_images(self) -> torch.Tensor:
        """Every source's train images together (for the standardisation statistics)."""
        parts = [x for x, _ in self.train.values()]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def unit_sets(data: DomainSet, unit: Unit, place: Callable[[torch.Tensor], torch.Tensor]) -> UnitSets:
    """Slice the unit's splits out of `data`; images are `place`d (on the device), labels stay on the host
    for evaluation and follow the images for training."""
    train = {}
    for name in unit.sources:
        x, y = data[name].split("train")
        train[name] = (place(x), place(y))
    val = {name: _placed(data[name].split("val"), place) for name in unit.sources}
    select = {name: _placed(data[name].split("val"), place) for name in unit.select}
    return UnitSets(train, val, select)


def _placed(pair: Pair, place: Callable[[torch.Tensor], torch.Tensor]) -> Pair:
    return place(pair[0]), pair[1]


@torch.no_grad()
def predicted_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    standardize: Standardizer,
    batch_size: int = EVAL_BATCH,
    policy: StatsPolicy | str = "running",
) -> torch.Tensor:
    """The model's (eval mode) outputs for `images` (uint8), on the host, under the test-time statistics
    `policy`: batch and mix normalize each batch of `batch_size` images with its own statistics, adabn
    re-estimates on all of `images` first (unlabelled). What training, `evaluate` and `predict` measure."""
    device = next(model.parameters()).device

    def batches():
        # Each batch goes to the device before it is standardised (the standardiser's statistics live
        # there): images left on the host by the device budget stream one batch at a time.
        for start in range(0, len(images), batch_size):
            yield standardize(images[start : start + batch_size].to(device, non_blocking=True))

    with inference_statistics(model, policy, batches):
        outputs = [model(x).float().cpu() for x in batches()]
    return torch.cat(outputs) if outputs else torch.empty(0)


def correct_count(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    standardize: Standardizer,
    batch_size: int = EVAL_BATCH,
    policy: StatsPolicy | str = "running",
) -> int:
    """How many of `images` the model (in eval mode) classifies right, under the test-time statistics
    `policy` (adabn re-estimates on these images, without their labels)."""
    if not len(labels):
        return 0
    predicted = predicted_logits(model, images, standardize, batch_size, policy).argmax(1)
    return int((predicted == labels).sum())


def percent(correct: int, total: int) -> float:
    return 100.0 * correct / max(total, 1)


def epoch_metrics(
    model: torch.nn.Module, sets: UnitSets, standardize: Standardizer, policy: StatsPolicy | str = "running"
) -> dict[str, float]:
    """The per-epoch accuracies of the module docstring."""
    counts = {
        name: (correct_count(model, x, y, standardize, policy=policy), len(y))
        for name, (x, y) in sets.val.items()
    }
    per_source = {name: percent(c, n) for name, (c, n) in counts.items()}
    out: dict[str, float] = {
        SOURCE_VAL_ACC: percent(sum(c for c, _ in counts.values()), sum(n for _, n in counts.values())),
    }
    if len(per_source) > 1:
        out.update({f"{SOURCE_PREFIX}{name}": acc for name, acc in per_source.items()})
    out[WORST_SOURCE_VAL_ACC] = min(per_source.values())
    if sets.select:
        accs = {
            name: percent(correct_count(model, x, y, standardize, policy=policy), len(y))
            for name, (x, y) in sets.select.items()
        }
        out[TARGET_SELECT_ACC] = sum(accs.values()) / len(accs)
        out.update({f"{SELECT_PREFIX}{name}": acc for name, acc in accs.items()})
    return out


def final_accuracies(
    model: torch.nn.Module,
    data: DomainSet,
    unit: Unit,
    standardize: Standardizer,
    policy: StatsPolicy | str = "running",
) -> dict[str, float]:
    """The after-training accuracies of the module docstring. The test images stay on the host and
    reach the device one evaluation batch at a time (`correct_count`): a test split is never copied to
    the device whole, whatever its size."""
    correct = total = 0
    test: dict[str, float] = {}
    for name in unit.sources:
        x, y = data[name].split("test")
        c = correct_count(model, x, y, standardize, policy=policy)
        correct, total = correct + c, total + len(y)
        if len(unit.sources) > 1:
            test[f"{SOURCE_PREFIX}{name}"] = percent(c, len(y))
    test = {"source": percent(correct, total), **test}
    for name in unit.targets:
        x, y = evaluation_split(data[name])
        test[name] = percent(correct_count(model, x, y, standardize, policy=policy), len(y))
    if unit.test:
        test["test_mean"] = sum(test[n] for n in unit.test) / len(unit.test)
    return test


def policy_results(
    model: torch.nn.Module,
    sets: UnitSets,
    data: DomainSet,
    unit: Unit,
    standardize: Standardizer,
    policies: list[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """{policy: {"metrics": `epoch_metrics`, "test": `final_accuracies`}} of the trained `model` under each
    of `policies`, in order. Every policy starts from the trained running statistics
    (`inference_statistics` restores them), so the order does not change a number."""
    out = {}
    for policy in policies:
        out[policy] = {
            "metrics": epoch_metrics(model, sets, standardize, policy),
            "test": final_accuracies(model, data, unit, standardize, policy),
        }
    return out
