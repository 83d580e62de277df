from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from normsearch import __version__
from normsearch.cli import app

ROOT = Path(__file__).resolve().parents[1]
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
    assert len(rows) == 14
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
