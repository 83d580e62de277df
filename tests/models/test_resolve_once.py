"""ArchConfig -> NormPlan happens once per trained candidate: models, weight inheritance and the trainer
read the plan (issue 19). Counted by a wrapper that still calls the real `ArchConfig.resolve`."""

from __future__ import annotations

import pytest
import torch

from normsearch.arch import ArchConfig
from normsearch.data.spec import DataConfig, load_data
from normsearch.models import build_model, build_network
from normsearch.models.weights import Checkpoint, save_checkpoint
from normsearch.train import TrainConfig, train_candidate

DATA = DataConfig(select=["texture"], test=["fog"], n_train=20, n_val=10, n_test=10)


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = ArchConfig.resolve

    def counting(self: ArchConfig, source: str = "config"):
        calls.append(source)
        return real(self, source)

    monkeypatch.setattr(ArchConfig, "resolve", counting)
    return calls


@pytest.mark.slow
def test_one_resolution_per_trained_candidate_with_inherited_weights(tmp_path, resolutions) -> None:
    mini = {"backbone": {"preset": "resnet-mini"}}
    path = save_checkpoint(
        Checkpoint(build_model(mini).state_dict(), "t", "normsearch", ArchConfig.from_dict(mini).to_dict()),
        tmp_path / "w.pt",
    )
    # IBN-a, an after-addition IN and SelfNorm: inheritance must know which modules the plan added.
    arch = ArchConfig.from_dict(
        {
            "backbone": {"preset": "resnet-mini", "weights": str(path)},
            "norm": {"ibn": {}, "overrides": {"layer1.0.post": "in"}, "selfnorm": {}},
        }
    )
    data = load_data(DATA)
    resolutions.clear()
    result = train_candidate(arch, data, DATA, TrainConfig(epochs=1, batch_size=10), seed=0, threads=1)
    assert len(resolutions) == 1
    init = result.extra["init"]
    assert init["init"] == "weights" and init["new"] == 4  # the post IN and 3 SelfNorms, added by the plan


def test_build_model_resolves_once_and_build_network_never(tmp_path, resolutions) -> None:
    arch = {"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"ratio": 0.25}}}
    path = tmp_path / "arch.yaml"
    path.write_text(ArchConfig.from_dict(arch).to_yaml())
    resolutions.clear()
    torch.manual_seed(0)
    from_file = build_model(path)
    assert len(resolutions) == 1
    plan = ArchConfig.from_dict(arch).resolve()
    resolutions.clear()
    torch.manual_seed(0)
    from_plan = build_network(plan)
    assert resolutions == []
    a, b = from_file.state_dict(), from_plan.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trials_worker_resolves_its_sampled_values_once_and_the_space_check_once_each(resolutions) -> None:
    """The worker rebuilds the ArchConfig of its sampled values without resolving it (the driver did, when
    it sampled them), so training's resolution is the trial's only one; `Space.check` resolves each
    assignment once, and still refuses an impossible one in one line."""
    from normsearch.errors import NormsearchError
    from normsearch.space import Space

    base = ArchConfig.from_dict({"backbone": {"preset": "resnet-mini"}, "norm": {"ibn": {"stages": [1]}}})
    space = Space.model_validate(
        {"params": {"ratio": {"type": "categorical", "choices": [0.25, 0.5], "path": "norm.ibn.ratio"}}}
    )
    resolutions.clear()
    arch = space.to_arch(base, {"ratio": 0.25}, resolve=False)
    assert resolutions == [] and arch.norm.ibn.ratio == 0.25
    assert space.check(base, "recipe") == 2 and len(resolutions) == 2
    bad = Space.model_validate({"fixed": {"norm.ibn.stages": [7]}, "params": space.model_dump()["params"]})
    with pytest.raises(NormsearchError, match="stage"):
        bad.check(base, "recipe")
