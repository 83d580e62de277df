"""`normsearch evaluate`: the finalized model's accuracy per domain (and per class) on a DomainBed-layout
folder (``--root``) or on the domains of a recipe (``--recipe``), as the tables `collect` prints.

Images are decoded at the model's input size through the same loader as training (data/folder.py) and
standardised with the model's own mean/std (never statistics of the evaluated data). A domain the model was
trained on, read from the same place, is measured on its test split only (the split training never saw);
any other domain on every image (``--root``) or on the images a run reports for it (``--recipe``). Each
domain's result is appended to the model folder's evaluations.jsonl as soon as it is measured; run the same
command again after an interruption and the domains already measured (same model, same files) are reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normsearch.data.domains import Domain, DomainSet
from normsearch.data.folder import load_folder
from normsearch.data.pipeline import Standardizer
from normsearch.data.spec import DataConfig, load_data
from normsearch.data.subset import cap_domain
from normsearch.deploy.model import load_model
from normsearch.errors import NormsearchError
from normsearch.norms.running import statistics_statement
from normsearch.recipe import load_recipe
from normsearch.results.collect import Cell, CollectedTable, Row
from normsearch.results.confirmed import stat
from normsearch.run.finalized import FinalFolder
from normsearch.train import evaluation_split, predicted_logits


@dataclass
class DomainResult:
    domain: str
    label: str  # the column label ("photo", "art (source: test split)")
    accuracy: float
    images: int
    per_class: dict[str, float] = field(default_factory=dict)
    reused: bool = False


@dataclass
class Evaluation:
    folder: FinalFolder
    source: str  # what was evaluated: the root folder or the recipe
    results: list[DomainResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # domains not measured (an interruption)
    policy: str = "running"  # the model's test-time statistics policy, under which it was measured


def _signature(domain: Domain, where: str) -> str:
    """What a domain's result depends on besides the model: its place and its exact pixels and labels."""
    digest = hashlib.sha256(where.encode())
    digest.update(domain.images.numpy().tobytes())
    digest.update(domain.labels.numpy().tobytes())
    return digest.hexdigest()[:20]


def _load_root(root: Path, names: list[str] | None, size: int) -> DomainSet:
    if not root.is_dir():
        raise NormsearchError(f"--root {root}: no such folder")
    if names is None:
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
    data, _ = load_folder(root, names, size)
    return data


def _load_recipe(recipe_path: Path, size: int) -> tuple[DomainSet, Any]:
    recipe, _ = load_recipe(recipe_path)
    config = DataConfig.model_validate({**recipe.data.model_dump(mode="json"), "size": size})
    data = load_data(config)
    order = [d for d in dict.fromkeys([*config.sources, *config.targets]) if d in data.domains]
    return DomainSet(data.classes, {d: data[d] for d in order}), config  # the recipe's order


