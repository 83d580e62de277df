"""`normsearch bench efficiency`: how much compute each search method needs to find the Pareto front.

Tabulate once, replay many times (the cheap way HPO methods are compared: HPOBench's tabular benchmarks,
Eggensperger et al. 2021; Syne Tune's simulated backend, Salinas et al. 2022). `tabulate` trains every
configuration of a finite space over a few model seeds at a small budget and stores each run's per-epoch
learning curve (every objective of the recipe) in one JSON file, plus one soft Switchable-Norm supernet
per seed (its curve and the IN/LN/BN share each slot learned) for the SN warm start. `replay`
(normsearch.bench.replay) then runs each search method against the table instead of training, and
`summarise` turns the trajectories into hypervolume-against-compute bands, a CSV, a PNG and a Markdown
table.

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

from normsearch.errors import NormsearchError
from normsearch.files import atomic_write_bytes, atomic_write_text
from normsearch.run.records import config_key

TABLE_FORMAT = "normsearch-efficiency-table/1"


@dataclass(frozen=True)
class Table:
    """A tabulated space. `curves[key][seed]` is one run's learning curve: per epoch, the values of
    `metrics` (the objectives first, in `objectives` order, then e.g. an ASHA metric that is not one).
    `configs[key]` are the sampled values of configuration `key` (`config_key(values)`), in the space's
    enumeration order. `supernet[seed]` (may be empty) holds the
    SN supernet's `curve` (same layout) and its slot `ratios`."""

    name: str
    objectives: dict[str, str]
    metrics: list[str]
    epochs: int
    seeds: list[int]
    configs: dict[str, dict[str, Any]]
    curves: dict[str, dict[int, list[tuple[float, ...]]]]
    supernet: dict[int, dict[str, Any]]
    space: str | dict[str, Any] | None = None
    model: dict[str, Any] | None = None


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
    import torch

    from normsearch.data.spec import load_data
    from normsearch.recipe import load_recipe
    from normsearch.train import train_candidate, train_units

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
            result = train_units(arch, data, recipe.data, recipe.train, seed=seed, threads=1)
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
            from normsearch.arch import ArchConfig
            from normsearch.models import build_model
            from normsearch.search.warm_start import slot_ratios, supernet_arch

            arch = supernet_arch(recipe.model)
            tic = time.perf_counter()
            result = train_candidate(
                arch, data, recipe.data, recipe.train, seed=seed, threads=1, keep_weights=True
            )
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
class MethodSummary:
    """One method over the search seeds: the median and quartiles, at every epoch of the common grid
    (0 .. the longest replay), of the hypervolume as a percentage of the full grid's hypervolume at the
    same table seed (each replay runs in one table seed's world, so 100 is "found the whole front"); and
    the compute figures the targets read."""

    method: str
    median: list[float]
    low: list[float]  # 25th percentile
    high: list[float]  # 75th percentile
    final_median: float
    epochs_to_grid: int | None  # first epoch at which the median is within `tolerance` of the grid's HV
    median_epochs: float  # median total compute of one replay


@dataclass(frozen=True)
class Summary:
    """Every method on one table, and the figures the bench's targets name."""

    table: str
    grid_epochs: int
    grid_hypervolume: float  # absolute, averaged over table seeds (the curves are % of each seed's own)
    tolerance: float
    search_seeds: int
    methods: dict[str, MethodSummary]
    best: str | None  # reaches the grid's HV (within tolerance) with the least compute; ties: less spent
    warm_epochs: int | None  # SN warm start: compute to reach NSGA-II+MO-ASHA's final median HV
    moasha_epochs: int | None  # NSGA-II+MO-ASHA: compute to reach its own final median HV

    def fraction(self, epochs: int | None) -> float | None:
        """`epochs` as a fraction of the full grid's compute."""
        return None if epochs is None else epochs / self.grid_epochs


