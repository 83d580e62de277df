"""`normsearch bench efficiency`: replays on a hand-made table with hand-derived costs, and a real tabulation
of a two-configuration space at the tiniest budget through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from normsearch.bench.efficiency import load_table, table_from_dict, tabulate
from normsearch.bench.efficiency_report import summarise, write_csv, write_png
from normsearch.bench.replay import METHODS, grid_hypervolume, replay
from normsearch.cli import app
from normsearch.recipe import load_recipe
from normsearch.search.warm_start import spec_share

SPACE = {
    "fixed": {"norm.ibn.variant": "a", "norm.ibn.stages": [1, 2]},
    "params": {"ratio": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "path": "norm.ibn.ratio"}},
}
# Quality of each IN ratio but 0.5: every curve of a better one is above a worse one's in both objectives at
# every epoch. Ratio 0.5 ("A") has the best source accuracy at every epoch, the worst target accuracy at
# epochs 1-2 (the rungs, grace 1 and reduction factor 2 over 4 epochs) and the best at the end: it alone is
# the final front; ASHA on the target stops it unless it comes first; MO-ASHA keeps it (nothing dominates
# it at a rung). The warm start's order (nearest to the supernet's ratios, those of ratio 0.5; ties keep the
# space's order) is 0.5, 0.25, 0.75, 0.0, 1.0.
QUALITY = {0.25: 4, 0.75: 3, 0.0: 2, 1.0: 1}
EPOCHS = 4
BEST = '{"ratio": 0.5}'


def _recipe(tmp_path: Path) -> Path:
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
        },
    }
    path = tmp_path / "hand.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _curve(ratio: float, offset: float) -> list[dict[str, float]]:
    if ratio == 0.5:
        points = [(84, 5), (86, 6), (88, 60), (90, 62)]
    else:
        q = QUALITY[ratio]
        points = [(40 + 8 * q + 2 * e, 10 + 6 * q + 3 * e) for e in range(1, EPOCHS + 1)]
    return [{"source_val_acc": a + offset, "target_select_acc": b + offset} for a, b in points]


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
            {"values": v, "seed": s, "curve": _curve(v["ratio"], offset=s)} for v in configs for s in (0, 1)
        ],
        "supernet": {str(s): {"curve": _curve(0.0, 0), "ratios": ratios} for s in (0, 1)},
    }
    return table_from_dict(raw), space, recipe


# Ratio 0.5's final values per table seed (the search seed's parity): (90 + s, 62 + s); reference 0.
HV = {0: 90 * 62, 1: 91 * 63}


def test_warm_start_replay_costs_what_the_hand_derivation_says(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    assert grid_hypervolume(table) == pytest.approx((HV[0] + HV[1]) / 2)
    for search_seed in (0, 1, 2):
        trajectory = replay(table, space, recipe, "sn_warm", search_seed)
        hv = HV[search_seed % 2]
        # Supernet: 4 epochs. 0.5 is first at both rungs: trained to the end (8). 0.25 is not dominated by
        # 0.5 at either rung (better target), so MO-ASHA's first-front rule keeps it: 12. Then 0.75, 0.0
        # and 1.0 are each dominated at rung 1 and ranked last of 3, 4, 5 (keep fewer than n/2, at least
        # 1): stopped after 1 epoch each. Pruned trials add no area; 0.25's final is dominated by 0.5's.
        assert trajectory.points == [(4, 0.0), (8, hv), (12, hv), (13, hv), (14, hv), (15, hv)]
        assert [t["epochs"] for t in trajectory.trials] == [4, 4, 1, 1, 1]
        assert [t["pruned"] for t in trajectory.trials] == [False, False, True, True, True]


def test_no_scheduler_trains_every_configuration_once_whatever_it_proposes(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    for method in ("random+none", "grid+none", "tpe+none"):
        trajectory = replay(table, space, recipe, method, 3, max_trials=50)
        # Five configurations: repeats cost nothing and the replay ends when the space is visited.
        assert [e for e, _ in trajectory.points] == [4, 8, 12, 16, 20]
        assert len({t["key"] for t in trajectory.trials}) == 5
        assert trajectory.hypervolume == pytest.approx(HV[1])
        # The hypervolume is the full grid's exactly from the visit of ratio 0.5 on.
        at = [t["key"] for t in trajectory.trials].index(BEST)
        assert [hv == HV[1] for _, hv in trajectory.points] == [i >= at for i in range(5)]


def test_schedulers_on_the_grid_order_moasha_keeps_the_front_and_asha_loses_it(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    for seed in range(6):
        plain, asha, early = (
            replay(table, space, recipe, f"grid+{s}", seed) for s in ("none", "asha", "moasha")
        )
        # The grid's order does not depend on outcomes: all three visit the same configurations in turn.
        order = [t["key"] for t in plain.trials]
        assert [t["key"] for t in asha.trials] == order == [t["key"] for t in early.trials]
        # MO-ASHA never spends more, and never stops ratio 0.5: it reaches the full grid no later.
        assert all(e <= p for (e, _), (p, _) in zip(early.points, plain.points, strict=True))
        assert early.hypervolume == plain.hypervolume == HV[seed % 2]
        # ASHA on the target stops ratio 0.5 at rung 1 unless it came first: the front is lost.
        stopped = next(t for t in asha.trials if t["key"] == BEST)
        assert stopped["pruned"] == (order[0] != BEST)
        assert (asha.hypervolume < HV[seed % 2]) == (order[0] != BEST)


def test_summary_names_the_known_best_method_and_writes_csv_and_png(tmp_path: Path) -> None:
    table, space, recipe = _table(tmp_path)
    methods = ["grid+none", "grid+asha", "grid+moasha"]
    # The search seeds whose grid does not start with ratio 0.5 (Optuna's brute-force order starts there
    # for seeds 0-3): on them ASHA always loses the front, and MO-ASHA is never later than no scheduler.
    seeds = [s for s in range(20) if replay(table, space, recipe, "grid+none", s).trials[0]["key"] != BEST]
    seeds = seeds[:6]
    assert len(seeds) == 6
    trajectories = [replay(table, space, recipe, m, s) for m in methods for s in seeds]
    summary = summarise(trajectories, table)
    assert summary.best == "grid+moasha"
    moasha, plain = summary.methods["grid+moasha"], summary.methods["grid+none"]
    assert moasha.epochs_to_grid <= plain.epochs_to_grid
    assert moasha.median_epochs < plain.median_epochs == 20  # the tie-break: it spent less
    assert summary.methods["grid+asha"].epochs_to_grid is None
    assert summary.grid_epochs == 20
    assert summary.fraction(8) == pytest.approx(0.4)
    assert summary.methods["grid+none"].final_median == pytest.approx(100.0)
    csv = write_csv(summary, tmp_path / "out" / "hand.csv").read_text().splitlines()
    assert csv[0] == "method,epochs,hv_pct_median,hv_pct_q25,hv_pct_q75"
    horizon = max(t.epochs for t in trajectories)
    assert len(csv) == 1 + len(methods) * (horizon + 1)
    assert write_png(summary, tmp_path / "out" / "hand.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TINY_RECIPE = {
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
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
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
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    table = tmp_path / "other.json"
    table.write_text(json.dumps({"format": "normsearch-efficiency-table/1", "budget": {}, "rows": []}))
    result = CliRunner().invoke(app, ["bench", "efficiency", str(recipe), "--table", str(table)])
    assert result.exit_code == 2
    assert "another budget" in result.output


def test_two_values_that_build_one_network_are_trained_once(tmp_path: Path) -> None:
    space_doc = {
        "fixed": {"norm.ibn.variant": "a"},
        "params": {
            "name": {
                "type": "categorical",
                "choices": ["early", "first"],  # two names for IN in stage 1: one network
                "sets": {"early": {"norm.ibn.stages": [1]}, "first": {"norm.ibn.stages": [1]}},
            }
        },
    }
    path = tmp_path / "twins.yaml"
    path.write_text(yaml.safe_dump({"name": "twins", "search": {"space": space_doc, "algorithm": "grid"}}))
    recipe, space = load_recipe(path)
    configs = space.assignments()
    raw = {
        "name": "twins",
        "objectives": {"source_val_acc": "max", "target_select_acc": "max"},
        "configs": configs,
        "seeds": [0],
        "rows": [{"values": v, "seed": 0, "curve": _curve(0.25, 0)} for v in configs],
    }
    trajectory = replay(table_from_dict(raw), space, recipe, "random+none", 0, max_trials=10)
    assert trajectory.points == [(4, pytest.approx(80 * 46))]  # one training of 4 epochs, whichever name
