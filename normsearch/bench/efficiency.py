"""`normsearch bench efficiency`: how much compute each search method needs to find the Pareto front.

Tabulate once, replay many times (the cheap way HPO methods are compared: HPOBench's tabular benchmarks,
Eggensperger et al. 2021; Syne Tune's simulated backend, Salinas et al. 2022). `tabulate` trains every
configuration of a finite space over a few model seeds at a small budget and stores each run's per-epoch
learning curve (every objective of the recipe) in one JSON file, plus one soft Switchable-Norm supernet
per seed (its curve and the IN/LN/BN share each slot learned) for the SN warm start. `replay`
(normsearch.bench.replay) then runs each search method against the table instead of training, and
normsearch.bench.efficiency_report turns the trajectories into hypervolume-against-compute bands, a CSV,
a PNG and a Markdown table; `run_bench` does all of it for one recipe.

The table is resumable: a row already in the file (same configuration, seed and budget) is not trained
again, and the file is rewritten atomically after every row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normsearch.arch import ArchConfig
from normsearch.bench.efficiency_report import Summary, markdown, summarise, write_csv, write_png
from normsearch.bench.replay import METHODS, WARM, Table, distinct_architectures, replay
from normsearch.data.spec import load_data
from normsearch.errors import NormsearchError
from normsearch.models import build_model
from normsearch.recipe import load_recipe
from normsearch.run.files import atomic_write_text
from normsearch.run.records import config_key
from normsearch.search.warm_start import slot_ratios, supernet_arch
from normsearch.train import train_from_recipe

TABLE_FORMAT = "normsearch-efficiency-table/1"


def _row_key(values: dict[str, Any], seed: int) -> str:
    return json.dumps([values, seed], sort_keys=True)


def _budget(recipe: Any) -> dict[str, Any]:
    return {
        "data": recipe.data.model_dump(mode="json"),
        "train": recipe.train.model_dump(mode="json"),
        "model": recipe.model.to_dict(),
    }


def _curve(history: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, float]]:
    return [{m: float(h[m]) for m in metrics} for h in history]


def tabulate(
    recipe_path: str | Path,
    out_file: str | Path,
    seeds: int = 2,
    supernet: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train every configuration of the recipe's (finite) space for `seeds` model seeds (recipe seed, +1,
    ...) at the recipe's `train` budget, one thread, and store every run's per-epoch curve of the recipe's
    objectives (and its scheduler metric) in `out_file`; with `supernet`, also one soft-SN supernet of the
    base architecture per seed (normsearch.search.warm_start) with its learned slot ratios. Rows already
    in the file at the same budget are kept, not retrained; the file is rewritten atomically after every
    row, so an interrupted tabulation continues. `progress` receives one line per trained row."""
    recipe, space = load_recipe(recipe_path)
    assignments = space.assignments()
    if assignments is None:
        raise NormsearchError(
            f"{recipe_path}: search.space must be finite to be tabulated (every param with choices or a step)"
        )
    out_file = Path(out_file)
    budget = _budget(recipe)
    metrics = list(dict.fromkeys([*recipe.search.objectives, recipe.search.scheduler.metric]))
    stored: dict[str, Any] = {}
    if out_file.is_file():
        stored = json.loads(out_file.read_text())
        if stored.get("format") != TABLE_FORMAT or stored.get("budget") != budget:
            raise NormsearchError(
                f"{out_file}: holds a table of another budget or format; give another --table file or "
                "remove it"
            )
    rows = {_row_key(r["values"], r["seed"]): r for r in stored.get("rows", [])}
    supernets = {int(s): r for s, r in stored.get("supernet", {}).items()}
    seed_list = [recipe.seed + k for k in range(seeds)]

    def save() -> None:
        document = {
            "format": TABLE_FORMAT,
            "name": recipe.name,
            "recipe": str(recipe_path),
            "budget": budget,
            "objectives": dict(recipe.search.objectives),
            "metrics": metrics,
            "space": recipe.search.space if isinstance(recipe.search.space, dict) else None,
            "space_name": recipe.search.space if isinstance(recipe.search.space, str) else None,
            "configs": assignments,
            "seeds": seed_list,
            "rows": list(rows.values()),
            "supernet": {str(s): r for s, r in supernets.items()},
        }
        atomic_write_text(out_file, json.dumps(document, indent=None, separators=(",", ":")) + "\n")

    todo = [(v, s) for s in seed_list for v in assignments if _row_key(v, s) not in rows]
    sn_todo = [s for s in seed_list if supernet and s not in supernets]
    total = len(todo) + len(sn_todo)
    data = load_data(recipe.data) if total else None
    previous = torch.get_num_threads()
    done = 0
    try:
        for values, seed in todo:
            arch = space.to_arch(recipe.model, values)
            tic = time.perf_counter()
            result = train_from_recipe(recipe, arch, seed=seed, data=data, threads=1)
            rows[_row_key(values, seed)] = {
                "values": values,
                "seed": seed,
                "curve": _curve(result.history, metrics),
                "seconds": round(time.perf_counter() - tic, 2),
            }
            save()
            done += 1
            if progress is not None:
                last = rows[_row_key(values, seed)]["curve"][-1]
                shown = ", ".join(f"{m} {v:.1f}" for m, v in last.items())
                progress(
                    f"[{done}/{total}] {values} seed {seed}: {shown} ({time.perf_counter() - tic:.1f} s)"
                )
        for seed in sn_todo:
            arch = supernet_arch(recipe.model)
            tic = time.perf_counter()
            unit = recipe.data.units()[0]
            result = train_from_recipe(recipe, arch, unit, seed=seed, data=data, threads=1, keep_weights=True)
            trained = ArchConfig.from_dict(result.checkpoint.arch)  # num_classes set to the data's
            ratios = slot_ratios(build_model(trained, result.checkpoint), trained)
            supernets[seed] = {
                "curve": _curve(result.history, metrics),
                "ratios": {slot: list(r) for slot, r in ratios.items()},
                "seconds": round(time.perf_counter() - tic, 2),
            }
            save()
            done += 1
            if progress is not None:
                progress(f"[{done}/{total}] SN supernet seed {seed} ({time.perf_counter() - tic:.1f} s)")
    finally:
        torch.set_num_threads(previous)
    if not total and not out_file.is_file():
        save()
    return out_file