def _step_values(points: list[tuple[int, float]], horizon: int) -> list[float]:
    """A trajectory as hypervolume at every epoch 0..horizon (the last value before it; held after the
    search ended)."""
    out, value, i = [], 0.0, 0
    for epoch in range(horizon + 1):
        while i < len(points) and points[i][0] <= epoch:
            value = points[i][1]
            i += 1
        out.append(value)
    return out


def _first_at(curve: list[float], level: float) -> int | None:
    return next((e for e, v in enumerate(curve) if v >= level), None)


def summarise(
    trajectories: list[Any], table: Table, tolerance: float = 0.01, distinct: int | None = None
) -> Summary:
    """Median and quartile bands over search seeds, on a common epoch grid, of each replay's hypervolume
    as a percentage of the full grid's at the replay's table seed, per method; for each the compute at
    which its median first reaches 100 x (1 - tolerance); and for the SN warm start the compute to reach
    NSGA-II+MO-ASHA's final median, next to the compute NSGA-II+MO-ASHA itself needs to reach it. The
    grid's compute is `distinct` networks (default: every configuration) x the table's epochs."""
    import numpy as np

    from normsearch.bench.replay import WARM, grid_hypervolume, grid_hypervolumes

    grid_hv = grid_hypervolume(table)
    per_seed = grid_hypervolumes(table)
    horizon = max(t.epochs for t in trajectories)
    by_method: dict[str, list[Any]] = {}
    for t in trajectories:
        by_method.setdefault(t.method, []).append(t)
    methods = {}
    for method, runs in by_method.items():
        values = np.array([_step_values(t.points, horizon) for t in runs])
        values = 100.0 * values / np.array([[per_seed[t.table_seed]] for t in runs])
        median = np.median(values, axis=0).tolist()
        methods[method] = MethodSummary(
            method=method,
            median=median,
            low=np.percentile(values, 25, axis=0).tolist(),
            high=np.percentile(values, 75, axis=0).tolist(),
            final_median=median[-1],
            epochs_to_grid=_first_at(median, 100.0 * (1 - tolerance)),
            median_epochs=float(np.median([t.epochs for t in runs])),
        )
    reached = [m for m in methods.values() if m.epochs_to_grid is not None]
    # Ties on the compute to reach the grid go to the method whose whole search spent less.
    best = (
        min(reached, key=lambda m: (m.epochs_to_grid, m.median_epochs, m.method)).method if reached else None
    )
    warm_epochs = moasha_epochs = None
    reference = methods.get("nsga2+moasha")
    if reference is not None:
        moasha_epochs = _first_at(reference.median, reference.final_median)
        if WARM in methods:
            warm_epochs = _first_at(methods[WARM].median, reference.final_median)
    return Summary(
        table=table.name,
        grid_epochs=(len(table.configs) if distinct is None else distinct) * table.epochs,
        grid_hypervolume=grid_hv,
        tolerance=tolerance,
        search_seeds=len({t.search_seed for t in trajectories}),
        methods=methods,
        best=best,
        warm_epochs=warm_epochs,
        moasha_epochs=moasha_epochs,
    )


