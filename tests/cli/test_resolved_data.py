"""Issue 23: `data.max_per_domain` from the recipe to what the CLI prints, the run folder saves and export
writes; and the resolved recipe shows only the data keys its dataset reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.data.spec import ONLY_FOR
from normsearch.recipe import load_recipe
from normsearch.run.folder import RunFolder

runner = CliRunner()
SPACE = {
    "params": {
        "ibn": {
            "type": "categorical",
            "choices": ["none", "half"],
            "sets": {"none": {"norm.ibn": None}, "half": {"norm.ibn.ratio": 0.5}},
        }
    }
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def folder(root: Path) -> Path:
    """Two domains of three classes, ten real 8×8 PNGs each."""
    for domain in ("photo", "art"):
        for k, cls in enumerate(("a", "b", "c")):
            (root / domain / cls).mkdir(parents=True)
            for i in range(10):
                Image.new("RGB", (8, 8), (25 * i, 80 * k, 90)).save(root / domain / cls / f"{i}.png")
    return root


def write_recipe(path: Path, data: dict[str, Any]) -> Path:
    recipe = {
        "name": "capped",
        "data": data,
        "model": {"backbone": {"preset": "resnet-mini", "num_classes": 3 if "root" in data else 10}},
        "train": {"epochs": 1, "batch_size": 8},
        "search": {"space": SPACE, "algorithm": "grid", "num_samples": 2},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def folder_recipe(tmp_path: Path, **extra: Any) -> Path:
    data = {
        "dataset": "folder",
        "root": str(folder(tmp_path / "data")),
        "source": "photo",
        "select": ["art"],
        "size": 8,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "max_per_domain": 15,
        **extra,
    }
    return write_recipe(tmp_path / "folder.yaml", data)


def data_keys(text: str) -> set[str]:
    """The keys of the `data:` block of a printed or saved recipe YAML."""
    block = re.search(r"^data:\n((?:  .*\n)+)", text, re.M)
    assert block, text
    return {m.group(1) for m in re.finditer(r"^  ([a-z_]+):", block.group(1), re.M)}


@pytest.mark.parametrize("value", ["0", "-3", "'6'", "2.5", "true", "[6]"])
def test_a_bad_cap_is_one_line_naming_file_and_key(tmp_path: Path, value: str) -> None:
    path = write_recipe(tmp_path / "r.yaml", {"n_train": 100})
    path.write_text(path.read_text().replace("n_train: 100", f"max_per_domain: {value}"))
    result = runner.invoke(app, ["run", str(path), "--dry-run", "--no-estimate"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: data.max_per_domain: "), lines[0]
    assert "Traceback" not in result.output


def test_dry_run_shows_the_cap_the_capped_sizes_and_only_folder_keys(tmp_path: Path) -> None:
    path = folder_recipe(tmp_path, n_train=123, style_bias=0.5)  # accepted, read by nothing, not shown
    result = runner.invoke(
        app, ["run", str(path), "--dry-run", "--no-estimate", "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    keys = data_keys(result.stdout)
    assert "max_per_domain" in keys and "root" in keys and "val_fraction" in keys
    assert not keys & set(ONLY_FOR["synthetic"]), keys
    said = " ".join(result.stdout.split())
    assert "max_per_domain: 15" in said and "domains: photo (15), art (15)" in said


def test_dry_run_of_the_benchmark_shows_no_folder_keys(tmp_path: Path) -> None:
    sizes = {"n_train": 100, "n_val": 20, "n_test": 20}
    path = write_recipe(tmp_path / "s.yaml", {**sizes, "max_per_domain": 28})
    result = runner.invoke(
        app, ["run", str(path), "--dry-run", "--no-estimate", "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    keys = data_keys(result.stdout)
    assert {"n_train", "style_bias", "glyph_scale", "max_per_domain"} <= keys
    assert not keys & set(ONLY_FOR["folder"]), keys
    # plain: 28 of 100/20/20 (20 + 4 + 4); each target 14 + 14; a derived target the source's 4 + 4.
    said = " ".join(result.stdout.split())
    assert "plain (28), texture (28)" in said and "plain+contrast@4 (8)" in said


def test_data_show_prints_the_cap_and_the_capped_splits(tmp_path: Path) -> None:
    path = folder_recipe(tmp_path)
    result = runner.invoke(app, ["data", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert "at most 15 images per domain" in " ".join(result.stdout.split())  # the title may wrap
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines() if line.startswith("│ photo")]
    assert [c.strip() for c in rows[0][2:]] == ["9", "3", "3", "5-5"]  # 5 per class: 3/1/1 per class


@pytest.mark.parametrize("kind", ["folder", "synthetic"])
def test_saved_recipe_holds_only_its_keys_and_round_trips(tmp_path: Path, kind: str) -> None:
    if kind == "folder":
        path = folder_recipe(tmp_path)
    else:
        path = write_recipe(tmp_path / "s.yaml", {"n_train": 100, "max_per_domain": 28})
    recipe, space = load_recipe(path)
    run = RunFolder.create(tmp_path / "run", recipe, space)
    saved = (run.path / "recipe.yaml").read_text()
    other = "synthetic" if kind == "folder" else "folder"
    keys = data_keys(saved)
    assert "max_per_domain" in keys and not keys & set(ONLY_FOR[other]), keys
    again, _ = RunFolder.open(run.path).load()  # what resume reads
    assert again == recipe and again.data.max_per_domain == (15 if kind == "folder" else 28)


def test_export_records_the_cap_that_reproduces_the_subset(tmp_path: Path) -> None:
    recipe, space = load_recipe(folder_recipe(tmp_path))
    run = RunFolder.create(tmp_path / "run", recipe, space)
    run.append(
        {
            "trial_id": "t000",
            "status": "complete",
            "config": {"ibn": "half"},
            "arch": space.to_arch(recipe.model, {"ibn": "half"}).to_dict(),
            "seed": 0,
            "epoch": 1,
            "final": True,
            "metrics": {"source_val_acc": 90.0, "target_select_acc": 60.0, "epoch": 1, "final": True},
        }
    )
    out = tmp_path / "best.yaml"
    result = runner.invoke(app, ["export", str(run.path), "-o", str(out), "--trial", "t000"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(out.read_text())["provenance"]["data"]
    assert data == {"dataset": "folder", "root": recipe.data.root, "seed": 0, "max_per_domain": 15}
