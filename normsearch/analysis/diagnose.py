"""`normsearch diagnose`: the three analyses over one trained network's normalization slots.

The network comes from a run (`from_run`: a trial's final checkpoint, with the ArchConfig its weights fit)
or is trained here from an ArchConfig and a recipe (`from_config`). Images of the unit's sources (their test
split) and of each target domain (what `evaluation` reports on) go through the network in eval mode; forward
hooks on every slot of the NormPlan (slot names are the model's own dotted module names, so any network
family works) record each slot's per-image channel means (for the divergence) and, for BN-like slots, the
moments of the slot's input (for the estimation shift). Nothing here trains a searched network or
imports Ray.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normsearch.analysis.divergence import channel_means, feature_divergence
from normsearch.analysis.estimation_shift import InputMoments, estimation_shift, running_statistics
from normsearch.analysis.plots import Diagnosis, plot_divergence, plot_estimation_shift, plot_sn_ratios
from normsearch.analysis.sn_ratios import sn_ratios
from normsearch.arch import ArchConfig, load_arch
from normsearch.data.domains import DomainSet
from normsearch.data.pipeline import Standardizer
from normsearch.data.protocol import Unit
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.recipe import Recipe
from normsearch.run.files import atomic_write_text, os_errors
from normsearch.run.folder import RunFolder
from normsearch.run.records import UNIT_SEPARATOR
from normsearch.train import _standardizer as training_standardizer
from normsearch.train import evaluation_split, hardened_arch, train_from_recipe, unit_sets

SOURCE = "source"
IMAGES = 256  # per domain; the Gaussian of Eq. 1 is fit over this many images


@dataclass
class TrainedNetwork:
    """A trained network ready to diagnose: the model (eval mode, CPU), the ArchConfig its weights fit,
    the recipe and protocol unit it was trained under, and what it is (for titles)."""

    model: nn.Module
    arch: ArchConfig
    recipe: Recipe
    unit: Unit
    label: str


def _num_classes(arch: ArchConfig, data: DomainSet, keep_weights: bool = False) -> ArchConfig:
    """`arch` sized for the data's classes (as training sizes it), without loading `backbone.weights` again
    (the trained weights replace them)."""
    update: dict[str, Any] = {"num_classes": data.num_classes}
    if not keep_weights:
        update["weights"] = None
    return arch.model_copy(update={"backbone": arch.backbone.model_copy(update=update)})


def _unit(recipe: Recipe, name: str | None) -> Unit:
    units = recipe.data.units()
    if name is None:
        return units[0]
    for unit in units:
        if unit.name == name:
            return unit
    raise NormsearchError(
        f"--unit {name!r}: the recipe's units are {', '.join(u.name or '(one)' for u in units)}"
    )


def from_run(
    run_dir: str | Path, trial_id: str, data: DomainSet | None = None
) -> tuple[TrainedNetwork, DomainSet]:
    """The network of trial `trial_id` of a run (a search trial, a unit of one, or a confirmation run),
    rebuilt from its final checkpoint: `RunFolder.final_state(trial).model` with the ArchConfig those
    weights fit (`hardened_arch`: a soft Switchable Norm switched to hard during training is hard here)."""
    folder = RunFolder.open(run_dir)
    recipe, _ = folder.load()
    records = {t.trial_id: t for t in [*folder.trials(), *folder.confirmations()]}
    record = records.get(trial_id)
    if record is None:
        raise NormsearchError(
            f"--trial {trial_id!r}: no such trial in {folder.path}; trials: {', '.join(records)}"
        )
    units = recipe.data.units()
    if len(units) > 1 and UNIT_SEPARATOR not in trial_id:
        names = ", ".join(f"{trial_id}{UNIT_SEPARATOR}{u.name}" for u in units)
        raise NormsearchError(
            f"--trial {trial_id}: trained once per protocol unit; diagnose one of its units: {names}"
        )
    if not record.complete:
        raise NormsearchError(f"--trial {trial_id}: {record.status}; only a complete trial has final weights")
    unit = _unit(recipe, trial_id.partition(UNIT_SEPARATOR)[2] if UNIT_SEPARATOR in trial_id else None)
    state = folder.final_state(trial_id)
    data = data or load_data(recipe.data)
    arch = hardened_arch(ArchConfig.from_dict(record.arch or {}), state.model)
    model = build_model(_num_classes(arch, data))
    model.load_state_dict(state.model)
    label = f"{folder.path.name} trial {trial_id}"
    return TrainedNetwork(
        model.eval(), _num_classes(arch, data, keep_weights=True), recipe, unit, label
    ), data


def from_config(
    config: str | Path,
    recipe: Recipe,
    unit: str | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    data: DomainSet | None = None,
) -> tuple[TrainedNetwork, DomainSet]:
    """Train the ArchConfig in `config` under `recipe` (its seed, training and first protocol unit, or
    `unit`) and return the trained network."""
    arch = load_arch(config)
    chosen = _unit(recipe, unit)
    data = data or load_data(recipe.data)
    result = train_from_recipe(recipe, arch, chosen, data=data, report=report, keep_weights=True)
    assert result.checkpoint is not None
    weights = result.checkpoint.state_dict
    trained = hardened_arch(ArchConfig.from_dict(result.checkpoint.arch or arch.to_dict()), weights)
    model = build_model(_num_classes(trained, data))
    model.load_state_dict(weights)
    label = f"{Path(config).name} trained on {recipe.name} (seed {recipe.seed})"
    return TrainedNetwork(
        model.eval(), _num_classes(trained, data, keep_weights=True), recipe, chosen, label
    ), data


def _subset(images: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """At most `n` images, drawn without replacement by a fixed generator (deterministic, class-mixed)."""
    if len(labels) <= n:
        return images
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return images[index]


def domain_images(network: TrainedNetwork, data: DomainSet, n: int = IMAGES) -> dict[str, torch.Tensor]:
    """The images each domain is diagnosed on: the sources' test splits (together), then every target's
    reported images (the split `evaluation` measures it on)."""
    parts = [data[name].split("test") for name in network.unit.sources]
    source = (torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    out = {SOURCE: _subset(*source, n)}
    for name in network.unit.targets:
        out[name] = _subset(*evaluation_split(data[name]), n)
    return out


def _standardizer(network: TrainedNetwork, data: DomainSet) -> Standardizer:
    """The input standardisation the network was trained with (the same rule as training's)."""
    return training_standardizer(
        network.arch, network.recipe.data, unit_sets(data, network.unit, lambda t: t)
    )


@torch.no_grad()
def _record(
    model: nn.Module, slots: list[str], images: torch.Tensor, standardize: Standardizer, batch: int = 128
) -> tuple[dict[str, torch.Tensor], dict[str, InputMoments]]:
    """Each slot's (N, C) channel means of its output and, for BN-like slots, its input's moments."""
    means: dict[str, list[torch.Tensor]] = {s: [] for s in slots}
    moments: dict[str, InputMoments] = {}
    handles = []
    for slot in slots:
        module = model.get_submodule(slot)
        handles.append(
            module.register_forward_hook(lambda _m, _i, out, s=slot: means[s].append(channel_means(out)))
        )
        if running_statistics(module) is not None:
            moments[slot] = InputMoments()
            handles.append(module.register_forward_pre_hook(lambda _m, args, s=slot: moments[s].add(args[0])))
    try:
        model.eval()
        for start in range(0, len(images), batch):
            model(standardize(images[start : start + batch]))
    finally:
        for handle in handles:
            handle.remove()
    return {s: torch.cat(v) for s, v in means.items() if v}, moments


def diagnose(network: TrainedNetwork, data: DomainSet, images: int = IMAGES) -> Diagnosis:
    """Divergence (IBN-Net §4.3) per slot between the source and each target, estimation shift (XBNBlock
    §4.2) per BN-like slot on the source and each target, and the SN ratios (SN Fig. 5)."""
    plan = network.arch.resolve()
    slots = list(plan.slots)
    model = network.model.cpu().eval()
    standardize = _standardizer(network, data)
    per_domain = domain_images(network, data, images)
    recorded = {d: _record(model, slots, x, standardize) for d, x in per_domain.items()}
    targets = [d for d in per_domain if d != SOURCE]
    diagnosis = Diagnosis(
        network.label,
        network.recipe.data.describe(),
        slots,
        {s: str(spec) for s, spec in plan.slots.items()},
        targets,
        {d: len(x) for d, x in per_domain.items()},
    )
    source_means = recorded[SOURCE][0]
    for domain in targets:
        diagnosis.divergence[domain] = [
            feature_divergence(source_means[s], recorded[domain][0][s]) for s in slots
        ]
    for domain in per_domain:
        row: list[tuple[float, float] | None] = []
        for slot in slots:
            stats = running_statistics(model.get_submodule(slot))
            moments = recorded[domain][1].get(slot)
            row.append(
                None
                if stats is None or moments is None
                else estimation_shift(*stats, moments.mean(), moments.var())
            )
        diagnosis.shift[domain] = row
    diagnosis.sn = sn_ratios(model, slots)
    return diagnosis


def write_diagnosis(diagnosis: Diagnosis, out_dir: str | Path) -> list[Path]:
    """diagnosis.json, divergence.csv/png, estimation_shift.csv/png and, for SN models, sn_ratios.csv/png
    in `out_dir` (created); written atomically. Returns the paths."""
    out = Path(out_dir)
    with os_errors(out, "create the output folder"):
        out.mkdir(parents=True, exist_ok=True)
    written = []

    def table(name: str, header: list[str], rows: list[list[Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(out / name, buffer.getvalue())
        written.append(out / name)

    d = diagnosis
    atomic_write_text(out / "diagnosis.json", json.dumps(d.to_dict(), indent=1))
    written.append(out / "diagnosis.json")
    table(
        "divergence.csv",
        ["slot", "normalizer", *d.targets],
        [
            [s, d.normalizers[s], *(f"{d.divergence[t][i]:.6g}" for t in d.targets)]
            for i, s in enumerate(d.slots)
        ],
    )
    domains = list(d.shift)

    def shifts(i: int) -> list[str]:
        values = [d.shift[dom][i] for dom in domains]
        return [("" if v is None else f"{v[k]:.6g}") for v in values for k in (0, 1)]

    table(
        "estimation_shift.csv",
        ["slot", "normalizer", *(f"{dom} {m}" for dom in domains for m in ("ESM_mu", "ESM_sigma"))],
        [[s, d.normalizers[s], *shifts(i)] for i, s in enumerate(d.slots)],
    )
    written += [
        plot_divergence(d, out / "divergence.png"),
        plot_estimation_shift(d, out / "estimation_shift.png"),
    ]
    if d.sn:
        table(
            "sn_ratios.csv",
            ["slot", "mode", "mean in", "mean ln", "mean bn", "var in", "var ln", "var bn", "choice"],
            [[r.slot, r.mode, *(f"{v:.4f}" for v in (*r.mean, *r.var)), r.choice] for r in d.sn],
        )
        written.append(plot_sn_ratios(d, out / "sn_ratios.png"))
    return written