def write_csv(summary: Summary, path: str | Path) -> Path:
    """One row per (method, epoch): the median and quartiles over search seeds of the hypervolume, in %
    of the full grid's at the same table seed."""
    lines = ["method,epochs,hv_pct_median,hv_pct_q25,hv_pct_q75"]
    for m in summary.methods.values():
        for epoch, (med, low, high) in enumerate(zip(m.median, m.low, m.high, strict=True)):
            lines.append(f"{m.method},{epoch},{med:.4f},{low:.4f},{high:.4f}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_png(summary: Summary, path: str | Path) -> Path:
    """Hypervolume against cumulative trial-epochs, median line and interquartile band per method
    (colour: algorithm, line style: scheduler), in % of the full grid's hypervolume, with 100 % and 99 %
    marked and 1/3 of the grid's compute."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"random": "tab:gray", "grid": "tab:brown", "tpe": "tab:blue", "nsga2": "tab:green"}
    styles = {"none": "-", "asha": "--", "moasha": ":"}
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for m in summary.methods.values():
        algorithm, _, scheduler = m.method.partition("+")
        colour = colours.get(algorithm, "tab:red")
        style = styles.get(scheduler, "-")
        epochs = range(len(m.median))
        ax.plot(
            epochs, m.median, style, color=colour, lw=2.2 if m.method == "sn_warm" else 1.4, label=m.method
        )
        ax.fill_between(epochs, m.low, m.high, color=colour, alpha=0.08)
    ax.axhline(100.0, color="black", lw=0.8, label="full grid")
    ax.axhline(100.0 * (1 - summary.tolerance), color="black", lw=0.8, ls="--", label="full grid −1 %")
    ax.axvline(summary.grid_epochs / 3, color="black", lw=0.6, ls="-.", label="1/3 of the grid's compute")
    ax.set_xlabel("cumulative trial-epochs")
    ax.set_ylabel("hypervolume, % of the full grid's (same table seed)")
    ax.set_title(
        f"{summary.table}: median and quartiles over {summary.search_seeds} search seeds", fontsize=10
    )
    ax.set_ylim(80, 101)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: float | None, digits: int = 2) -> str:
    return "not reached" if value is None else f"{value:.{digits}f}"


def markdown(summary: Summary) -> str:
    """The bench's table: per method, the final median hypervolume (as % of the grid's), the compute at
    which its median reaches the grid's hypervolume within the tolerance (epochs and fraction of the
    grid's compute), and the median compute one replay spent; then the two target lines."""
    grid = summary.grid_hypervolume
    lines = [
        f"**{summary.table}**: full grid {summary.grid_epochs} trial-epochs, hypervolume {grid:.1f} "
        f"(reference 0, mean over table seeds); HV in % of the full grid's at the same table seed, "
        f"median over {summary.search_seeds} search seeds.",
        "",
        "| method | final median HV (% of grid) | epochs to grid HV −1 % | fraction of grid compute | "
        "median epochs spent |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in sorted(
        summary.methods.values(), key=lambda m: (m.epochs_to_grid is None, m.epochs_to_grid or 0)
    ):
        lines.append(
            f"| {m.method} | {m.final_median:.1f} | "
            f"{m.epochs_to_grid if m.epochs_to_grid is not None else 'not reached'} | "
            f"{_fmt(summary.fraction(m.epochs_to_grid))} | {m.median_epochs:.0f} |"
        )
    lines.append("")
    best = summary.methods.get(summary.best) if summary.best else None
    frac = summary.fraction(best.epochs_to_grid) if best else None
    verdict = "met" if frac is not None and frac <= 1 / 3 else "MISSED"
    lines.append(
        f"- target 1 (best method within 1 % of the grid's HV at <= 1/3 of its compute): "
        f"{summary.best or 'no method'} at {_fmt(frac)} of the grid's compute: {verdict}"
    )
    if summary.moasha_epochs is not None:
        ratio = (
            None
            if summary.warm_epochs is None or not summary.moasha_epochs
            else summary.warm_epochs / summary.moasha_epochs
        )
        verdict = "met" if ratio is not None and ratio <= 0.5 else "MISSED"
        lines.append(
            f"- target 2 (SN warm start reaches NSGA-II+MO-ASHA's final median HV, "
            f"{summary.methods['nsga2+moasha'].final_median:.1f} % of grid, at <= 1/2 of its compute): "
            "sn_warm "
            f"{summary.warm_epochs if summary.warm_epochs is not None else 'not reached'} epochs vs "
            f"{summary.moasha_epochs}, ratio {_fmt(ratio)}: {verdict}"
        )
    return "\n".join(lines) + "\n"


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
    from normsearch.bench.replay import METHODS, WARM, distinct_architectures, replay
    from normsearch.recipe import load_recipe

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
