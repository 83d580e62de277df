"""What a finalize writes once its seeds are trained: the preprocessing the network was trained with, its
weights (from each seed's last epoch checkpoint), and the ArchConfig with provenance (search/finalize.py)."""

from __future__ import annotations

from typing import Any

from normsearch.arch import ArchConfig
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.metrics import SOURCE_VAL_ACC, is_metric
from normsearch.models import build_model
from normsearch.recipe import Recipe
from normsearch.results.front import RunSummary
from normsearch.run.finalized import FinalFolder
from normsearch.run.records import TrialRecord, confirm_trial_id
from normsearch.train import _standardizer, hardened_arch, unit_sets

PREPROCESSING_FORMAT = "normsearch-preprocessing"
RESIZE_RULE = (
    "decode with Pillow, convert to RGB, resize to input_size with bilinear interpolation and antialiasing "
    "(aspect ratio not kept; no crop), round to uint8, divide by 255, subtract mean and divide by std per "
    "channel: exactly how training and evaluation images were prepared"
)


def trained_arch(trial: TrialRecord, num_classes: int) -> ArchConfig:
    """The trial's ArchConfig with the head sized for the data's classes (as training sizes it)."""
    if trial.arch is None:
        raise NormsearchError(f"trial {trial.trial_id}: no architecture recorded")
    arch = ArchConfig.from_dict(trial.arch)
    backbone = arch.backbone.model_copy(update={"num_classes": num_classes})
    return arch.model_copy(update={"backbone": backbone})


def preprocessing_for(recipe: Recipe, trial: TrialRecord) -> dict[str, Any]:
    """The preprocessing of the finalized network: input size, resize rule, the channel mean/std training
    used (with ``normalize: auto`` the sources' own statistics, fitted exactly as training fits them), the
    class names in index order, and the training-only augmentation. Loads the data (the finalize recipe's)."""
    data = load_data(recipe.data)
    unit = recipe.data.units()[0]
    arch = trained_arch(trial, data.num_classes)
    standardize = _standardizer(arch, recipe.data, unit_sets(data, unit, lambda t: t))
    rule = recipe.data.normalize
    statistics = "imagenet" if rule == "imagenet" or (rule == "auto" and arch.backbone.weights) else "sources"
    return {
        "format": PREPROCESSING_FORMAT,
        "version": 1,
        "input_size": [recipe.data.size, recipe.data.size],
        "channels": "RGB",
        "resize": RESIZE_RULE,
        # full precision: the float32 constants training used come back exactly
        "mean": [float(v) for v in standardize.mean],
        "std": [float(v) for v in standardize.std],
        "normalize": rule,
        "statistics": statistics
        if statistics == "imagenet"
        else f"fitted on the train split of {', '.join(unit.sources)}",
        "classes": list(data.classes),
        "train_only_augmentation": {
            **recipe.train.augment.model_dump(mode="json"),
            "note": "applied to training batches only; NOT applied at evaluation or prediction",
        },
    }


def write_model(
    folder: FinalFolder,
    summary: RunSummary,
    recipe: Recipe,
    trial: TrialRecord,
    rule: str | None,
    seeds: list[int],
    preprocessing: dict[str, Any],
) -> None:
    """Write every seed's weights, the preprocessing and, last, arch.yaml (the folder is then finished);
    each member is rebuilt from its ArchConfig and loaded strictly first, so a folder that is finished
    always loads."""
    arch = trained_arch(trial, len(preprocessing["classes"]))
    records = {t.trial_id: t for t in folder.trials()}
    members, finals = [], {}
    for seed in seeds:
        uid = confirm_trial_id("final", seed)
        state = folder.final_state(uid)
        member = hardened_arch(arch, state.model)
        bare = member.backbone.model_copy(update={"weights": None})  # not backbone.weights: a download
        build_model(member.model_copy(update={"backbone": bare})).load_state_dict(state.model, strict=True)
        name = folder.weights_name(seed, len(seeds))
        folder.write_weights(name, state.model, {"trial": trial.trial_id, "seed": str(seed)})
        members.append({"seed": seed, "weights": name, "arch": member.to_dict()})
        record = records.get(uid)
        if record is not None:
            finals[uid] = {
                SOURCE_VAL_ACC: record.metrics.get(SOURCE_VAL_ACC),
                "test": record.test,
                "started_from": record.extra.get("init"),
            }
    folder.write_preprocessing(preprocessing)
    search = summary.recipe
    document = {
        "arch": members[0]["arch"].copy(),  # a copy: no YAML alias between `arch` and `members`
        "provenance": {
            "run": str(summary.folder.path),
            "recipe": search.name,
            "trial": trial.trial_id,
            "pick": rule,
            "config": trial.config,
            "selection": search.data.describe(),
            "search_metrics": {k: v for k, v in trial.metrics.items() if is_metric(k)},
            "search_test": trial.test,
            "trained_on": recipe.data.sources,
            "reported": recipe.data.test,
            "seeds": seeds,
            "ensemble": "mean of the members' softmax probabilities" if len(seeds) > 1 else None,
            "final": finals,
            "train": recipe.train.model_dump(mode="json"),
            "data": recipe.data.model_dump(mode="json"),
            "versions": next((r.versions for r in records.values() if r.versions), trial.versions),
        },
        "members": members,
    }
    folder.write_document(document)
    folder.drop_training_state()
