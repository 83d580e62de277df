"""`normsearch predict`: the finalized model's class and probability for each image, one CSV row per image.

Images are given as files or folders (searched recursively for image files, in sorted order). Rows are
written batch by batch (each batch flushed), so an interrupted predict keeps what it finished: run again with
the same ``-o`` and the images already in the file are not predicted again, provided the file holds this
model's predictions (its ``model`` column: the weights' fingerprint).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from normsearch.data.folder import IMAGE_SUFFIXES
from normsearch.deploy.model import Preprocess, load_model
from normsearch.errors import NormsearchError
from normsearch.norms.running import recalibrate_bn
from normsearch.run.files import os_errors
from normsearch.run.finalized import FinalFolder
from normsearch.train import EVAL_BATCH, predicted_logits

COLUMNS = ["path", "class", "probability", "model"]


@dataclass
class PredictProgress:
    total: int
    done: int = 0  # images predicted by this call
    kept: int = 0  # images already in the output file


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by `inputs` (files, or folders searched recursively), each once, in order. A
    named file that is not an image, a missing path, or a folder without images is one line."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise NormsearchError(f"{path}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise NormsearchError(f"{path}: not an image file; allowed: {', '.join(IMAGE_SUFFIXES)}")
            found.append(path)
        else:
            raise NormsearchError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def _kept(out: Path, model_id: str) -> set[str]:
    """Paths already predicted in `out` by this model; another model's file is refused."""
    if not out.exists():
        return set()
    with os_errors(out, "read"), out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return set()
    if rows[0] != COLUMNS:
        raise NormsearchError(f"-o {out}: exists and is not a predict output; give another file")
    other = {r[3] for r in rows[1:] if len(r) == 4 and r[3] != model_id}
    if other:
        raise NormsearchError(
            f"-o {out}: holds predictions of another model ({sorted(other)[0]}); give another file"
        )
    return {r[0] for r in rows[1:] if len(r) == 4}


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def predict(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    batch_size: int = 64,
    device: str = "cpu",
    on_progress: Callable[[PredictProgress], None] | None = None,
) -> PredictProgress:
    """Predict every image of `inputs` with the model in `model_dir` and append a row per image to the CSV
    `out` (module docstring). Returns how many were predicted now and how many were already there.

    The model's test-time statistics policy (`Preprocess.policy`) applies as in training's evaluation,
    with its batches of `EVAL_BATCH` images whatever `batch_size`: batch and mix use the statistics of each
    batch, adabn re-estimates on all the images given first. Batches are cut from the whole sorted list,
    so a rerun after an interruption predicts the images left with the same batches (and numbers) as one
    uninterrupted call."""
    if batch_size < 1:
        raise NormsearchError(f"--batch-size {batch_size}: give at least 1")
    out = Path(out)
    model_id = FinalFolder.open(model_dir).weights_id()
    paths = list_images(inputs)
    kept = _kept(out, model_id)
    todo = [p for p in paths if str(p) not in kept]
    model, preprocess = load_model(model_dir, device)
    progress = PredictProgress(total=len(paths), kept=len(paths) - len(todo))
    policy = preprocess.policy
    if policy != "running":  # the statistics of a batch depend on its size: training's evaluation batches
        batch_size = EVAL_BATCH
    if policy == "adabn" and todo:  # re-estimated once, on every image given (not only those left)
        _adapt(model, preprocess, paths, batch_size, device)
        policy = "running"
    if on_progress is not None:
        on_progress(progress)
    fresh = not out.exists() or out.stat().st_size == 0
    with os_errors(out, "write predictions"), out.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if fresh:
            writer.writerow(COLUMNS)
        for batch in _batches(paths, batch_size):
            left = [str(p) not in kept for p in batch]
            if not any(left):
                continue
            pixels = torch.stack([preprocess.pixels(p) for p in batch])
            logits = predicted_logits(model, pixels, preprocess.standardize, len(batch), policy)
            best, index = logits.softmax(1).max(1)
            for path, p, i, new in zip(batch, best.tolist(), index.tolist(), left, strict=True):
                if new:
                    writer.writerow([str(path), preprocess.classes[i], f"{p:.6f}", model_id])
            handle.flush()
            progress.done += sum(left)
            if on_progress is not None:
                on_progress(progress)
    return progress


def _adapt(
    model: torch.nn.Module, preprocess: Preprocess, paths: list[Path], batch_size: int, device: str
) -> None:
    """adabn: the model's BN statistics re-estimated on every image given (unlabelled), in batches."""

    def batches() -> Iterator[torch.Tensor]:
        for batch in _batches(paths, batch_size):
            yield preprocess.batch(batch).to(device)

    recalibrate_bn(model, batches(), 1_000_000)


def read_predictions(out: str | Path) -> list[dict[str, str]]:
    """The rows of a predict output."""
    with Path(out).open(newline="") as handle:
        return list(csv.DictReader(handle))
