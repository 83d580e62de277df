"""The diagnosis plots: a quantity per normalization slot over depth (IBN-Net Fig. 2 / 5, XBNBlock Fig. 2-5)
and SN's stacked ratio bars (SN Fig. 5). PNG files, written atomically; titles wrap inside the figure.

`Diagnosis`, what `normsearch diagnose` measured (analysis/diagnose.py), lives here with the figures drawn
from it, so that the two modules import one way."""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.analysis.divergence import EPS
from normsearch.analysis.sn_ratios import SNRatios
from normsearch.run.files import atomic_write_bytes


@dataclass
class Diagnosis:
    """Per slot (forward order): its normalizer, the divergence source -> each target, the estimation shift
    (ESM_mu, ESM_sigma) on the source and each target (None for a batch-free slot), and the SN ratios."""

    label: str
    selection: str
    slots: list[str]
    normalizers: dict[str, str]
    targets: list[str]
    images: dict[str, int]
    divergence: dict[str, list[float]] = field(default_factory=dict)
    shift: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)
    sn: list[SNRatios] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "selection": self.selection,
            "slots": self.slots,
            "normalizers": self.normalizers,
            "images": self.images,
            "divergence": self.divergence,
            "estimation_shift": {
                d: [None if v is None else {"mu": v[0], "sigma": v[1]} for v in values]
                for d, values in self.shift.items()
            },
            "sn_ratios": [
                {"slot": r.slot, "mode": r.mode, "mean": r.mean, "var": r.var, "choice": r.choice}
                for r in self.sn
            ],
            "eps": EPS,
        }


COLORS = {"in": "#d62728", "ln": "#2ca02c", "bn": "#1f77b4"}


def _figure(width: float, height: float, rows: int = 1) -> tuple[Any, Any]:
    # deferred: the Agg backend is chosen when a figure is drawn, not when this module is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(width, height), dpi=120, squeeze=False)


def _save(fig: Any, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt  # deferred, as in `_figure`

    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _slot_axis(ax: Any, slots: list[str], normalizers: dict[str, str]) -> None:
    ax.set_xticks(range(len(slots)))
    size = 7 if len(slots) <= 24 else 5
    ax.set_xticklabels([f"{s} ({normalizers[s].split(':')[0]})" for s in slots], rotation=90, fontsize=size)
    ax.set_xlabel("normalization slot, input to output (normalizer)", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_divergence(d: Diagnosis, path: Path) -> Path:
    """Feature divergence (IBN-Net Eq. 3) between the source and each target, per slot over depth."""
    fig, axes = _figure(max(6.0, 0.28 * len(d.slots) + 3), 4.8)
    ax = axes[0][0]
    for target in d.targets:
        ax.plot(range(len(d.slots)), d.divergence[target], "o-", ms=3, label=target)
    ax.set_ylabel("feature divergence (symmetric KL)", fontsize=8)
    ax.set_yscale("symlog", linthresh=1e-2)
    _slot_axis(ax, d.slots, d.normalizers)
    ax.legend(fontsize=7, title="source vs", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path, f"Feature divergence per layer (IBN-Net §4.3) — {d.label}")


def plot_estimation_shift(d: Diagnosis, path: Path) -> Path:
    """ESM_mu and ESM_sigma (XBNBlock Definition 2) per BN-like slot; batch-free slots are gaps."""
    fig, axes = _figure(max(6.0, 0.28 * len(d.slots) + 3), 7.0, rows=2)
    for row, (k, name) in enumerate(
        ((0, "ESM_mu  ||running mean - input mean||"), (1, "ESM_sigma  ||running std - input std||"))
    ):
        ax = axes[row][0]
        for domain, values in d.shift.items():
            ys = [float("nan") if v is None else v[k] for v in values]
            ax.plot(range(len(d.slots)), ys, "o-", ms=3, label=domain)
        ax.set_ylabel(name, fontsize=8)
        _slot_axis(ax, d.slots, d.normalizers)
        if row == 0:
            ax.legend(
                fontsize=7, title="input from", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)
            )
    return _save(
        fig, path, f"Estimation shift of BN statistics (XBNBlock §4.2; gaps: batch-free slots) — {d.label}"
    )


def plot_sn_ratios(d: Diagnosis, path: Path) -> Path:
    """Stacked IN/LN/BN ratio bars for the mean and the variance of every SN layer, the hard choice on top."""
    slots = [r.slot for r in d.sn]
    fig, axes = _figure(max(6.0, 0.3 * len(slots) + 3), 7.0, rows=2)
    for row, part in enumerate(("mean", "var")):
        ax = axes[row][0]
        bottom = [0.0] * len(slots)
        for i, stat in enumerate(("in", "ln", "bn")):
            heights = [getattr(r, part)[i] for r in d.sn]
            ax.bar(range(len(slots)), heights, bottom=bottom, color=COLORS[stat], label=stat.upper())
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        for x, r in enumerate(d.sn):
            ax.text(x, 1.02, r.choice.split("/")[row], ha="center", fontsize=6)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(f"{part} ratios", fontsize=8)
        ax.set_xticks(range(len(slots)))
        ax.set_xticklabels(slots, rotation=90, fontsize=7 if len(slots) <= 24 else 5)
        if row == 0:
            ax.legend(fontsize=7, ncol=3, loc="lower right")
    return _save(fig, path, f"Switchable Norm importance ratios and hard choices (SN Fig. 5) — {d.label}")
