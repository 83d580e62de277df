"""`normsearch diagnose CONFIG --recipe RECIPE`: a real (tiny) training, hooks on every slot, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from normsearch.cli import app

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
# IN on the stem and after stage 1's addition (IBN-b), soft Switchable Norm in stage 2, BN elsewhere.
MIXED = """backbone: {preset: resnet-mini}
norm:
  ibn: {variant: b, stages: [1]}
  switchable: {stages: [2], mode: soft}
"""


@pytest.mark.slow
def test_diagnose_a_config_trained_on_a_recipe(tmp_path: Path, tiny: Tiny) -> None:
    config = tmp_path / "mixed.yaml"
    config.write_text(MIXED)
    out = tmp_path / "diag"
    args = ["diagnose", str(config), "--recipe", str(ROOT / "recipes" / "quickstart.yaml"), *tiny]
    result = runner.invoke(app, [*args, "--images", "48", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "feature divergence" in result.stdout and "Switchable Norm ratios" in result.stdout
    for name in ("divergence.png", "estimation_shift.png", "sn_ratios.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    slots = diagnosis["slots"]
    assert slots[0] == "bn1" and len(slots) == 10 and diagnosis["images"]["source"] == 48
    targets = [
        "texture",
        "pastel",
        "plain+contrast@4",
        "noisy",
        "fog",
        "plain+brightness@4",
        "plain+defocus_blur@2",
    ]
    assert list(diagnosis["divergence"]) == targets
    for target, values in diagnosis["divergence"].items():
        for slot, value in zip(slots, values, strict=True):
            if diagnosis["normalizers"][slot] == "in":
                # An affine IN's output has each channel's spatial mean equal to its bias, for every image:
                # no divergence between any two domains (IBN-Net §4.3's point, exactly).
                assert abs(value) < 1e-6, (target, slot, value)
            else:
                assert value >= 0.0
        assert max(values) > 1e-3  # the BN layers do see the domain shift
    shifts = diagnosis["estimation_shift"]["fog"]
    kinds = [diagnosis["normalizers"][s].split(":")[0] for s in slots]
    assert [v is None for v in shifts] == [k == "in" for k in kinds]  # IN estimates nothing
    rows = list(csv.DictReader((out / "sn_ratios.csv").open()))
    assert [r["slot"] for r in rows] == ["layer2.0.bn1", "layer2.0.bn2", "layer2.0.downsample.1"]
    for r in rows:
        assert abs(sum(float(r[f"mean {s}"]) for s in ("in", "ln", "bn")) - 1.0) < 1e-3


def test_diagnose_needs_a_recipe_with_a_config_and_a_trial_with_a_run(tmp_path: Path) -> None:
    config = tmp_path / "bn.yaml"
    config.write_text("backbone: {preset: resnet-mini}\n")
    result = runner.invoke(app, ["diagnose", str(config)])
    assert result.exit_code == 2 and "CONFIG.yaml --recipe RECIPE, or RUN_DIR --trial ID" in result.output
    run = ROOT / "tests" / "fixtures" / "quick2"
    result = runner.invoke(app, ["diagnose", str(run)])
    assert result.exit_code == 2 and "a run folder takes --trial ID" in result.output
