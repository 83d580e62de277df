"""Real searches: Ray Tune trials, an Optuna study on disk, trials.jsonl, the CLI on a finished run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
import torch
from typer.testing import CliRunner

from normsearch import build_model
from normsearch.cli import app
from normsearch.results.front import compute_front
from normsearch.run.folder import RunFolder
from normsearch.search.ray import start_ray

if TYPE_CHECKING:
    from tests.conftest import Tiny

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
# Every test here runs `normsearch run` through Ray Tune.
pytestmark = pytest.mark.slow
OPTUNA_CLI = (
    str(Path(sys.executable).with_name("optuna"))
    if Path(sys.executable).with_name("optuna").exists()
    else (shutil.which("optuna") or "optuna")
)


def run(recipe: str, out: Path, tiny: Iterable[str], *extra: str) -> str:
    """`normsearch run` on a built-in recipe at the tiny budget; `extra` flags come after it and win."""
    result = runner.invoke(app, ["run", str(ROOT / "recipes" / recipe), "--output", str(out), *tiny, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


@pytest.fixture(scope="module")
def tiny(tiny: Tiny) -> Tiny:
    """The suite's tiny budget at 16-pixel images (the recipes' default is 32): a trial trains about 4x
    faster. Nothing here measures accuracy or a trial's duration; every code path (data, Ray Tune, the
    study, the records, the CLI on the run) is the same at either size."""
    return tiny.but({"data.size": 16})


def study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tiny) -> tuple[Path, str]:
    start_ray(None, num_cpus=2)
    out = tmp_path_factory.mktemp("runs") / "quick"
    return out, run("quickstart.yaml", out, tiny)


def test_quickstart_runs_every_configuration_and_records_them(quickstart, ray_local) -> None:
    out, stdout = quickstart
    assert "Pareto front" in stdout and "selected on held-out domains texture, pastel" in stdout
    trials = RunFolder.open(out).trials()
    assert len(trials) == 5 and all(t.complete for t in trials)
    configs = sorted(json.dumps(t.config, sort_keys=True) for t in trials)
    assert len(set(configs)) == 5  # the grid visits each configuration once
    for t in trials:
        assert 0 <= t.metrics["source_val_acc"] <= 100 and t.epoch == 2
        assert set(t.test) >= {"source", "noisy", "fog"} and t.versions["normsearch"]
    st = study(out, "quickstart")
    assert st.metric_names == ["source_val_acc", "target_select_acc"]
    complete = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(tuple(t.values) for t in complete) == sorted(
        (t.metrics["source_val_acc"], t.metrics["target_select_acc"]) for t in trials
    )
    for name in ("recipe.yaml", "space.yaml", "trials.jsonl", "study.db"):
        assert (out / name).is_file()


def test_optuna_cli_lists_the_same_trials(quickstart) -> None:
    out, _ = quickstart
    listed = subprocess.run(
        [
            OPTUNA_CLI,
            "trials",
            "--study-name",
            "quickstart",
            "--storage",
            f"sqlite:///{out / 'study.db'}",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(listed.stdout)
    assert len(rows) == 5 and {r["state"] for r in rows} == {"COMPLETE"}


def test_show_pareto_and_export_rebuild_the_chosen_network(quickstart, tmp_path: Path) -> None:
    out, _ = quickstart
    shown = runner.invoke(app, ["show", str(out), "--sort", "source", "--top", "3"])
    assert shown.exit_code == 0 and "★" in shown.stdout and "test domains noisy, fog" in shown.stdout
    png, html = tmp_path / "front.png", tmp_path / "front.html"
    front = runner.invoke(app, ["pareto", str(out), "--plot", str(png), "--html", str(html)])
    assert front.exit_code == 0 and "hypervolume" in front.stdout
    assert png.read_bytes()[:4] == b"\x89PNG" and "plotly" in html.read_text()
    best = tmp_path / "best.yaml"
    exported = runner.invoke(app, ["export", str(out), "--pick", "knee", "-o", str(best), "--test"])
    assert exported.exit_code == 0, exported.output
    assert "measured after selection" in exported.stdout
    trials = {t.trial_id: t for t in RunFolder.open(out).trials()}
    import yaml

    document = yaml.safe_load(best.read_text())
    chosen = trials[document["provenance"]["trial"]]
    assert (
        chosen.trial_id
        in compute_front(
            list(trials.values()), {"source_val_acc": "max", "target_select_acc": "max"}
        ).member_ids()
    )
    rebuilt, direct = build_model(best), build_model(chosen.arch)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in direct.state_dict().items()
    ]
    assert rebuilt.plan == direct.plan
    torch.manual_seed(0)
    rebuilt.load_state_dict(direct.state_dict())
    x = torch.randn(4, 3, 32, 32)
    rebuilt.eval(), direct.eval()
    assert torch.equal(rebuilt(x), direct(x))
    by_id = runner.invoke(
        app, ["export", str(out), "--trial", chosen.trial_id, "-o", str(tmp_path / "t.yaml")]
    )
    assert by_id.exit_code == 0 and yaml.safe_load((tmp_path / "t.yaml").read_text())["arch"] == chosen.arch
    unknown = runner.invoke(app, ["export", str(out), "--trial", "nope", "-o", str(tmp_path / "u.yaml")])
    assert unknown.exit_code == 2 and "no trial 'nope'" in unknown.stderr
    bad = runner.invoke(app, ["export", str(out), "-o", str(best)])
    assert bad.exit_code == 2 and "exactly one of --trial ID or --pick" in bad.stderr


def test_asha_prunes_and_pruned_trials_stay_off_the_front(tmp_path: Path, ray_local, tiny) -> None:
    out = tmp_path / "asha"
    run(
        "sn_ratios.yaml",
        out,
        tiny,
        "--num-samples",
        "6",
        "--set",
        "train.epochs=4",
        "--set",
        "search.scheduler.grace_period=1",
        "--set",
        "search.scheduler.reduction_factor=2",
    )
    trials = RunFolder.open(out).trials()
    pruned = [t for t in trials if t.status == "pruned"]
    complete = [t for t in trials if t.complete]
    assert pruned, "ASHA stopped no trial"
    assert all(t.epoch < 4 for t in pruned) and all(t.epoch == 4 for t in complete)
    trained = [t for t in study(out, "sn_ratios").trials if "repeat_of" not in t.user_attrs]
    counts = {s: sum(t.state == s for t in trained) for s in optuna.trial.TrialState}
    assert counts[optuna.trial.TrialState.PRUNED] == len(pruned)
    assert counts[optuna.trial.TrialState.COMPLETE] == len(complete)
    assert len({t.key() for t in pruned + complete}) == len(pruned + complete)  # none trained twice
    front_ids = compute_front(trials, recipe_objectives()).member_ids()
    assert not front_ids & {t.trial_id for t in pruned}


def recipe_objectives() -> dict[str, str]:
    return {"source_val_acc": "max", "target_select_acc": "max"}


@pytest.mark.parametrize("recipe", ["ibn_ratio", "ibn_groups", "xbn_position", "cn_probability"])
def test_paper_recipes_run_end_to_end(recipe: str, tmp_path: Path, ray_local, tiny) -> None:
    out = tmp_path / recipe
    stdout = run(f"{recipe}.yaml", out, tiny, "--num-samples", "2")
    trials = RunFolder.open(out).trials()
    assert len(trials) == 2 and all(t.complete for t in trials), [t.status for t in trials]
    assert "Pareto front" in stdout
    for t in trials:
        assert build_model(t.arch) is not None


@pytest.mark.parametrize("algorithm", ["nsga2"])  # grid over the same space: tests/search/test_ledger.py
def test_three_point_space_with_six_samples_trains_each_configuration_once_and_says_so(
    tmp_path: Path, ray_local, tiny, algorithm: str
) -> None:
    out = tmp_path / algorithm
    space = "{params: {ratio: {type: categorical, choices: [0.25, 0.5, 0.75], path: norm.ibn.ratio}}}"
    stdout = run(
        "quickstart.yaml",
        out,
        tiny,
        "--num-samples",
        "6",
        "--set",
        f"search.space={space}",
        "--set",
        f"search.algorithm={algorithm}",
        "--set",
        "model.norm.ibn={stages: [1]}",
        "--set",
        "train.epochs=1",
    )
    trials = RunFolder.open(out).trials()
    trained = [t for t in trials if t.status != "repeat"]
    assert sorted(t.config["ratio"] for t in trained) == [0.25, 0.5, 0.75]
    assert "space exhausted: all 3 configuration(s) trained" in " ".join(stdout.split())
    repeats = [t for t in study(out, "quickstart").trials if "repeat_of" in t.user_attrs]
    assert len(repeats) == sum(t.status == "repeat" for t in trials)


# Last in this module: it shuts down the module's shared local Ray, which the tests above reuse.
def test_run_on_a_two_node_cluster_uses_both_nodes(tmp_path: Path, tiny) -> None:
    """A two-node Ray cluster on loopback, started by the test (not `ray start`, which binds beyond
    loopback, and not `ray stop`, which ends every Ray process on the machine)."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the shared local session (this test comes last: no later test here restarts it)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        run("quickstart.yaml", out, tiny, "--address", cluster.address, "--num-samples", "4")
        trials = RunFolder.open(out).trials()
        assert len(trials) == 4 and all(t.complete for t in trials)
        nodes = set().union(*(t.nodes for t in trials))
        assert len(nodes) == 2, nodes
        assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
