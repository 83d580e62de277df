"""Search spaces: parsing, conditions, sizes, define-by-run sampling with a real Optuna study, ArchConfig
mapping, and the shipped spaces against their recipes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from normsearch.arch import ArchConfig, Backbone
from normsearch.errors import NormsearchError
from normsearch.space import Space, list_spaces, load_space

ROOT = Path(__file__).resolve().parents[1]
TINY = ArchConfig(backbone=Backbone(preset="resnet-tiny"))


def space(text: str) -> Space:
    return load_space(yaml.safe_load(text), source="inline")


RATIO = space(
    """
fixed: {norm.ibn.variant: a, norm.ibn.stages: [1, 2]}
params:
  per_stage: {type: bool}
  ratio: {type: float, low: 0.0, high: 1.0, step: 0.25, path: norm.ibn.ratio, when: {per_stage: false}}
  r1: {type: float, low: 0.0, high: 1.0, step: 0.5, path: "norm.ibn.ratio[0]", when: {per_stage: true}}
  r2: {type: float, low: 0.0, high: 1.0, step: 0.5, path: "norm.ibn.ratio[1]", when: {per_stage: true}}
"""
)


def test_size_counts_conditional_branches() -> None:
    # shared: 5 ratios; per stage: 3 x 3.
    assert RATIO.size() == 5 + 9
    assignments = RATIO.assignments()
    assert {"per_stage": False, "ratio": 0.75} in assignments
    assert {"per_stage": True, "r1": 0.5, "r2": 1.0} in assignments


def test_to_arch_writes_paths_and_list_indices() -> None:
    shared = RATIO.to_arch(TINY, {"per_stage": False, "ratio": 0.25}).resolve()
    assert str(shared["layer1.0.bn1"]) == "ibn:ratio=0.25" and str(shared["layer2.1.bn1"]) == "ibn:ratio=0.25"
    split = RATIO.to_arch(TINY, {"per_stage": True, "r1": 0.5, "r2": 1.0}).resolve()
    assert str(split["layer1.0.bn1"]) == "ibn:ratio=0.5" and str(split["layer2.0.bn1"]) == "ibn:ratio=1.0"
    assert str(split["layer3.0.bn1"]) == "bn"


def test_sets_null_removes_a_rule() -> None:
    groups = load_space(str(ROOT / "normsearch" / "search_spaces" / "ibn_groups.yaml"))
    base = ArchConfig.from_dict({"backbone": {"preset": "resnet-small"}})
    none = groups.to_arch(base, {"groups": "none"})
    assert none.norm.ibn is None
    b12 = groups.to_arch(base, {"groups": "1-2", "variant": "b"}).resolve()
    assert b12.kind_counts()["in"] == 3  # stem + one post-addition IN in each of stages 1 and 2


def test_define_by_run_sampling_only_samples_active_parameters() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = study.ask()
        values = RATIO.sample(trial)
        seen.append(values)
        assert set(trial.params) == set(values)
        if values["per_stage"]:
            assert "ratio" not in values and {"r1", "r2"} <= set(values)
        else:
            assert set(values) == {"per_stage", "ratio"}
        study.tell(trial, 0.0)
    assert any(v["per_stage"] for v in seen) and not all(v["per_stage"] for v in seen)


def test_round_trip_through_json_keeps_the_space() -> None:
    again = Space.model_validate_json(RATIO.model_dump_json())
    assert again == RATIO and again.size() == RATIO.size()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {a: {type: bool, when: {b: true}}, b: {type: bool}}", "must be a parameter defined above"),
        ("params: {a: {type: float, low: 1, high: 0}}", "low 1.0 is above high 0.0"),
        ("params: {a: {type: categorical}}", "needs a non-empty choices list"),
        ("params: {a: {type: categorical, choices: [x], sets: {y: {}}}}", "'y' is not one of the choices"),
        ("params: {a: {type: bool}, b: {type: bool, when: {a: 3}}}", "a=3 is not a value a can take"),
        ("params: {a: {type: bool, lo: 1}}", "unknown key; did you mean 'low'?"),
    ],
)
def test_bad_spaces_name_the_key(text: str, message: str) -> None:
    with pytest.raises(NormsearchError, match=message):
        space(text)


def test_check_catches_impossible_placements_before_any_trial() -> None:
    bad = space("params: {stages: {type: categorical, choices: [x], sets: {x: {norm.ibn.stages: [7]}}}}")
    with pytest.raises(NormsearchError, match="stage 7 out of range"):
        bad.check(TINY, "recipe.yaml")
    xbn = load_space(str(ROOT / "normsearch" / "search_spaces" / "xbn_position.yaml"))
    with pytest.raises(
        NormsearchError, match="requires block=bottleneck; the recipe's model has block=basic"
    ):
        xbn.check(TINY, "recipe.yaml")


def test_every_shipped_space_names_its_paper_table_and_builds() -> None:
    names = {p.stem for p in list_spaces()}
    assert {
        "ibn_ratio",
        "ibn_groups",
        "sn_ratios",
        "xbn_position",
        "cn_probability",
        "joint",
        "quickstart",
    } <= names
    for path in list_spaces():
        loaded = load_space(str(path))
        assert "Table" in loaded.description or "Tables" in loaded.description, path
        assert (ROOT / "recipes" / path.name).is_file(), f"no recipe for {path.name}"


def test_continuous_space_has_no_size_but_is_probed() -> None:
    cont = space("params: {p: {type: float, low: 0.0, high: 1.0, path: norm.crossnorm.p}}")
    assert cont.size() is None
    assert cont.check(TINY, "inline") == 3


# --- issue 20: which file a space string names ---------------------------------------------------------
def test_a_bare_name_is_the_file_beside_the_recipe_else_the_shipped_space(tmp_path: Path) -> None:
    mine = tmp_path / "quickstart.yaml"
    mine.write_text("params:\n  x: {type: bool, path: norm.ibn.variant}\n")
    beside = load_space("quickstart.yaml", relative_to=tmp_path)
    assert beside.file == str(mine) and list(beside.params) == ["x"]
    shipped = load_space("quickstart", relative_to=tmp_path)  # no file named `quickstart` beside it
    assert shipped.file == str(ROOT / "normsearch" / "search_spaces" / "quickstart.yaml")
    assert load_space({"params": {}}).file is None


def test_a_path_with_a_folder_never_falls_back_to_a_shipped_space(tmp_path: Path) -> None:
    for spec in ("/nonexistent/dir/ibn_ratio.yaml", "sub/ibn_ratio.yaml", str(tmp_path / "ibn_ratio")):
        with pytest.raises(NormsearchError, match="no space file"):
            load_space(spec, relative_to=tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ibn_ratio.yaml").write_text("params: {}\n")
    assert load_space("sub/ibn_ratio.yaml", relative_to=tmp_path).file == str(tmp_path / "sub/ibn_ratio.yaml")


def test_a_recipe_is_never_taken_for_its_own_space(tmp_path: Path) -> None:
    """recipes/ibn_groups.yaml says `space: ibn_groups.yaml`: the shipped space, not the recipe beside it."""
    recipe = tmp_path / "ibn_groups.yaml"
    recipe.write_text("name: x\n")
    found = load_space("ibn_groups.yaml", relative_to=tmp_path, exclude=recipe)
    assert found.file == str(ROOT / "normsearch" / "search_spaces" / "ibn_groups.yaml")
