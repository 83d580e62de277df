"""Measure a paper finding on the built-in benchmark: every configuration of a reproduce recipe's (finite)
space, trained over several model seeds with the project's own training code, one thread per run.

    python scripts/reproduce.py recipes/reproduce_ibn_ratio.yaml --seeds 3 [--jobs 2] [--out DIR]

Writes `<out>/<recipe name>.json` (every run's final metrics and test accuracies) and prints a Markdown
table: mean ± standard error over seeds of source test accuracy, the headline target mean and its
photometric and texture+noise groups, and the select-target val accuracy. Runs already in the JSON file
(same configuration, seed and budget) are not trained again, so an interrupted measurement continues.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
from pathlib import Path
from typing import Any

COLUMNS = (
    ("source", "source"),
    ("headline", "headline"),
    ("photometric", "photometric"),
    ("texture_noise", "texture+noise"),
    ("select", "select (val)"),
)


def _job(args: tuple[str, dict[str, Any], int]) -> dict[str, Any]:
    recipe_path, values, seed = args
    import torch

    from normsearch.recipe import load_recipe
    from normsearch.train import train_from_recipe

    torch.set_num_threads(1)
    recipe, space = load_recipe(recipe_path)
    arch = space.to_arch(recipe.model, values)
    result = train_from_recipe(recipe, arch, seed=seed, threads=1)
    return {
        "values": values,
        "arch": arch.to_dict(),
        "seed": seed,
        "final": {k: v for k, v in result.final.items() if isinstance(v, int | float)},
        "test": result.test,
        "groups": result.groups,
        "converged": result.converged,
        "seconds": result.seconds,
    }


def _key(values: dict[str, Any], seed: int) -> str:
    return json.dumps([values, seed], sort_keys=True)


def _arch_key(arch: dict[str, Any], seed: int, budget: dict[str, Any]) -> str:
    return json.dumps([arch, seed, budget], sort_keys=True)


def _measured_elsewhere(out: Path, budget: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Runs of other reproduce recipes in `out` at the same budget, by (architecture, seed): the same
    network trained the same way is not trained again (the baseline appears in several tables)."""
    found = {}
    for path in out.glob("*.json"):
        stored = json.loads(path.read_text())
        if stored.get("budget") != budget:
            continue
        for run in stored.get("runs", []):
            if "arch" in run:
                found[_arch_key(run["arch"], run["seed"], budget)] = run
    return found


def _stats(values: list[float]) -> str:
    mean = sum(values) / len(values)
    se = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        if len(values) > 1
        else 0.0
    )
    return f"{mean:.1f} ± {se:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    args = parser.parse_args()

    from normsearch.recipe import load_recipe

    recipe, space = load_recipe(args.recipe)
    assignments = space.assignments()
    if assignments is None:
        raise SystemExit(f"{args.recipe}: the space must be finite")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{recipe.name}.json"
    budget = {"data": recipe.data.model_dump(mode="json"), "train": recipe.train.model_dump(mode="json")}
    stored = json.loads(path.read_text()) if path.is_file() else {}
    runs = (
        {_key(r["values"], r["seed"]): r for r in stored.get("runs", [])}
        if stored.get("budget") == budget
        else {}
    )
    elsewhere = _measured_elsewhere(args.out, budget)
    todo = []
    for values in assignments:
        arch = space.to_arch(recipe.model, values).to_dict()
        for k in range(args.seeds):
            seed = recipe.seed + k
            if _key(values, seed) in runs:
                continue
            known = elsewhere.get(_arch_key(arch, seed, budget))
            if known is not None:
                runs[_key(values, seed)] = {**known, "values": values}
                continue
            todo.append((str(args.recipe), values, seed))

    def save() -> None:
        path.write_text(
            json.dumps({"recipe": str(args.recipe), "budget": budget, "runs": list(runs.values())}, indent=1)
        )

    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for done, run in enumerate(pool.imap_unordered(_job, todo), start=1):
            runs[_key(run["values"], run["seed"])] = run
            save()
            print(
                f"[{done}/{len(todo)}] {run['values']} seed {run['seed']}: "
                f"source {run['test']['source']:.1f}, "
                f"headline {run['groups'].get('headline', float('nan')):.1f}",
                flush=True,
            )
    save()
    print(f"\n{recipe.name}: {recipe.data.describe()}; {args.seeds} seeds, mean ± s.e.\n")
    print("| configuration | " + " | ".join(label for _, label in COLUMNS) + " | not converged |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for values in assignments:
        mine = [r for r in runs.values() if r["values"] == values]
        cells = []
        for key, _ in COLUMNS:
            if key == "source":
                got = [r["test"]["source"] for r in mine]
            elif key == "select":
                got = [r["final"]["target_select_acc"] for r in mine if "target_select_acc" in r["final"]]
            else:
                got = [r["groups"][key] for r in mine if key in r["groups"]]
            cells.append(_stats(got) if got else "X")
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or "(base)"
        flagged = sum(not r["converged"] for r in mine)
        print(f"| {label} | " + " | ".join(cells) + f" | {flagged}/{len(mine)} |")


if __name__ == "__main__":
    main()
