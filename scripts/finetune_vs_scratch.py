"""Pretrain once and fine-tune each candidate, against training each candidate from scratch.

For every seed: pretrain the recipe's base architecture once on the sources (the recipe's own budget), then
for every configuration of the recipe's (grid) search space train it from scratch (the recipe's budget) and,
right after, fine-tune it from the pretrained base with weight inheritance (`--ft-epochs` at `--ft-lr`); the
two are timed back to back so that a shared machine's load affects both alike. Reported:

- select-target accuracy (the search's objective) and source val accuracy per configuration, both regimes,
  mean over seeds;
- Spearman's rho between the two regimes' select-target accuracies over the configurations, per seed and
  on the seed means (average ranks for ties);
- compute per candidate: epochs and wall seconds, with the pretraining amortised over the grid, and the
  first from-scratch epoch whose select-target accuracy reaches the fine-tuned one's;
- with `--sn`: fine-tuning an all-slots Switchable Norm plan with its ratios started equal or toward BN
  (`train.sn_init`), which README reports.

    nice -n 10 python scripts/finetune_vs_scratch.py --recipe recipes/quickstart.yaml --seeds 3 --threads 1 \
        --ft-epochs 3 --ft-lr 0.05 --sn --out docs/finetune_vs_scratch.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from normsearch.arch import ArchConfig
from normsearch.data.spec import load_data
from normsearch.recipe import load_recipe
from normsearch.train import TrainConfig, TrainResult, pretrain, train_from_recipe


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    norm = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / norm if norm else float("nan")


def label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items()) or "base"


def summary(result: TrainResult, seconds: float) -> dict[str, Any]:
    return {
        "select": result.final["target_select_acc"],
        "source": result.final["source_val_acc"],
        "test_mean": result.test.get("test_mean"),
        "epochs": len(result.history),
        "seconds": seconds,
        "select_per_epoch": [h["target_select_acc"] for h in result.history],
        "init": result.extra["init"],
    }


def timed(fn, *args, **kwargs) -> tuple[TrainResult, float]:
    tic = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--ft-lr", type=float, default=0.05)
    parser.add_argument("--sn", action="store_true", help="Also compare train.sn_init equal vs bn.")
    parser.add_argument("--out", type=Path, default=None, help="Write every number as JSON.")
    args = parser.parse_args()

    recipe, space = load_recipe(args.recipe)
    data = load_data(recipe.data)
    assignments = space.assignments()
    if assignments is None:
        raise SystemExit(f"{args.recipe}: the space is not a finite grid")
    configs = {label(values): space.to_arch(recipe.model, values) for values in assignments}
    scratch_recipe = recipe
    tune_config: TrainConfig = recipe.train.model_copy(
        update={
            "init": "pretrain",
            "epochs": args.ft_epochs,
            "lr": args.ft_lr,
            "pretrain_epochs": recipe.train.epochs,
            "pretrain_lr": recipe.train.lr,
        }
    )
    tune = recipe.model_copy(update={"train": tune_config})
    out: dict[str, Any] = {
        "recipe": args.recipe,
        "ft_epochs": args.ft_epochs,
        "ft_lr": args.ft_lr,
        "seeds": {},
    }
    for k in range(args.seeds):
        seed = recipe.seed + k
        base, base_seconds = timed(pretrain, tune, seed=seed, data=data, threads=args.threads)
        print(f"seed {seed}: pretrained in {base_seconds:.0f} s, source {base.final['source_val_acc']:.1f}")
        runs: dict[str, Any] = {"pretrain": summary(base, base_seconds), "configs": {}}
        for name, arch in configs.items():
            unit = recipe.data.units()[0]
            scratch, scratch_s = timed(
                train_from_recipe, scratch_recipe, arch, unit, seed=seed, data=data, threads=args.threads
            )
            tuned, tuned_s = timed(
                train_from_recipe,
                tune,
                arch,
                unit,
                seed=seed,
                data=data,
                threads=args.threads,
                init=base.checkpoint,
            )
            runs["configs"][name] = {
                "scratch": summary(scratch, scratch_s),
                "finetune": summary(tuned, tuned_s),
            }
            print(
                f"  {name:28s} scratch {scratch.final['target_select_acc']:5.1f} ({scratch_s:4.0f} s)  "
                f"fine-tuned {tuned.final['target_select_acc']:5.1f} ({tuned_s:4.0f} s)",
                flush=True,
            )
        if args.sn:
            sn_arch = ArchConfig.from_dict({**recipe.model.to_dict(), "norm": {"switchable": {}}})
            runs["sn_init"] = {}
            for sn_init in ("equal", "bn"):
                config = tune_config.model_copy(update={"sn_init": sn_init})
                result, seconds = timed(
                    train_from_recipe,
                    recipe.model_copy(update={"train": config}),
                    sn_arch,
                    recipe.data.units()[0],
                    seed=seed,
                    data=data,
                    threads=args.threads,
                    init=base.checkpoint,
                )
                runs["sn_init"][sn_init] = summary(result, seconds)
                print(f"  sn_init={sn_init}: select {result.final['target_select_acc']:.1f}", flush=True)
        out["seeds"][seed] = runs
    report(out)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def report(out: dict[str, Any]) -> None:
    """Print the tables README quotes."""
    seeds = list(out["seeds"].values())
    names = list(seeds[0]["configs"])

    def per(name: str, regime: str, key: str) -> list[float]:
        return [s["configs"][name][regime][key] for s in seeds]

    print(f"\nmean over {len(seeds)} seeds (select-target / source val accuracy, %):")
    for name in names:
        scratch = f"{mean(per(name, 'scratch', 'select')):5.1f} / {mean(per(name, 'scratch', 'source')):5.1f}"
        tuned = f"{mean(per(name, 'finetune', 'select')):5.1f} / {mean(per(name, 'finetune', 'source')):5.1f}"
        print(f"  {name:28s} scratch {scratch}   fine-tuned {tuned}")
    rhos = []
    for seed, s in out["seeds"].items():
        a = [s["configs"][n]["scratch"]["select"] for n in names]
        b = [s["configs"][n]["finetune"]["select"] for n in names]
        rhos.append(spearman(a, b))
        print(f"seed {seed}: Spearman rho (select-target, scratch vs fine-tuned) = {rhos[-1]:.2f}")
    a = [mean(per(n, "scratch", "select")) for n in names]
    b = [mean(per(n, "finetune", "select")) for n in names]
    print(f"on the seed means: rho = {spearman(a, b):.2f}")
    scratch_s = mean([mean(per(n, "scratch", "seconds")) for n in names])
    tuned_s = mean([mean(per(n, "finetune", "seconds")) for n in names])
    pre_s = mean([s["pretrain"]["seconds"] for s in seeds])
    scratch_epochs = seeds[0]["configs"][names[0]]["scratch"]["epochs"]
    print(
        f"per candidate: scratch {scratch_s:.1f} s ({scratch_epochs} epochs),"
        f" fine-tune {tuned_s:.1f} s ({out['ft_epochs']} epochs) + pretraining {pre_s:.1f} s once "
        f"= {tuned_s + pre_s / len(names):.1f} s per candidate over this grid of {len(names)}"
    )
    for name in names:
        reach = []
        for s in seeds:
            target = s["configs"][name]["finetune"]["select"]
            curve = s["configs"][name]["scratch"]["select_per_epoch"]
            reach.append(next((i + 1 for i, v in enumerate(curve) if v >= target), None))
        print(f"  {name:28s} scratch epoch reaching the fine-tuned select accuracy, per seed: {reach}")
    if "sn_init" in seeds[0]:
        for sn_init in ("equal", "bn"):
            sel = [s["sn_init"][sn_init]["select"] for s in seeds]
            src = [s["sn_init"][sn_init]["source"] for s in seeds]
            sel_text, src_text = (", ".join(f"{v:.1f}" for v in values) for values in (sel, src))
            print(
                f"SN fine-tuned, ratios {sn_init}: select {mean(sel):.1f} ({sel_text}),"
                f" source {mean(src):.1f} ({src_text})"
            )


if __name__ == "__main__":
    main()
