"""Recipes: validation errors name file and key, precedence of flags, selection protocol, dry runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.errors import NormsearchError
from normsearch.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SHIPPED_DATA = [p for p in RECIPES if p.stem != "pacs"]  # pacs.yaml points at the user's own PACS folder
runner = CliRunner()


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base() -> dict:
    return {
        "name": "t",
        "model": {"backbone": {"preset": "resnet-mini"}},
        "search": {"space": str(ROOT / "normsearch" / "search_spaces" / "quickstart.yaml")},
    }


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"serch": {}}, "r.yaml: serch: unknown key; did you mean 'search'?"),
        ({"train": {"epoch": 3}}, "r.yaml: train.epoch: unknown key; did you mean 'epochs'?"),
        ({"train": {"optimizer": "adam"}}, "r.yaml: train.optimizer: Input should be 'sgd' or 'adamw'"),
        (
            {"data": {"select": ["texture"], "test": ["texture"]}},
            "domain 'texture' is both select and test",
        ),
        ({"data": {"select": ["plain+fogg@3"]}}, "unknown corruption 'fogg'"),
        ({"data": {"select": ["watercolour"]}}, "unknown synthetic domain 'watercolour'"),
        ({"data": {"dataset": "folder"}}, "dataset folder needs root"),
        (
            {"search": {"space": "quickstart.yaml", "scheduler": {"kind": "asha", "metric": ["a", "b"]}}},
            "ASHA compares trials on one scalar",
        ),
        ({"search": {"space": "quickstart.yaml", "objectives": {"acc": "max"}}}, "unknown objective 'acc'"),
        ({"search": {"space": "nope.yaml"}}, "no space file 'nope.yaml'"),
        (
            {
                "search": {
                    "space": {
                        "params": {"p": {"type": "float", "low": 0, "high": 1, "path": "norm.crossnorm.p"}}
                    },
                    "algorithm": "grid",
                }
            },
            "grid needs a finite space",
        ),
        ({"search": {"space": "xbn_position.yaml"}}, "requires block=bottleneck"),
        ({"ray": {"address": "somewhere"}}, "address must be auto, ray://host:port or host:port"),
    ],
)
def test_bad_recipes_are_one_line_naming_file_and_key(tmp_path: Path, patch: dict, message: str) -> None:
    data = base()
    for key, value in patch.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) and value else value
    with pytest.raises(NormsearchError) as info:
        load_recipe(write(tmp_path, data))
    text = str(info.value)
    assert message in text and str(tmp_path / "r.yaml") in text and "\n" not in text


def test_oracle_selection_is_allowed_and_announced(tmp_path: Path) -> None:
    data = base()
    data["data"] = {"select": ["texture"], "test": ["texture", "fog"], "selection": "oracle"}
    recipe, _ = load_recipe(write(tmp_path, data))
    assert recipe.data.describe().startswith("ORACLE selection")


def test_flags_beat_the_recipe_and_the_recipe_beats_defaults(tmp_path: Path) -> None:
    data = base()
    data["search"]["num_samples"] = 4
    path = write(tmp_path, data)
    recipe, _ = load_recipe(path)
    assert recipe.search.num_samples == 4 and recipe.search.max_concurrent == 2  # recipe, default
    recipe, _ = load_recipe(path, num_samples=9, address="auto", overrides=["train.epochs=3"])
    assert recipe.search.num_samples == 9 and recipe.ray.address == "auto" and recipe.train.epochs == 3
    with pytest.raises(NormsearchError, match=r"--set 'epochs': write key\.path=value"):
        load_recipe(path, overrides=["epochs"])


@pytest.mark.slow  # 4-11 s each (--durations); issue 19
@pytest.mark.parametrize("recipe", SHIPPED_DATA, ids=[p.stem for p in SHIPPED_DATA])
def test_every_recipe_passes_dry_run(recipe: Path, tmp_path: Path) -> None:
    # The checks only: the estimate's timing (tests/search/test_estimate*.py) would cost ~15 s a recipe.
    result = runner.invoke(
        app, ["run", str(recipe), "--dry-run", "--no-estimate", "--output", str(tmp_path / "x")]
    )
    assert result.exit_code == 0, result.output
    assert "configurations" in result.stdout and "no time estimate" in result.stdout
    assert not (tmp_path / "x").exists()  # a dry run writes nothing


@pytest.mark.slow  # 4-11 s each (--durations); issue 19
def test_the_pacs_recipe_dry_runs_on_a_pacs_layout_folder_and_names_missing_weights(
    tmp_path: Path, make_image_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NORMSEARCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: no weights here
    domains = ["art_painting", "cartoon", "photo", "sketch"]
    root = make_image_folder(tmp_path / "PACS", domains, ["dog", "horse", "house"], 10, size=40)
    recipe = str(ROOT / "recipes" / "pacs.yaml")
    flags = [
        "--dry-run",
        "--no-estimate",
        "--output",
        str(tmp_path / "x"),
        "--set",
        f"data.root={root}",
        "--set",
        "data.size=32",
    ]
    result = runner.invoke(app, ["run", recipe, *flags, "--set", "model.backbone.weights=null"])
    assert result.exit_code == 0, result.output
    assert "each of art_painting, cartoon, photo, sketch held out in turn" in result.stdout
    offline = runner.invoke(app, ["run", recipe, *flags])
    assert offline.exit_code == 2 and len(offline.stderr.strip().splitlines()) == 1
    assert "resnet18-f37072fd.pth" in offline.stderr and str(tmp_path / "torch") in offline.stderr
    assert not (tmp_path / "x").exists()


def test_bad_recipe_on_the_cli_is_one_red_line_exit_2(tmp_path: Path) -> None:
    data = base()
    data["train"] = {"epochs": 0}
    result = runner.invoke(app, ["run", str(write(tmp_path, data)), "--dry-run", "--no-estimate"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epochs" in lines[0] and "greater than or equal to 1" in lines[0]


# --- issue 20: strict recipes ------------------------------------------------------------------------
AT_BOUND = {
    ("train", "epochs"): 10_000,
    ("train", "batch_size"): 65_536,
    ("search", "num_samples"): 100_000,
    ("search", "max_concurrent"): 1_024,
    ("search", "seed"): 2**32 - 1,
    ("seed",): 2**32 - 1,
    ("data", "seed"): 2**32 - 1,
    ("name",): "n" * 128,
}


@pytest.mark.parametrize("key", list(AT_BOUND), ids=lambda k: ".".join(k))
def test_every_bound_admits_its_bound_and_refuses_one_past(tmp_path: Path, key: tuple[str, ...]) -> None:
    """A bound is inclusive: the value at it loads, the next one is refused naming the key."""
    value = AT_BOUND[key]
    data = base()
    node = data
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    recipe, _ = load_recipe(write(tmp_path, data))
    section = recipe if len(key) == 1 else getattr(recipe, key[0])
    assert getattr(section, key[-1]) == value
    node[key[-1]] = value + "n" if isinstance(value, str) else value + 1
    with pytest.raises(NormsearchError, match=rf"r\.yaml: {'.'.join(key)}: "):
        load_recipe(write(tmp_path, data))


def test_a_utf16_recipe_with_a_bom_reads_as_its_utf8_text(tmp_path: Path) -> None:
    text = yaml.safe_dump({**base(), "description": "café ☕"}, allow_unicode=True)
    (tmp_path / "u8.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "u16.yaml").write_bytes(text.encode("utf-16"))  # Python writes the BOM
    (tmp_path / "u8bom.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    loaded = [load_recipe(tmp_path / f)[0] for f in ("u8.yaml", "u16.yaml", "u8bom.yaml")]
    assert loaded[0] == loaded[1] == loaded[2] and loaded[1].description == "café ☕"


def test_duplicate_keys_name_both_lines_and_the_same_key_in_two_sections_is_fine(tmp_path: Path) -> None:
    from normsearch.config import read_mapping

    path = tmp_path / "r.yaml"
    path.write_text("seed: 1\nsearch:\n  seed: 2\n  space: quickstart\ndata:\n  seed: 3\n")
    assert read_mapping(path)["search"] == {"seed": 2, "space": "quickstart"}
    path.write_text("a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n")
    with pytest.raises(NormsearchError, match=r"r\.yaml: duplicate key 'c' at lines 3 and 5"):
        read_mapping(path)
    path.write_text("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")  # a merge key is not a duplicate
    assert read_mapping(path)["other"] == {"x": 1, "y": 2}


def test_numbers_are_taken_strictly_but_an_int_is_a_float(tmp_path: Path) -> None:
    """`lr: 1` is a float field given an int (fine); `epochs: 2.0`, a bool or a quoted number are not."""
    recipe, _ = load_recipe(write(tmp_path, {**base(), "train": {"lr": 1, "epochs": 2}}))
    assert recipe.train.lr == 1.0 and recipe.train.epochs == 2
    for bad, said in ((True, "bool true"), ("2", "str '2'"), (2.5, "epochs")):
        with pytest.raises(NormsearchError, match=said):
            load_recipe(write(tmp_path, {**base(), "train": {"epochs": bad}}))


def test_an_empty_set_value_is_refused_and_null_still_removes_a_key(tmp_path: Path) -> None:
    path = write(tmp_path, {**base(), "train": {"epochs": 3}})
    with pytest.raises(NormsearchError, match=r"--set 'train.epochs=': no value"):
        load_recipe(path, overrides=["train.epochs="])
    recipe, _ = load_recipe(path, overrides=["train.epochs=null"])
    assert recipe.train.epochs == 10  # the default, asked for explicitly


def test_exponent_numbers_without_a_dot_are_floats_in_files_and_in_set(tmp_path: Path) -> None:
    """PyYAML reads `1e-4` as a string (YAML 1.1 wants `1.0e-4`); strict number fields would then refuse the
    way most people write a weight decay. The loader takes YAML 1.2's exponent form as a float."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ntrain: {lr: 1e-3, weight_decay: 1e-4}\nsearch: {space: quickstart}\n")
    recipe, _ = load_recipe(path, overrides=["train.epochs=2", "train.label_smoothing=1E-1"])
    assert recipe.train.lr == 0.001 and recipe.train.weight_decay == 0.0001
    assert recipe.train.label_smoothing == 0.1 and recipe.train.epochs == 2
    bad = tmp_path / "b.yaml"
    bad.write_text("name: b\ntrain: {epochs: 1.5e0}\nsearch: {space: quickstart}\n")  # 1.5: no integer
    with pytest.raises(NormsearchError, match=r"train\.epochs"):
        load_recipe(bad)
