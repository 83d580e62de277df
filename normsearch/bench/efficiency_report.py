"""The bench's report: hypervolume-against-compute bands over search seeds, the figures the targets read,
and the CSV, PNG and Markdown table `normsearch bench efficiency` writes (normsearch.bench.efficiency
tabulates and replays; this module only reads trajectories)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normsearch.bench.replay import WARM, Table, grid_hypervolume, grid_hypervolumes
from normsearch.run.files import atomic_write_bytes, atomic_write_text


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
    # deferred: the Agg backend is chosen when a figure is drawn, not when this module is imported
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
            + (
                f"sn_warm at {summary.warm_epochs} epochs vs {summary.moasha_epochs}, ratio {_fmt(ratio)}"
                if summary.warm_epochs is not None
                else f"sn_warm never reaches it (NSGA-II+MO-ASHA: {summary.moasha_epochs} epochs)"
            )
            + f": {verdict}"
        )
    return "\n".join(lines) + "\n"
