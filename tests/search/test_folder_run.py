"""A four-domain image folder the DomainBed way: rotation over held-out domains, two sources per fold,
training-domain validation, two trials at once on a fresh image cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.run.folder import RunFolder

runner = CliRunner()
pytestmark = pytest.mark.slow  # `normsearch run` through Ray Tune


def test_a_rotated_folder_run_completes_and_reports_each_held_out_domain(
    tmp_path: Path, ray_local, make_image_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))  # trials share a fresh cache
    root = make_image_folder(
        tmp_path / "pacs", ["art", "cartoon", "photo", "sketch"], ["dog", "elk", "cat"], 10
    )
    recipe = tmp_path / "pacs.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "pacs",
                "data": {
                    "dataset": "folder",
                    "root": str(root),
                    "size": 16,
                    "source": ["art", "cartoon", "photo"],
                    "rotate": True,
                    "selection": "training_domain",
                    "test": ["sketch"],
                    "val_fraction": 0.2,
                    "test_fraction": 0.2,
                },
                "model": {"backbone": {"preset": "resnet-mini"}},
                "train": {"epochs": 1, "batch_size": 8},
                "search": {"space": "quickstart", "algorithm": "grid", "num_samples": 2, "max_concurrent": 2},
            }
        )
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(recipe), "--output", str(out)])
    assert result.exit_code == 0, result.output
    trials = RunFolder(out).trials()
    units = [t for t in trials if "@" in t.trial_id]
    candidates = [t for t in trials if "@" not in t.trial_id]
    assert len(units) == 6 and all(t.complete for t in units)  # 2 candidates x 3 folds, no cache race
    assert len(candidates) == 2 and all(t.complete for t in candidates)
    for candidate in candidates:
        assert set(candidate.test) >= {"art", "cartoon", "photo", "avg", "sketch"}
        held = [candidate.test[d] for d in ("art", "cartoon", "photo")]
        assert candidate.test["avg"] == pytest.approx(sum(held) / 3)
        assert set(candidate.metrics) >= {"source_val_acc", "worst_source_val_acc"}
    records = RunFolder(out).records()
    assert all(r["selection"] == "training_domain" for r in records if "selection" in r)
    assert {r.get("unit") for r in records if "@" in r["trial_id"]} == {"art", "cartoon", "photo"}
    shown = runner.invoke(app, ["show", str(out)])
    header = next(line for line in shown.stdout.splitlines() if "art" in line and "Avg" in line)
    assert all(name in header for name in ("cartoon", "photo", "Avg", "sketch"))
    assert "training-domain validation" in shown.stdout
