"""`normsearch run` on the built-in benchmark with the small DenseNet and MobileNetV2 and the ibn_ratio
space: real Ray Tune trials, each building its network through `build_model`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from normsearch import build_model
from normsearch.arch import ArchConfig
from normsearch.cli import app
from normsearch.run.folder import RunFolder

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
# One epoch on 200 16-pixel images (4x fewer pixels than the default 32; the networks are the same, every
# layer runs): two presets, two trials each.
SMALLER = {"train.epochs": 1, "data.n_train": 200, "data.n_val": 40, "data.n_test": 40, "data.size": 16}


@pytest.mark.parametrize("preset", ["densenet-mini", "mobilenetv2-mini"])
@pytest.mark.slow
def test_ibn_ratio_search_runs_on_small_families(preset: str, tmp_path: Path, ray_local, tiny: Tiny) -> None:
    out = tmp_path / preset
    args = ["run", str(ROOT / "recipes" / "ibn_ratio.yaml"), "--output", str(out), "--num-samples", "2"]
    result = CliRunner().invoke(app, [*args, *tiny.but(SMALLER), "--set", f"model.backbone.preset={preset}"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    trials = RunFolder.open(out).trials()
    assert len(trials) == 2 and all(t.complete for t in trials), [t.status for t in trials]
    for trial in trials:
        arch = ArchConfig.from_dict(trial.arch)
        assert arch.backbone.preset == preset and arch.norm.ibn is not None
        assert arch.resolve().kind_counts().get("ibn", 0) > 0 or arch.norm.ibn.ratio in (0.0, [0.0, 0.0])
        assert build_model(arch) is not None
