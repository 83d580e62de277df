"""`normsearch bench efficiency`: replays on a hand-made table with hand-derived costs, and a real tabulation
of a two-configuration space at the tiniest budget through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from normsearch.bench.efficiency import load_table, summarise, table_from_dict, tabulate, write_csv, write_png
from normsearch.bench.replay import METHODS, grid_hypervolume, replay
from normsearch.cli import app
from normsearch.recipe import load_recipe
from normsearch.search.warm_start import spec_share

SPACE = {
    "fixed": {"norm.ibn.variant": "a", "norm.ibn.stages": [1, 2]},
    "params": {"ratio": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "path": "norm.ibn.ratio"}},
}
# Quality of each IN ratio: every curve of a better one is above a worse one's in both objectives at every
# epoch, so 0.5 alone is the front. The warm start's order (nearest to the supernet's ratios, which are
# those of ratio 0.5; ties keep the space's order) is 0.5, 0.25, 0.75, 0.0, 1.0: best first, each next one
# worse than every one before it.
QUALITY = {0.5: 5, 0.25: 4, 0.75: 3, 0.0: 2, 1.0: 1}
EPOCHS = 4


def _recipe(tmp_path: Path, **search: Any) -> Path:
    document = {
        "name": "hand",
        "model": {"backbone": {"preset": "resnet-mini"}},
        "train": {"epochs": EPOCHS},
        "search": {
            "space": SPACE,
            "num_samples": 5,
            "population": 2,
            "scheduler": {"kind": "moasha", "grace_period": 1, "reduction_factor": 2},
            "warm_start": {"kind": "sn", "neighbours": 5},
            **search,
        },
    }
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _curve(q: int, offset: float) -> list[dict[str, float]]:
    return [
        {"source_val_acc": 40 + 8 * q + 2 * e + offset, "target_select_acc": 10 + 6 * q + 3 * e + offset}
        for e in range(1, EPOCHS + 1)
    ]


def _table(tmp_path: Path) -> tuple[Any, Any, Any]:
    recipe, space = load_recipe(_recipe(tmp_path))
    configs = space.assignments()
    best = space.to_arch(recipe.model, {"ratio": 0.5}).resolve()
    ratios = {slot: spec_share(spec) for slot, spec in best.slots.items()}
    raw = {
        "name": "hand",
        "objectives": {"source_val_acc": "max", "target_select_acc": "max"},
        "metrics": ["source_val_acc", "target_select_acc"],
        "configs": configs,
        "seeds": [0, 1],
        "rows": [
            {"values": v, "seed": s, "curve": _curve(QUALITY[v["ratio"]], offset=s)}
            for v in configs
            for s in (0, 1)
        ],
        "supernet": {str(s): {"curve": _curve(3, 0), "ratios": ratios} for s in (0, 1)},
    }
    return table_from_dict(raw), space, recipe


# The best configuration's final values per table seed: (40 + 40 + 8 + s, 10 + 30 + 12 + s).
HV = {0: 88 * 52, 1: 89 * 53}


def test_warm_start_replay_costs_what_the_hand_derivation_says(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    assert grid_hypervolume(table) == pytest.approx((HV[0] + HV[1]) / 2)
    for search_seed in (0, 1, 2):
        trajectory = replay(table, space, recipe, "sn_warm", search_seed)
        hv = HV[search_seed % 2]
        # Supernet 4 epochs; 0.5 first at every rung, trained to the end (4); each next one is the worst
        # recorded at rung 1 (reduction factor 2), stopped after 1 epoch. Pruned trials add no area.
        assert trajectory.points == [(4, 0.0), (8, hv), (9, hv), (10, hv), (11, hv), (12, hv)]
        assert [t["pruned"] for t in trajectory.trials] == [False, True, True, True, True]


def test_no_scheduler_trains_every_configuration_once_whatever_it_proposes(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    for method in ("random+none", "grid+none"):
        trajectory = replay(table, space, recipe, method, 3, max_trials=50)
        # Five configurations: repeats cost nothing and the replay ends when the space is visited.
        assert [e for e, _ in trajectory.points] == [4, 8, 12, 16, 20]
        assert len({t["key"] for t in trajectory.trials}) == 5
        assert trajectory.hypervolume == pytest.approx(HV[1])
        # The hypervolume rises exactly when the best configuration is visited, and not before.
        at = [t["key"] for t in trajectory.trials].index('{"ratio": 0.5}')
        assert [hv == HV[1] for _, hv in trajectory.points] == [i >= at for i in range(5)]


def test_moasha_visits_in_the_grid_order_and_spends_less(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    for seed in range(4):
        plain = replay(table, space, recipe, "grid+none", seed)
        early = replay(table, space, recipe, "grid+moasha", seed)
        # The grid's order does not depend on outcomes, so both visit the same configurations in turn.
        assert [t["key"] for t in plain.trials] == [t["key"] for t in early.trials]
        assert all(e <= p for (e, _), (p, _) in zip(early.points, plain.points, strict=True))
        assert early.hypervolume == plain.hypervolume  # the front's one member is never stopped


def test_summary_names_the_warm_start_best_and_writes_csv_and_png(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    methods = ["grid+none", "grid+moasha", "nsga2+moasha", "sn_warm"]
    trajectories = [replay(table, space, recipe, m, s) for m in methods for s in range(6)]
    summary = summarise(trajectories, table)
    assert summary.best == "sn_warm"
    assert summary.methods["sn_warm"].epochs_to_grid == 8
    assert all(summary.methods[m].epochs_to_grid > 8 for m in methods[:-1])
    assert summary.grid_epochs == 20
    assert summary.fraction(8) == pytest.approx(0.4)
    csv = write_csv(summary, tmp_path / "out" / "hand.csv").read_text().splitlines()
    assert csv[0] == "method,epochs,hv_median,hv_q25,hv_q75"
    assert len(csv) == 1 + len(methods) * (summary_horizon := len(summary.methods["sn_warm"].median))
    assert summary_horizon == 1 + max(t.epochs for t in trajectories)
    assert write_png(summary, tmp_path / "out" / "hand.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TINY = {
    "name": "tiny",
    "data": {"size": 8, "n_train": 40, "n_val": 20, "n_test": 20, "select": ["texture"], "test": ["noisy"]},
    "model": {"backbone": {"preset": "resnet-mini"}},
    "train": {"epochs": 2, "batch_size": 20, "warmup_epochs": 0},
    "search": {
        "space": {
            "params": {
                "groups": {
                    "type": "categorical",
                    "choices": ["none", "1"],
                    "sets": {"none": {"norm.ibn": None}, "1": {"norm.ibn.stages": [1]}},
                }
            }
        },
        "num_samples": 2,
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    },
}


def test_tabulation_through_the_cli_then_resumed_without_training(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app, ["bench", "efficiency", str(recipe), "--seeds", "1", "--search-seeds", "2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "tiny.json").read_text())
    assert len(stored["rows"]) == 2 and all(len(r["curve"]) == 2 for r in stored["rows"])
    ratios = stored["supernet"]["0"]["ratios"]
    assert ratios and all(sum(r) == pytest.approx(1.0, abs=1e-5) for r in ratios.values())
    table = load_table(out / "tiny.json")
    assert table.epochs == 2 and table.seeds == [0]
    assert {p.name for p in out.iterdir()} >= {"tiny.json", "tiny.csv", "tiny.png", "tiny.md"}
    methods = {line.split(",")[0] for line in (out / "tiny.csv").read_text().splitlines()[1:]}
    assert methods == set(METHODS)
    assert "target 1" in result.output
    lines: list[str] = []
    tabulate(recipe, out / "tiny.json", seeds=1, progress=lines.append)
    assert lines == []  # every row was already there: nothing trained again


def test_a_table_of_another_budget_is_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    table = tmp_path / "other.json"
    table.write_text(json.dumps({"format": "normsearch-efficiency-table/1", "budget": {}, "rows": []}))
    result = CliRunner().invoke(app, ["bench", "efficiency", str(recipe), "--table", str(table)])
    assert result.exit_code == 2
    assert "another budget" in result.output
