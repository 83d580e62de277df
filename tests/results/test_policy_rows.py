"""A space's test-time statistics `policies`: parsing and the old form, the (trial, policy) rows records turn
into, the front over (network, policy), the units' per-policy numbers combined, and the study's attributes.
Hand-written records with hand-computed expectations; no training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from normsearch.arch import ArchConfig
from normsearch.cli import app
from normsearch.data.protocol import Unit
from normsearch.errors import NormsearchError
from normsearch.metrics import POLICIES, SOURCE_VAL_ACC, TARGET_SELECT_ACC
from normsearch.results.front import compute_front, policy_row
from normsearch.run.records import (
    TrialRecord,
    candidate_record,
    config_key,
    fold_records,
    policy_rows,
    policy_view,
)
from normsearch.run.study import close_trial
from normsearch.space import load_space

ROOT = Path(__file__).resolve().parents[2]
BASE = ArchConfig.from_dict({"backbone": {"preset": "resnet-mini"}})
OBJECTIVES = {SOURCE_VAL_ACC: "max", TARGET_SELECT_ACC: "max"}


def _space(text: str):
    return load_space(yaml.safe_load(text), source="inline")


def test_policies_are_normalised_and_the_first_is_the_networks_own() -> None:
    space = _space(
        "policies: [running, 'MIX:alpha=0.50', adabn]\nparams: {n: {type: categorical, choices: [a]}}"
    )
    assert space.policies == ["running", "mix:alpha=0.5", "adabn"]
    assert space.size() == 1  # evaluated, not searched: one configuration
    assert space.to_arch(BASE, {"n": "a"}).norm.inference == "running"
    adabn_first = _space("policies: [adabn, running]")
    assert adabn_first.to_arch(BASE, {}).norm.inference == "adabn"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policies: [running, median]", "policies: test-time statistics 'median': allowed: running, batch"),
        ("policies: [batch, batch]", "lists a policy twice"),
        ("policies: ['mix:alpha=2']", "write mix:alpha=A with A in \\[0, 1\\]"),
        (
            "policies: [running]\nparams: {i: {type: categorical, choices: [adabn], path: norm.inference}}",
            "params.i writes norm.inference while `policies` evaluates every trained network",
        ),
        ("policies: [running]\nfixed: {norm.inference: batch}", "fixed.norm.inference writes norm.inference"),
    ],
)
def test_a_bad_policies_list_is_one_line(text: str, message: str) -> None:
    with pytest.raises(NormsearchError, match=message):
        _space(text)


def test_the_old_form_still_searches_the_policy_as_a_parameter() -> None:
    old = _space("params: {inference: {type: categorical, choices: [running, adabn], path: norm.inference}}")
    assert old.policies == [] and old.size() == 2
    assert old.to_arch(BASE, {"inference": "adabn"}).norm.inference == "adabn"


def test_a_bad_policy_in_a_space_file_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("policies: [running, adabn, tent]\nparams: {}\n")
    (tmp_path / "r.yaml").write_text("name: r\nsearch: {space: ./s.yaml}\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "--dry-run", "--no-estimate"])
    assert result.exit_code == 2, result.output
    assert "s.yaml" in result.output and "policies" in result.output and "'tent'" in result.output
    assert "Traceback" not in result.output


def test_every_shipped_space_with_policies_lists_running_first() -> None:
    for name in ("inference_stats", "joint"):
        space = load_space(str(ROOT / "normsearch" / "search_spaces" / f"{name}.yaml"))
        assert space.policies[0] == "running" and "adabn" in space.policies, name


def _trial(
    tid: str, network: str, own: tuple[float, float], others: dict[str, tuple[float, float]]
) -> TrialRecord:
    arch = {"backbone": {"preset": "resnet-mini"}, "norm": {"inference": "running"}}
    if network == "ibn":
        arch["norm"]["ibn"] = {"variant": "a", "stages": [1]}

    def numbers(pair: tuple[float, float]) -> dict:
        return {
            "metrics": {SOURCE_VAL_ACC: pair[0], TARGET_SELECT_ACC: pair[1]},
            "test": {"fog": pair[1] - 1},
        }

    policies = {p: numbers(v) for p, v in others.items()}  # the own policy's are the record's numbers
    return TrialRecord(
        trial_id=tid,
        status="complete",
        config={"network": network},
        metrics={SOURCE_VAL_ACC: own[0], TARGET_SELECT_ACC: own[1], "epoch": 3, "params": 1000},
        test={"fog": own[1] - 1},
        arch=arch,
        extra={POLICIES: policies},
    )


def test_a_trial_becomes_one_row_per_policy_with_that_policys_numbers_and_arch() -> None:
    trial = _trial("t000", "bn", (80.0, 40.0), {"adabn": (79.0, 55.0), "batch": (70.0, 50.0)})
    rows = policy_rows(trial)
    assert [r.policy for r in rows] == ["running", "adabn", "batch"]
    assert {r.trial_id for r in rows} == {"t000"}
    adabn = rows[1]
    assert adabn.metrics == {SOURCE_VAL_ACC: 79.0, TARGET_SELECT_ACC: 55.0, "epoch": 3, "params": 1000}
    assert adabn.test == {"fog": 54.0} and adabn.arch["norm"]["inference"] == "adabn"
    assert trial.arch["norm"]["inference"] == "running"  # the record itself is untouched
    assert len({config_key(r.arch) for r in rows}) == 3  # three (network, policy) pairs
    assert policy_view(trial, "mix:alpha=0.5") is None
    with pytest.raises(NormsearchError, match="trial t000 was not evaluated under it; its policies: running"):
        policy_row(trial, "mix:alpha=0.5")
    assert policy_row(trial, "ADABN").policy == "adabn"
    # A record evaluated under one policy is one row, labelled with its arch's policy.
    single = TrialRecord("t001", "complete", {}, arch={"norm": {"inference": "batch"}})
    assert [r.policy for r in policy_rows(single)] == ["batch"]


def test_the_front_is_over_network_and_policy_pairs() -> None:
    trials = [
        _trial("t000", "bn", (80.0, 40.0), {"adabn": (79.0, 55.0)}),
        _trial("t001", "ibn", (78.0, 45.0), {"adabn": (76.0, 50.0)}),
    ]
    front = compute_front([r for t in trials for r in policy_rows(t)], OBJECTIVES)
    assert len(front.points) == 4
    # (80, 40) is the best source, (79, 55) the best target; (78, 45) and (76, 50) are dominated by (79, 55).
    assert front.member_rows() == {("t000", "running"), ("t000", "adabn")}
    assert sorted(front.points[i] for i in front.members) == [(79.0, 55.0), (80.0, 40.0)]


def test_a_candidate_of_several_units_combines_each_policy_over_its_units() -> None:
    units = [Unit("a", ("x",), (), ("z",)), Unit("b", ("y",), (), ("z",))]
    outcomes = {}
    for name, (run_src, ada_src) in {"a": (60.0, 70.0), "b": (80.0, 50.0)}.items():
        record = {
            "trial_id": f"t000@{name}",
            "status": "complete",
            "metrics": {SOURCE_VAL_ACC: run_src},
            "test": {"z": run_src},
            "extra": {
                POLICIES: {"adabn": {"metrics": {SOURCE_VAL_ACC: ada_src}, "test": {"z": ada_src + 1}}}
            },
        }
        outcomes[name] = fold_records([record])[0]
    combined = candidate_record("t000", units, outcomes, {"arch": {"norm": {}}})
    assert combined["metrics"] == {SOURCE_VAL_ACC: 70.0} and combined["test"] == {"z": 70.0}
    assert combined["extra"][POLICIES] == {"adabn": {"metrics": {SOURCE_VAL_ACC: 60.0}, "test": {"z": 61.0}}}


def test_the_study_is_told_the_own_policys_objectives_and_keeps_the_others_as_attributes() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    number = study.ask().number
    trial = _trial("t000", "bn", (80.0, 40.0), {"adabn": (79.0, 55.0)})
    assert close_trial(study, number, trial, OBJECTIVES) == "COMPLETE"
    told = study.trials[number]
    assert told.values == [80.0, 40.0]
    assert told.user_attrs["policy"] == "running"
    assert told.user_attrs[f"policy/adabn/{TARGET_SELECT_ACC}"] == 55.0
    assert f"policy/running/{SOURCE_VAL_ACC}" not in told.user_attrs  # that one is the trial's value
