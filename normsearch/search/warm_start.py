"""The Switchable-Normalization warm start (`search.warm_start: sn`).

Switchable Normalization learns, in one training run, how much each layer wants IN, LN and BN statistics
(Luo et al., ICLR 2019, Eq. 5 and Fig. 5). Before the black-box search spends a training per candidate, the
warm start trains that one "supernet" (the base architecture with soft SN in every slot) on the sources,
reads each slot's learned ratios, and queues the space's configurations nearest to them as the first trials.

Nearness is measured through the NormPlan, so it works for any space: every slot's NormSpec has an
(IN, LN, BN) share (BN = (0, 0, 1), IN = (1, 0, 0), LN/GN = (0, 1, 0), IBN-a with ratio r = (r, 0, 1 − r),
a hard SN its chosen mean/var one-hots averaged); a configuration's distance is the sum over slots of the
total-variation distance between its share and the supernet's ratios (the mean and variance ratios
averaged). Slots whose spec has no fixed share (a soft SN, a Sparse SN) do not count. With
`fix_above: q`, a slot whose largest learned ratio exceeds q is fixed to that normalizer: configurations
whose share there points elsewhere are not queued. The queue only orders the start; the recipe's sampler
takes over after it (and may still propose anything).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from normsearch.arch import ArchConfig
from normsearch.arch.config import NormConfig
from normsearch.metrics import SOURCE_VAL_ACC
from normsearch.models import build_model
from normsearch.norms.spec import NormSpec
from normsearch.norms.switchable import SwitchNorm2d
from normsearch.recipe import Recipe
from normsearch.run.folder import RunFolder
from normsearch.space import Space
from normsearch.train import train_from_recipe

Share = tuple[float, float, float]  # (IN, LN, BN)
STATS = ("in", "ln", "bn")
POOL = 256  # configurations drawn from a space too large to enumerate


def supernet_arch(model: ArchConfig) -> ArchConfig:
    """The base architecture with soft Switchable Normalization in every normalization slot (and none of
    the base's other rules): what phase 1 of the warm start trains."""
    return model.model_copy(update={"norm": NormConfig(default="sn:mode=soft")})


def slot_ratios(network: nn.Module, arch: ArchConfig) -> dict[str, Share]:
    """Every SN slot's learned (IN, LN, BN) ratios: the mean and variance ratios of SN Eq. 5 averaged."""
    out: dict[str, Share] = {}
    for slot in arch.resolve().slots:
        module = network.get_submodule(slot)
        if isinstance(module, SwitchNorm2d):
            mean, var = module.ratios()
            both = ((mean + var) / 2).detach().cpu().tolist()
            out[slot] = (float(both[0]), float(both[1]), float(both[2]))
    return out


def spec_share(spec: NormSpec) -> Share | None:
    """The (IN, LN, BN) share a normalizer gives its slot; None where it has no fixed share."""
    kind = spec.kind
    if kind == "bn":
        return (0.0, 0.0, 1.0)
    if kind == "in":
        return (1.0, 0.0, 0.0)
    if kind in ("ln", "gn"):  # batch-free statistics over channel groups: LN's column of SN
        return (0.0, 1.0, 0.0)
    if kind == "ibn":
        ratio = float(spec.get("ratio", 0.5))
        return (ratio, 0.0, 1.0 - ratio)
    if kind == "sn" and spec.get("mode", "soft") == "hard":
        share = [0.0, 0.0, 0.0]
        for stat in (spec.get("mean", "bn"), spec.get("var", "bn")):
            share[STATS.index(str(stat))] += 0.5
        return (share[0], share[1], share[2])
    return None


def confident_slots(ratios: dict[str, Share], fix_above: float | None) -> dict[str, str]:
    """Slots whose largest ratio exceeds `fix_above`, with the normalizer (in/ln/bn) they are fixed to."""
    if fix_above is None:
        return {}
    return {slot: STATS[max(range(3), key=r.__getitem__)] for slot, r in ratios.items() if max(r) > fix_above}


def hard_choice(ratios: dict[str, Share]) -> dict[str, str]:
    """Each slot's argmax normalizer: the hard plan the supernet points at (SN §4.1.4)."""
    return {slot: STATS[max(range(3), key=r.__getitem__)] for slot, r in ratios.items()}


@dataclass(frozen=True)
class Ranked:
    """A configuration of the space and its distance to the supernet's ratios."""

    values: dict[str, Any]
    distance: float
    agrees: bool  # with every slot fixed by `fix_above`


def distance(arch: ArchConfig, ratios: dict[str, Share], fixed: dict[str, str]) -> tuple[float, bool]:
    """Sum over slots of the total-variation distance between the plan's share and the learned ratios;
    and whether the plan agrees with every fixed slot (the fixed normalizer has its largest share)."""
    total, agrees = 0.0, True
    for slot, spec in arch.resolve().slots.items():
        share = spec_share(spec)
        if share is None or slot not in ratios:
            continue
        total += 0.5 * sum(abs(a - b) for a, b in zip(share, ratios[slot], strict=True))
        if slot in fixed and share[STATS.index(fixed[slot])] < max(share):  # a tie (IBN 0.5) agrees
            agrees = False
    return total, agrees


def candidates(space: Space, seed: int = 0) -> list[dict[str, Any]]:
    """Every configuration of a finite space; else POOL distinct ones drawn at random (seeded)."""
    every = space.assignments()
    if every is not None:
        return every

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(POOL * 4):
        values = space.sample(study.ask())
        seen.setdefault(repr(sorted(values.items())), values)
        if len(seen) >= POOL:
            break
    return list(seen.values())


def rank_configs(
    space: Space,
    model: ArchConfig,
    ratios: dict[str, Share],
    fix_above: float | None = None,
    seed: int = 0,
) -> list[Ranked]:
    """The space's configurations nearest to the learned ratios first (ties keep the space's order);
    those disagreeing with a slot fixed by `fix_above` last, marked `agrees=False`."""
    fixed = confident_slots(ratios, fix_above)
    ranked = []
    for values in candidates(space, seed):
        d, agrees = distance(space.to_arch(model, values), ratios, fixed)
        ranked.append(Ranked(values, d, agrees))
    return sorted(ranked, key=lambda r: (not r.agrees, r.distance))


def train_supernet(
    folder: RunFolder,
    recipe: Recipe,
    space: Space,
    study: Any,
    on_change: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Phase 1 of `search.warm_start: sn`: train the supernet on the first training unit's sources (in
    the driver, as `train.init: pretrain` does), read its ratios, enqueue the nearest configurations as
    the study's first trials, and keep the supernet's record in the run folder. A run that already has
    the record (resume) is not trained again. Returns the record (None without a warm start)."""
    rule = recipe.search.warm_start
    if rule.kind != "sn":
        return None
    kept = folder.warm_start()
    if kept is not None:
        return kept
    arch = supernet_arch(recipe.model)
    unit = recipe.data.units()[0]

    def report(metrics: dict[str, Any]) -> None:
        if on_change is not None:
            on_change(
                f"warm start: training the SN supernet on {', '.join(unit.sources)}: epoch "
                f"{metrics['epoch']}/{recipe.train.epochs}, source val {metrics[SOURCE_VAL_ACC]:.1f}"
            )

    result = train_from_recipe(recipe, arch, unit, report=report, keep_weights=True)
    assert result.checkpoint is not None
    ratios = slot_ratios(build_model(arch, weights=result.checkpoint), arch)
    ranked = rank_configs(space, recipe.model, ratios, rule.fix_above, recipe.search_seed)
    first = queue(ranked, rule.neighbours)
    for values in first:
        study.enqueue_trial(values, user_attrs={"warm_start": "sn"}, skip_if_exists=True)
    # After the queue is in the study: a driver killed in between trains the supernet again on resume and
    # re-enqueues (the no-duplicate rule then makes the second copies repeats); the other order could lose
    # the queue.
    record = {
        "kind": "sn",
        "arch": arch.to_dict(),
        "unit": unit.name,
        "epochs": len(result.history),
        "seconds": result.seconds,
        "metrics": {k: v for k, v in result.final.items() if isinstance(v, int | float)},
        "test": result.test,
        "ratios": {slot: list(r) for slot, r in ratios.items()},
        "choice": hard_choice(ratios),
        "fixed": confident_slots(ratios, rule.fix_above),
        "queue": [{"values": r.values, "distance": r.distance} for r in ranked if r.values in first],
    }
    folder.write_warm_start(record)
    return record


def queue(ranked: Iterable[Ranked], neighbours: int) -> list[dict[str, Any]]:
    """The first trials: the nearest configuration (the argmax plan as the space can express it) and its
    nearest neighbours, `neighbours` in all, none that disagrees with a fixed slot."""
    out = [r.values for r in ranked if r.agrees and math.isfinite(r.distance)]
    return out[:neighbours]
