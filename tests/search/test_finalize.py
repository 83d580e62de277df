"""`run` -> `finalize` -> `load_model` / `predict` / `evaluate` on a DomainBed-layout folder with two sources
under rotation (three classes, non-square images), and Ctrl-C in a piped `finalize`."""

from __future__ import annotations

import csv
import json
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import normsearch
from normsearch.cli import app
from normsearch.data.folder import load_folder
from normsearch.data.pipeline import Standardizer
from normsearch.deploy import SeedEnsemble
from normsearch.run.finalized import FinalFolder

runner = CliRunner()
pytestmark = pytest.mark.slow  # `run` and `finalize` train through Ray Tune
CLASSES = ["cat", "dog", "owl"]  # an odd class count


def _image_folder(root: Path) -> Path:
    """root/<domain>/<class>/<i>.png, 16x19 pixels: each domain tints, each class draws its own square."""
    rng = np.random.default_rng(0)
    for d, domain in enumerate(["a", "b", "c"]):
        for c, name in enumerate(CLASSES):
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(12):
                pixels = rng.integers(0, 80, (16, 19, 3), dtype=np.uint8)
                pixels[..., d] += 60
                pixels[2:7, 5 * c : 5 * c + 5] = 250
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def ray_module():
    import ray

    from normsearch.search.ray import start_ray

    if not ray.is_initialized():
        start_ray(None, num_cpus=2)
    yield


