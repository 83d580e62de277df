"""The GPU-fraction check before Ray: a probe of the network's training step against a stubbed device
capacity (`NORMSEARCH_DEVICE_MEMORY_GB`), and the probe's count against a real CPU count."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from normsearch.arch import ArchConfig
from normsearch.cli import app
from normsearch.models import build_model
from normsearch.recipe import load_recipe
from normsearch.search.preflight import check_gpu_fraction
from normsearch.train.probe import CONTEXT_BYTES, GiB, _counted_bytes, fitting_fraction, probe_step_memory

runner = CliRunner()


def test_meta_count_equals_the_count_with_real_tensors():
    arch = ArchConfig.model_validate({"backbone": {"preset": "resnet-mini", "num_classes": 5}})
    real = _counted_bytes(
        build_model(arch), torch.randn(6, 3, 32, 32), torch.zeros(6, dtype=torch.long), "fp32"
    )
    probe = probe_step_memory(lambda: build_model(arch), 6, 32, 3, 5, device=None)
    assert probe.how == "counted on the meta device"
    assert probe.need == real + CONTEXT_BYTES
    # At least the parameters three times (weights, gradients, momentum) and the input batch.
    params = sum(p.numel() * 4 for p in build_model(arch).parameters())
    assert real > 3 * params + 6 * 3 * 32 * 32 * 4


def test_the_fraction_that_fits():
    assert fitting_fraction(3 * GiB, 16 * GiB) == 0.2  # five trials per GPU
    assert fitting_fraction(9 * GiB, 16 * GiB) == 1.0
    assert fitting_fraction(17 * GiB, 16 * GiB) is None


def test_a_trial_over_its_fraction_fails_before_ray_with_the_fraction_that_fits(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSEARCH_DEVICE_MEMORY_GB", "2")
    result = runner.invoke(
        app,
        [
            "run",
            "recipes/quickstart.yaml",
            "--dry-run",
            "--no-estimate",
            "--output",
            str(tmp_path / "r"),
            "--set",
            "resources.gpu=0.25",
        ],
    )
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    need = check_gpu_fraction(
        load_recipe("recipes/quickstart.yaml", overrides=["resources.gpu=1"])[0], 2 * GiB
    )
    fits = fitting_fraction(need, 2 * GiB)
    assert 0.25 < fits < 1
    assert "resources.gpu 0.25" in line and f"resources.gpu: {fits:.3g} fits" in line, line
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_a_trial_within_its_fraction_passes_and_no_gpu_is_not_checked():
    recipe = load_recipe("recipes/quickstart.yaml", overrides=["resources.gpu=0.5"])[0]
    need = check_gpu_fraction(recipe, capacity=2 * GiB)
    assert need is not None and CONTEXT_BYTES < need <= GiB
    assert check_gpu_fraction(load_recipe("recipes/quickstart.yaml")[0], capacity=GiB) is None


def test_a_bad_capacity_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSEARCH_DEVICE_MEMORY_GB", "lots")
    result = runner.invoke(
        app,
        [
            "run",
            "recipes/quickstart.yaml",
            "--dry-run",
            "--no-estimate",
            "--output",
            str(tmp_path / "r"),
            "--set",
            "resources.gpu=0.25",
        ],
    )
    assert result.exit_code == 2 and "NORMSEARCH_DEVICE_MEMORY_GB" in result.output
