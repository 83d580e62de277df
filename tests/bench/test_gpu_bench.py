"""`normsearch bench gpu`: one line and exit 2 without CUDA; its code paths at toy sizes on the CPU; and
`bench data` timing both augmentation paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from normsearch.bench.gpu import GpuBench, Sizes, markdown, pipeline_rates
from normsearch.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA line needs a machine without CUDA")
def test_without_cuda_it_is_one_line_and_exit_2():
    result = runner.invoke(app, ["bench", "gpu"])
    assert result.exit_code == 2
    assert "no CUDA device here" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (wrapped at most once by the console)


def test_the_pipeline_paths_run_on_the_cpu():
    sizes = Sizes.for_device(torch.device("cpu"))
    rates = dict(pipeline_rates(torch.device("cpu"), sizes))
    assert set(rates) == {"batched, resident", "per image, resident", "batched, streamed from the host"}
    assert all(rate > 0 for rate in rates.values())


@pytest.mark.slow
def test_the_dry_run_prints_the_whole_table(tmp_path):
    out = tmp_path / "gpu.md"
    result = runner.invoke(app, ["bench", "gpu", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for heading in ("Normalizer train step / BatchNorm2d", "Input pipeline vs train step", "Trials sharing"):
        assert heading in text
    assert "| bf16 | on |" in text and "resnet-mini train step" in text


def test_markdown_reads_the_targets():
    result = GpuBench(
        "test",
        norms=[("in", "1×2×3×4", "fp32", False, 1.2), ("sn", "1×2×3×4", "bf16", True, 1.7)],
        pipeline=[("batched, resident", 3000.0), ("resnet50 train step", 900.0)],
        sharing={"alone": 100.0, "together": 260.0, "trials": 4, "speedup": 2.6},
        memory=[(1.5, 1.2)],
    )
    text = markdown(result)
    assert "| in | 1×2×3×4 | fp32 | off | 1.20 | yes |" in text
    assert "| sn | 1×2×3×4 | bf16 | on | 1.70 | **no** |" in text
    assert "= 3.3× (target ≥ 3×)" in text and "| 4 | 260 | 2.60 |" in text


def test_bench_data_reports_both_augmentation_paths():
    result = runner.invoke(
        app,
        [
            "bench",
            "data",
            str(ROOT / "recipes" / "quickstart.yaml"),
            "--batches",
            "1",
            "--set",
            "data.n_train=200",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "augment per image" in result.stdout and "augment batched" in result.stdout
    assert "batched / per-image augmentation = " in result.stdout