@pytest.fixture(scope="module")
def finalized(tmp_path_factory, ray_module, tiny) -> tuple[Path, Path, Path]:
    """(image root, run folder, finalize folder): one searched configuration, finalized on a and b."""
    base = tmp_path_factory.mktemp("finalize")
    root = _image_folder(base / "data")
    recipe = base / "recipe.json"
    data = {
        "dataset": "folder",
        "root": str(root),
        "size": 16,
        "source": ["a", "b"],
        "test": ["c"],
        "rotate": True,
        "selection": "training_domain",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    }
    recipe.write_text(
        json.dumps(
            {
                "name": "tiny-folder",
                "data": data,
                "model": {"backbone": {"preset": "resnet-mini"}},
                "train": {"batch_size": 8},
                "search": {"space": "quickstart", "algorithm": "grid", "num_samples": 1, "max_concurrent": 1},
            }
        )
    )
    run, out = base / "run", base / "final"
    flags = tiny.but({"data.n_train": None, "data.n_val": None, "data.n_test": None}).flags()
    result = runner.invoke(app, ["run", str(recipe), "--output", str(run), *flags])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["finalize", str(run), "--trial", "t000", "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wrote" in result.stdout and "normsearch.load_model" in result.stdout
    return root, run, out


def test_finalize_trains_one_model_on_every_source_with_their_own_statistics(finalized) -> None:
    root, run, out = finalized
    folder = FinalFolder.open(out)
    provenance = folder.document()["provenance"]
    assert provenance["trained_on"] == ["a", "b"] and provenance["reported"] == ["c"]
    assert provenance["trial"] == "t000" and provenance["run"] == str(run.resolve())
    (record,) = [r for r in folder.records() if r["status"] == "complete"]
    assert record["trial_id"] == "final/s0" and {"source/a", "source/b"} <= set(record["metrics"])
    assert set(record["test"]) >= {"source", "c"}  # the held-out domain reported after training
    pre = folder.preprocessing()
    assert pre["classes"] == CLASSES and pre["input_size"] == [16, 16]
    assert (
        pre["train_only_augmentation"]["translate"] == 2
        and "NOT applied" in pre["train_only_augmentation"]["note"]
    )
    # normalize: auto, no pretrained weights: the sources' own train-split statistics, fitted as training does
    data, _ = load_folder(root, ["a", "b"], 16, use_cache=False)
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    parts = [data[d].split_by_fractions(fractions, 0).split("train")[0] for d in ("a", "b")]
    fitted = Standardizer.fit(torch.cat(parts))
    assert pre["mean"] == fitted.mean.tolist() and pre["std"] == fitted.std.tolist()
    assert load_file(str(out / "weights.safetensors"))  # tensors only, read without unpickling
    assert not (out / "tune").exists()  # epoch checkpoints dropped once the weights are written


def test_load_model_and_predict_agree_on_a_png_of_another_size(finalized, tmp_path: Path) -> None:
    root, _, out = finalized
    image = tmp_path / "owl.png"
    Image.open(root / "c" / "owl" / "3.png").resize((41, 27)).save(image)
    preds = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(out), str(image), str(root / "c"), "-o", str(preds)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 37 and rows[0]["path"] == str(image)
    model, preprocess = normsearch.load_model(out)
    assert not model.training
    with torch.no_grad():
        probs = model(preprocess(image)[None]).softmax(1)[0]
    assert rows[0]["class"] == preprocess.classes[int(probs.argmax())]
    assert float(rows[0]["probability"]) == pytest.approx(float(probs.max()), abs=1e-6)
    again = runner.invoke(app, ["predict", str(out), str(image), "-o", str(preds)])
    assert again.exit_code == 0 and "0 predicted now (1 already in" in again.stdout


def test_evaluate_prints_the_held_out_domains_accuracy_as_load_model_measures_it(finalized) -> None:
    root, run, out = finalized
    model, preprocess = normsearch.load_model(out)
    paths = sorted((root / "c").rglob("*.png"))
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    with torch.no_grad():
        predicted = model(preprocess.batch(paths)).argmax(1)
    expected = 100.0 * float((predicted == labels).float().mean())
    result = runner.invoke(
        app, ["evaluate", str(out), "--root", str(root), "--domain", "c", "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert row["cells"]["c"]["mean"] == pytest.approx(expected, abs=1e-4)
    saved = [r for r in FinalFolder.open(out).evaluations() if r["domain"] == "c"]
    assert saved and saved[-1]["images"] == 36
    table = runner.invoke(app, ["evaluate", str(out), "--root", str(root), "--per-class"])
    assert table.exit_code == 0 and "a (source: test split)" in table.stdout
    assert all(f"class {name}" in table.stdout for name in CLASSES) and f"{expected:.1f}" in table.stdout
    by_recipe = runner.invoke(
        app, ["evaluate", str(out), "--recipe", str(run / "recipe.yaml"), "--domain", "c", "--format", "csv"]
    )
    assert by_recipe.exit_code == 0, by_recipe.output
    (row,) = [r for r in csv.DictReader(by_recipe.stdout.splitlines()) if r["column"] == "c"]
    assert 0.0 <= float(row["mean"]) <= 100.0 and row["n"] == "1"


def test_bad_inputs_are_one_line_exit_2(finalized, tmp_path: Path) -> None:
    root, run, out = finalized
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases = [
        (["evaluate", str(out), "--root", str(root), "--domain", "nope"], "--domain nope: no such domain"),
        (["predict", str(out), str(text), "-o", str(tmp_path / "p.csv")], "not an image file"),
        (["finalize", str(run), "--trial", "t000", "--seeds", "2", "-o", str(out)], "another request"),
        (["finalize", str(run), "--trial", "t999", "-o", str(tmp_path / "f")], "no trial 't999'"),
    ]
    for args, says in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output and len(result.output.strip().splitlines()) == 1, result.output
    same = runner.invoke(app, ["finalize", str(run), "--trial", "t000", "-o", str(out)])
    assert same.exit_code == 0 and "already on record, not trained again: final/s0" in same.stdout


def _lines(process: subprocess.Popen) -> tuple[queue.Queue, threading.Thread]:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def _next(lines: queue.Queue, deadline: float) -> str:
    try:
        return lines.get(timeout=max(deadline - time.monotonic(), 0.01))
    except queue.Empty:
        raise AssertionError("no line in time") from None


def test_a_piped_finalize_shows_progress_and_ctrl_c_says_how_to_continue(finalized, tmp_path: Path) -> None:
    _, run, _ = finalized
    out = tmp_path / "final"
    command = [sys.executable, "-m", "normsearch", "finalize", str(run), "--trial", "t000", "--seeds", "2"]
    process = subprocess.Popen(
        [*command, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, reader = _lines(process)
    first = _next(lines, time.monotonic() + 60)
    assert first.startswith("finalize: "), first  # a plain progress line within 60 s, output piped
    deadline = time.monotonic() + 300
    while "epoch 1/" not in (line := _next(lines, deadline)):
        assert process.poll() is None, line
    process.send_signal(signal.SIGINT)
    process.wait(timeout=180)
    reader.join(timeout=30)
    rest = "".join(lines.get() for _ in range(lines.qsize()))
    assert process.returncode == 130, rest
    assert "interrupted" in rest and "Continue with: normsearch finalize" in rest
    again = shlex.split(rest.split("Continue with: ")[1].splitlines()[0])
    assert again[:2] == ["normsearch", "finalize"]
    result = runner.invoke(app, again[1:])
    assert result.exit_code == 0, result.output
    terminal = [r["trial_id"] for r in FinalFolder.open(out).records() if r["status"] == "complete"]
    assert sorted(terminal) == ["final/s0", "final/s1"]  # each seed trained to the end exactly once
    model, _ = normsearch.load_model(out)
    assert isinstance(model, SeedEnsemble) and len(model.members) == 2
    # seed 0, interrupted and continued here, ends with the weights of the uninterrupted finalize
    first, resumed = (
        load_file(str(finalized[2] / "weights.safetensors")),
        load_file(str(out / "weights-s0.safetensors")),
    )
    assert set(first) == set(resumed) and all(torch.equal(first[k], resumed[k]) for k in first)