def load_table(path: str | Path) -> Table:
    """Read a table `tabulate` wrote (every configuration must have a curve for every seed)."""
    path = Path(path)
    if not path.is_file():
        raise NormsearchError(
            f"{path}: no such table file; write one with `normsearch bench efficiency RECIPE`"
        )
    raw = json.loads(path.read_text())
    if raw.get("format") != TABLE_FORMAT:
        raise NormsearchError(f"{path}: not an efficiency table (format {raw.get('format')!r})")
    return table_from_dict(raw, str(path))


def table_from_dict(raw: dict[str, Any], where: str = "table") -> Table:
    """A `Table` from its JSON form (also how tests build hand-made tables): `objectives`, `configs`
    (values dicts), `seeds`, `rows` ({values, seed, curve: [{metric: value} per epoch]}), optionally
    `supernet` ({seed: {curve, ratios}}), `space` and `budget.model`."""
    objectives = dict(raw["objectives"])
    metrics = list(dict.fromkeys([*objectives, *raw.get("metrics", [])]))
    configs = {config_key(v): v for v in raw["configs"]}
    seeds = [int(s) for s in raw["seeds"]]
    curves: dict[str, dict[int, list[tuple[float, ...]]]] = {k: {} for k in configs}
    lengths = set()
    for row in raw["rows"]:
        key = config_key(row["values"])
        if key not in curves:
            raise NormsearchError(f"{where}: a row's configuration {row['values']} is not in configs")
        curves[key][int(row["seed"])] = [tuple(float(e[m]) for m in metrics) for e in row["curve"]]
        lengths.add(len(row["curve"]))
    missing = [(configs[k], s) for k in configs for s in seeds if s not in curves[k]]
    if missing:
        raise NormsearchError(
            f"{where}: {len(missing)} run(s) not tabulated, e.g. {missing[0][0]} seed {missing[0][1]}; "
            "finish the tabulation first"
        )
    if len(lengths) != 1:
        raise NormsearchError(f"{where}: curves of different lengths {sorted(lengths)}")
    supernet = {
        int(s): {
            "curve": [tuple(float(e[m]) for m in metrics) for e in r["curve"]],
            "ratios": {slot: tuple(v) for slot, v in r["ratios"].items()},
        }
        for s, r in (raw.get("supernet") or {}).items()
    }
    space = raw.get("space")
    if space is None and raw.get("space_name"):
        space = raw["space_name"]
    return Table(
        name=str(raw.get("name", where)),
        objectives=objectives,
        metrics=metrics,
        epochs=lengths.pop(),
        seeds=seeds,
        configs=configs,
        curves=curves,
        supernet=supernet,
        space=space,
        model=(raw.get("budget") or {}).get("model"),
    )


@dataclass(frozen=True)
class BenchResult:
    """What `run_bench` produced: the summary and the files it wrote."""

    summary: Summary
    csv: Path
    png: Path
    markdown_file: Path


def run_bench(
    recipe_path: str | Path,
    table_path: str | Path,
    out_dir: str | Path,
    search_seeds: int = 20,
    max_trials: int | None = None,
    methods: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Replay every method (default: all of normsearch.bench.replay.METHODS; sn_warm only when the table
    has supernet runs) over `search_seeds` search seeds on the table at `table_path` and write
    `<name>.csv`, `<name>.png` and `<name>.md` into `out_dir`. `max_trials` defaults to the recipe's
    `search.num_samples`."""
    recipe, space = load_recipe(recipe_path)
    table = load_table(table_path)
    if methods is None:
        methods = [m for m in METHODS if m != WARM or table.supernet]
    trials = max_trials or recipe.search.num_samples
    trajectories = []
    for method in methods:
        if progress is not None:
            progress(f"replaying {method} over {search_seeds} search seeds")
        for seed in range(search_seeds):
            trajectories.append(replay(table, space, recipe, method, seed, max_trials=trials))
    summary = summarise(trajectories, table, distinct=distinct_architectures(table, space, recipe.model))
    out_dir = Path(out_dir)
    return BenchResult(
        summary,
        write_csv(summary, out_dir / f"{table.name}.csv"),
        write_png(summary, out_dir / f"{table.name}.png"),
        atomic_write_text(out_dir / f"{table.name}.md", markdown(summary)),
    )