def _images(domain: Domain, trained: bool, whole: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The images to measure a domain on, and the column label's note."""
    if trained:
        x, y = domain.split("test")
        return x, y, " (source: test split)"
    if whole or not domain.splits:
        return domain.images, domain.labels, ""
    x, y = evaluation_split(domain)
    return x, y, ""


def measure(
    model: torch.nn.Module,
    standardize: Standardizer,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    policy: str = "running",
):
    """Accuracy (%) over (x, y) and per class (classes absent from y are left out), under the model's
    test-time statistics `policy`, measured as training measured it (`normsearch.train.predicted_logits`)."""
    predicted = predicted_logits(model, x, standardize, policy=policy).argmax(1)
    right = predicted == y
    per_class = {
        name: 100.0 * float(right[y == k].float().mean())
        for k, name in enumerate(classes)
        if bool((y == k).any())
    }
    return 100.0 * float(right.float().mean()), per_class


def _trained_split(folder: FinalFolder, data: DomainSet, where: Path | None) -> set[str]:
    """The evaluated domains the model was trained on, given their test split (same folder as training's,
    capped by training's `max_per_domain` and split with training's fractions and seed)."""
    trained = DataConfig.model_validate(folder.document()["provenance"]["data"])
    names = {n for n in trained.sources if n in data.domains}
    if where is not None:  # a folder: the same folder as training's, split the way training split it
        if trained.dataset != "folder" or Path(trained.root or "").resolve() != where.resolve():
            return set()
        fractions = {
            "train": 1 - trained.val_fraction - trained.test_fraction,
            "val": trained.val_fraction,
            "test": trained.test_fraction,
        }
        for name in names:
            if trained.max_per_domain is not None:  # training capped the domain before splitting it
                data.domains[name] = cap_domain(data[name], trained.max_per_domain, trained.seed)
            data[name].split_by_fractions(fractions, trained.seed)
    return names


def check_inputs(root: str | Path | None, recipe: str | Path | None, domains: list[str] | None) -> None:
    """The checks that need no image decoded: one of --root/--recipe, and every --domain among its domains."""
    if (root is None) == (recipe is None):
        raise NormsearchError("evaluate: give exactly one of --root FOLDER or --recipe RECIPE")
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise NormsearchError(f"--root {root}: no such folder")
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
    else:
        found = load_recipe(Path(recipe or ""))[0].data.domains() if recipe else []
    unknown = [d for d in domains or [] if d not in found]
    if unknown:
        raise NormsearchError(
            f"--domain {unknown[0]}: no such domain in {root or recipe}; domains: "
            f"{', '.join(found) or 'none'}"
        )


def evaluate(
    model_dir: str | Path,
    root: str | Path | None = None,
    recipe: str | Path | None = None,
    domains: list[str] | None = None,
    on_domain: Callable[[DomainResult], None] | None = None,
) -> Evaluation:
    """Measure the model of `model_dir` on the domains of `root` or `recipe` (module docstring); each
    domain's result is saved in the model folder before it is returned."""
    check_inputs(root, recipe, domains)
    folder = FinalFolder.open(model_dir)
    model, preprocess = load_model(model_dir)
    if root is not None:
        where, data = Path(root), _load_root(Path(root), domains, preprocess.size)
        source = str(where.resolve())
    else:
        where = None
        data, _ = _load_recipe(Path(recipe or ""), preprocess.size)
        source = str(Path(recipe or "").resolve())
    if data.classes != preprocess.classes:
        raise NormsearchError(
            f"{source}: classes {data.classes} differ from the model's {preprocess.classes} (index order)"
        )
    trained = _trained_split(folder, data, where)
    model_id = folder.weights_id()
    done = {r["key"]: r for r in folder.evaluations() if "key" in r}
    outcome = Evaluation(folder, source, pending=list(domains or data.domains), policy=preprocess.policy)
    for name in list(outcome.pending):
        domain = data[name]
        x, y, note = _images(domain, name in trained, whole=root is not None)
        key = f"{model_id}:{_signature(Domain(name, x, y), source)}"
        if key in done:
            r = done[key]
            result = DomainResult(name, r["label"], r["accuracy"], r["images"], r["per_class"], reused=True)
        else:
            accuracy, per_class = measure(
                model, preprocess.standardize, x, y, preprocess.classes, preprocess.policy
            )
            result = DomainResult(name, name + note, accuracy, len(y), per_class)
            folder.append_evaluation(
                {
                    "key": key,
                    "source": source,
                    "domain": name,
                    "label": result.label,
                    "accuracy": accuracy,
                    "images": len(y),
                    "per_class": per_class,
                    "policy": preprocess.policy,
                }
            )
        outcome.results.append(result)
        outcome.pending.remove(name)
        if on_domain is not None:
            on_domain(result)
    return outcome


def evaluation_tables(evaluation: Evaluation, per_class: bool) -> list[Any]:
    """The evaluation as `collect`'s tables (results/collect.py): one row for the model, one column per
    domain and their average; with `per_class`, a second table with one row per class."""
    document = evaluation.folder.document()
    provenance = document.get("provenance", {})
    title = f"{evaluation.folder.path.name}: evaluate"
    statement = (
        f"finalized trial {provenance.get('trial')} of {provenance.get('run')}, trained on "
        f"{', '.join(provenance.get('trained_on', []))}; evaluated on {evaluation.source}"
    )
    legend = (
        "accuracy (%) of the finalized model (one number: the model load_model returns); "
        + statistics_statement([evaluation.policy])
    )
    results = evaluation.results
    columns = [r.label for r in results] + ["Avg"]
    keys = [r.domain for r in results] + ["avg"]
    seeds = len(provenance.get("seeds", [1]))
    average = sum(r.accuracy for r in results) / max(len(results), 1)

    def row(config: str, values: dict[str, float | None]) -> Row:
        cells = {
            k: Cell(None, "no images of this class") if v is None else Cell(stat([v]))
            for k, v in values.items()
        }
        return Row(evaluation.folder.path.name, str(provenance.get("trial")), config, seeds, cells)

    main = CollectedTable(title, statement, columns, keys, legend=legend)
    main.rows.append(row("model", {**{r.domain: r.accuracy for r in results}, "avg": average}))
    tables = [main]
    if per_class:
        by_class = CollectedTable(f"{title} per class", statement, columns, keys, legend=legend)
        for name in evaluation.folder.preprocessing()["classes"]:
            values = {r.domain: r.per_class.get(name) for r in results}
            present = [v for v in values.values() if v is not None]
            values["avg"] = sum(present) / len(present) if present else None
            by_class.rows.append(row(f"class {name}", values))
        tables.append(by_class)
    return tables
