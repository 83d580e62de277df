"""The deployable model's parts without Ray: the finalize data section, the safe weight format, the
preprocessing (against the hand formula and the training loader), the seed ensemble, image listing, and the
one-line refusals of what is not a finalize output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from normsearch.cli import app
from normsearch.data.folder import load_folder
from normsearch.data.spec import DataConfig
from normsearch.deploy.model import Preprocess, SeedEnsemble
from normsearch.deploy.predict import list_images
from normsearch.errors import NormsearchError
from normsearch.run.finalized import FinalFolder, load_weights_file, save_weights
from normsearch.search.finalize import final_data

runner = CliRunner()


def test_final_data_trains_every_rotated_source_and_reports_the_rest() -> None:
    rotated = DataConfig(
        dataset="folder",
        root="/data",
        source=["art", "cartoon", "photo"],
        test=["sketch"],
        rotate=True,
        selection="training_domain",
    )
    final = final_data(rotated)
    (unit,) = final.units()
    assert unit.sources == ("art", "cartoon", "photo") and unit.select == () and unit.test == ("sketch",)
    assert unit.held_out is None and final.val_fraction == rotated.val_fraction and final.seed == rotated.seed
    held_out = DataConfig(source="plain", select=["texture"], test=["fog"])  # held_out selection
    (unit,) = final_data(held_out).units()
    assert unit.sources == ("plain",) and unit.test == ("texture", "fog") and unit.select == ()


def test_weights_round_trip_as_safetensors_and_a_torn_file_is_one_line(tmp_path: Path) -> None:
    state = torch.nn.Conv2d(3, 4, 3).state_dict() | {"bn.num_batches_tracked": torch.tensor(7)}
    path = tmp_path / "w.safetensors"
    save_weights(state, path, {"seed": "0"})
    loaded = load_weights_file(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NormsearchError, match="unreadable weights"):
        load_weights_file(path)


def _png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_preprocess_is_the_hand_formula_and_the_training_loaders_pixels(tmp_path: Path) -> None:
    path = _png(tmp_path / "root" / "d" / "cat" / "0.png", 23, 37)  # non-square, not the model's size
    _png(tmp_path / "root" / "d" / "dog" / "0.png", 9, 9, seed=1)
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    preprocess = Preprocess(16, mean, std, ["cat", "dog"])
    x = preprocess(path)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    raw = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float()
    resized = F.interpolate(raw, size=(16, 16), mode="bilinear", antialias=True).round().clamp(0, 255)
    expected = (resized[0] / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(x, expected, atol=1e-6)
    data, _ = load_folder(tmp_path / "root", ["d"], 16, use_cache=False)
    assert torch.equal(preprocess.pixels(path), data["d"].images[0])  # what training and evaluate decode
    assert torch.equal(preprocess(Image.open(path)), x) and preprocess.batch([path, path]).shape == (
        2,
        3,
        16,
        16,
    )


def test_the_seed_ensemble_outputs_the_log_of_the_members_mean_probability() -> None:
    torch.manual_seed(0)
    members = [torch.nn.Linear(5, 3) for _ in range(3)]
    x = torch.randn(4, 5)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    assert torch.allclose(SeedEnsemble(members)(x).softmax(1), expected, atol=1e-6)


def test_list_images_takes_files_and_folders_and_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    a = _png(tmp_path / "f" / "b" / "2.png", 8, 8)
    b = _png(tmp_path / "f" / "a.png", 8, 8)
    (tmp_path / "f" / "notes.txt").write_text("x")
    assert list_images([tmp_path / "f", b]) == [b, a]  # sorted, each once, non-images in folders skipped
    with pytest.raises(NormsearchError, match=r"notes.txt: not an image file; allowed: \.png"):
        list_images([tmp_path / "f" / "notes.txt"])
    with pytest.raises(NormsearchError, match="no such file or folder"):
        list_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NormsearchError, match="no image files in this folder"):
        list_images([tmp_path / "empty"])


def test_a_folder_that_is_not_a_finalize_output_is_one_line_exit_2(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: x\n")
    image = _png(tmp_path / "x.png", 8, 8)
    for target, says in ((run, "a run folder, not a finalize output"), (tmp_path / "nope", "no such folder")):
        for args in (
            ["evaluate", str(target), "--root", str(tmp_path)],
            ["predict", str(target), str(image)],
        ):
            result = runner.invoke(app, [*args, "-o", str(tmp_path / "out.csv")])
            assert result.exit_code == 2, result.output
            assert says in result.output and "Traceback" not in result.output
            assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(NormsearchError, match="not a finalize output"):
        FinalFolder.open(tmp_path)  # a folder holding other things


def _model_folder(
    tmp_path: Path, policy: str, classes: list[str]
) -> tuple[Path, torch.nn.Module, Preprocess]:
    """A finalize output written through FinalFolder's own writers: a resnet-mini with random weights whose
    ArchConfig says test-time statistics `policy`, 16 px, the given classes."""
    from normsearch.arch import ArchConfig
    from normsearch.models import build_model

    arch = ArchConfig.from_dict(
        {"backbone": {"preset": "resnet-mini", "num_classes": len(classes)}, "norm": {"inference": policy}}
    )
    torch.manual_seed(0)
    network = build_model(arch).eval()
    folder = FinalFolder(tmp_path / "model")
    folder.start({"run": "hand-made", "trial": "t000", "seeds": [0]})
    folder.write_weights(folder.weights_name(0, 1), network.state_dict(), {"seed": "0"})
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    folder.write_preprocessing({"input_size": [16, 16], "mean": mean, "std": std, "classes": classes})
    data = DataConfig(
        dataset="folder", root=str(tmp_path / "elsewhere"), source="d", test=[], selection="training_domain"
    )
    provenance = {"trial": "t000", "trained_on": ["d"], "seeds": [0], "data": data.model_dump(mode="json")}
    folder.write_document({"arch": arch.to_dict(), "provenance": provenance})
    return folder.path, network, Preprocess(16, mean, std, classes)


def _hand_probabilities(network: torch.nn.Module, x: torch.Tensor, policy: str) -> torch.Tensor:
    """What each policy means, written with torch's own BatchNorm modes: batch = every BN normalizes with
    the batch's statistics (train mode; running averages untouched: momentum 0); adabn = the running
    statistics replaced by the cumulative average over the images (momentum None), then eval mode."""
    import copy

    model = copy.deepcopy(network).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        if policy == "batch":
            for bn in bns:
                bn.train()
                bn.momentum = 0.0
        elif policy == "adabn":
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
                bn.train()
            model(x)
            model.eval()
        return model(x).softmax(1)


@pytest.mark.parametrize("policy", ["batch", "adabn"])
def test_evaluate_and_predict_apply_the_models_test_time_statistics_policy(
    tmp_path: Path, policy: str
) -> None:
    """A configuration selected under `batch` or `adabn` is measured so by `evaluate` and `predict`, as
    training measured it: equal to the hand formula above, and not what running statistics give."""
    from normsearch.deploy.evaluate import evaluate
    from normsearch.deploy.predict import predict, read_predictions

    classes = ["a", "b", "c"]
    model_dir, network, preprocess = _model_folder(tmp_path, policy, classes)
    paths = [_png(tmp_path / "root" / "d" / classes[k % 3] / f"{k}.png", 16, 16, seed=k) for k in range(30)]
    images = sorted(paths)
    x = preprocess.batch(images)
    expected = _hand_probabilities(network, x, policy)
    assert not torch.allclose(expected, _hand_probabilities(network, x, "running"), atol=1e-3)
    out = tmp_path / "predictions.csv"
    predict(model_dir, [tmp_path / "root"], out, batch_size=7)  # --batch-size does not cut the statistics
    rows = read_predictions(out)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    best, index = expected.max(1)
    assert [r["class"] for r in rows] == [classes[i] for i in index.tolist()]
    assert np.allclose([float(r["probability"]) for r in rows], best.numpy(), atol=1e-5)
    labels = torch.tensor([classes.index(p.parent.name) for p in images])
    evaluation = evaluate(model_dir, root=tmp_path / "root")
    (result,) = evaluation.results
    assert result.accuracy == pytest.approx(100.0 * float((index == labels).float().mean()))
    assert evaluation.policy == policy
