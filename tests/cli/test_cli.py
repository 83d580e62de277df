from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normsearch import __version__
from normsearch.bench.norms import CASES
from normsearch.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"normsearch {__version__}"


def test_bench_norms_prints_every_kind_with_ratios() -> None:
    result = runner.invoke(
        app, ["bench", "norms", "--repeats", "3", "--warmup", "1", "--shapes", "4x16x6x6", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    for label in ("bn", "ibn r=0.5", "sn soft", "sn hard bn/bn", "crossnorm 2ins", "selfnorm two_branch"):
        assert label in result.stdout
    rows = [line for line in result.stdout.splitlines() if "4×16×6×6" in line]
    assert len(rows) == len(CASES)
    for row in rows:
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert float(cells[3]) > 0 and float(cells[6]) > 0  # train and eval ratios to BatchNorm2d


def test_bad_flag_value_is_one_red_line_and_exit_2() -> None:
    result = runner.invoke(app, ["bench", "norms", "--shapes", "4x8"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --shapes: '4x8' is not N×C×H×W with positive integers, e.g. 8x16x8x8"
    ]
    assert "Traceback" not in result.output


def test_module_entry_point_and_fast_help() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, normsearch.cli; print('torch' in sys.modules, 'ray' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]  # --help does not import torch or ray
    out = subprocess.run(
        [sys.executable, "-m", "normsearch", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"normsearch {__version__}"


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert f"\n{ci}\n" in readme


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_plan_prints_every_example(path: Path) -> None:
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    assert "bn1" in result.stdout and "parameters:" in result.stdout and "slots per kind:" in result.stdout


def test_plan_reference_counts_for_ibn_b() -> None:
    result = runner.invoke(app, ["plan", str(ROOT / "examples" / "ibn_b_resnet50.yaml")])
    assert "slots per kind: bn 52, in 3" in result.stdout
    # ResNet-50 (25,557,032) plus the affines of the two after-addition INs (256 + 512 channels).
    assert "parameters: 25,558,568 " in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("norm: {ibn: {ratio: 2}}\n", "bad.yaml: norm.ibn.ratio: Input should be less than or equal to 1"),
        ("norm: {overrides: {layer1.0.bn9: in}}\n", "bad.yaml: norm.overrides: no slot 'layer1.0.bn9'"),
        ("norm: [1, 2\n", "bad.yaml: cannot parse"),
        ("norm: {default: xx}\n", "bad.yaml: norm.default: unknown normalizer kind 'xx'"),
    ],
)
def test_plan_bad_config_is_one_line_exit_2(text: str, message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(text)
    result = runner.invoke(app, ["plan", "bad.yaml"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_plan_missing_file() -> None:
    result = runner.invoke(app, ["plan", "nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml: no such file" in result.stderr


def test_spaces_lists_every_shipped_space_with_its_size() -> None:
    result = runner.invoke(app, ["spaces"])
    assert result.exit_code == 0, result.output
    from normsearch.space import list_spaces

    shipped = [path.stem for path in list_spaces()]
    assert len(shipped) >= 7  # which ones must ship is tests/test_space.py's business
    for name in shipped:
        assert name in result.stdout
    assert "│ 5 " in result.stdout.replace("  ", " ")  # quickstart holds five configurations


def test_spaces_validate_checks_against_a_recipe_model() -> None:
    good = runner.invoke(
        app, ["spaces", "validate", str(ROOT / "normsearch" / "search_spaces" / "xbn_position.yaml")]
    )
    assert good.exit_code == 0 and "valid; built 48 configuration(s)" in good.stdout
    bad = runner.invoke(
        app,
        [
            "spaces",
            "validate",
            str(ROOT / "normsearch" / "search_spaces" / "xbn_position.yaml"),
            "--recipe",
            str(ROOT / "recipes" / "quickstart.yaml"),
        ],
    )
    assert bad.exit_code == 2 and "requires block=bottleneck" in bad.stderr


def test_data_show_prints_domains_and_writes_a_grid(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\ndata: {select: [texture], test: [plain+fog@2], n_train: 40, n_val: 20, n_test: 20}\n"
        "model: {backbone: {preset: resnet-mini}}\nsearch: {space: quickstart.yaml}\n"
    )
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["data", "show", str(recipe), "-o", str(grid), "--per-row", "4"])
    assert result.exit_code == 0, result.output
    assert "plain+fog@2" in result.stdout and "source" in result.stdout and "select" in result.stdout
    from PIL import Image

    with Image.open(grid) as image:  # 3 domains x 4 images of 32 px with 2 px padding, right of the names
        assert image.size[1] == 3 * 34 + 2 and image.size[0] > 4 * 34 + 2 + 8
    missing = runner.invoke(app, ["data", "show", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a recipe file" in missing.stderr


def test_train_retrains_over_seeds_and_reports_mean_and_standard_error(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\ndata: {select: [texture], test: [fog], n_train: 100, n_val: 20, n_test: 20}\n"
        "model: {backbone: {preset: resnet-mini}}\ntrain: {epochs: 1, batch_size: 50}\n"
        "search: {space: quickstart.yaml}\n"
    )
    result = runner.invoke(
        app,
        [
            "train",
            str(ROOT / "examples" / "benchmark" / "ibn_b.yaml"),
            "--recipe",
            str(recipe),
            "--seeds",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    for measure in ("source val", "select target (val)", "test: fog", "test: source", "± s.e."):
        assert measure in result.stdout


def test_bench_data_prints_both_throughputs_and_their_ratio() -> None:
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
    assert "input pipeline" in result.stdout and "train step" in result.stdout
    assert "pipeline / train step = " in result.stdout
