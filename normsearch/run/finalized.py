"""The folder `normsearch finalize` writes: one deployable model, and the only code that knows its file names.

A finalize folder (``-o DIR``) holds, once finished::

    arch.yaml                the ArchConfig the weights fit (``arch``; `normsearch.build_model` reads it),
                             its provenance (run, trial, pick, recipe, seeds, versions, metrics) and, for
                             several seeds, each member's seed, weights file and ArchConfig (``members``)
    weights.safetensors      the trained weights (``weights-s<seed>.safetensors`` per seed for several)
    preprocessing.json       input size, resize rule, channel mean/std used in training, class names in
                             index order, and the training-only augmentation that is NOT applied at test time
    request.json             what was asked (run, trial, seeds): a rerun continues only the same request
    records.jsonl            one terminal record per seed (as a run's trials.jsonl)
    evaluations.jsonl        `normsearch evaluate`'s results, one record per domain, appended before shown

and, while training, ``tune/attempt-<k>/`` (epoch checkpoints: a rerun continues from them), ``driver.json``
and ``pretrained/base.pt`` (``train.init: pretrain``), all removed once the model is written. ``arch.yaml`` is
written last: its presence marks a finished folder. The weights are safetensors: nothing here is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from normsearch.config import read_mapping
from normsearch.errors import NormsearchError
from normsearch.run.files import atomic_write_bytes, atomic_write_text, os_errors
from normsearch.run.folder import DRIVER, PRETRAINED, RECIPE, TUNE, RunFolder
from normsearch.run.records import fold_records

ARCH = "arch.yaml"
PREPROCESSING = "preprocessing.json"
REQUEST = "request.json"
RECORDS = "records.jsonl"
EVALUATIONS = "evaluations.jsonl"
WEIGHTS_SUFFIX = ".safetensors"


def save_weights(state: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a state_dict as safetensors (tensors only: nothing is pickled), atomically. The one function
    that knows the weight format of a finalize folder (with `load_weights_file`)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_weights_file(path: Path) -> dict[str, Any]:
    """Read a state_dict written by `save_weights`; a torn or foreign file is one line naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise NormsearchError(f"{path}: unreadable weights ({str(error).splitlines()[0][:120]})") from None


class FinalFolder(RunFolder):
    """A finalize folder. It reuses a run folder's machinery for training through Ray Tune (attempts,
    epoch checkpoints, the driver claim, the pretrained base, appended records) under its own names, and
    adds the deployable artifacts. It is never a run folder: it has no recipe.yaml or study."""

    @classmethod
    def open(cls, path: str | Path) -> FinalFolder:
        """A finished finalize folder; anything else is one line saying what it is and how to make one."""
        folder = cls(path)
        if not folder.path.is_dir():
            raise NormsearchError(
                f"{path}: no such folder; make one with `normsearch finalize RUN -o {path}`"
            )
        if not (folder.path / ARCH).is_file():
            what = (
                "a run folder, not a finalize output"
                if (folder.path / RECIPE).is_file()
                else "unfinished finalize output (rerun the same `normsearch finalize` to continue)"
                if (folder.path / REQUEST).is_file()
                else "not a finalize output"
            )
            raise NormsearchError(
                f"{path}: {what} (no {ARCH}); make one with `normsearch finalize RUN -o {path}`"
            )
        for name in (PREPROCESSING,):
            if not (folder.path / name).is_file():
                raise NormsearchError(f"{path}: finalize output without {name}; run finalize again")
        return folder

    @staticmethod
    def is_finished(path: str | Path) -> bool:
        return (Path(path) / ARCH).is_file()

    # --- the request, checked when a rerun continues --------------------------------------------------
    def request(self) -> dict[str, Any] | None:
        path = self.path / REQUEST
        return json.loads(path.read_text()) if path.is_file() else None

    def start(self, request: dict[str, Any]) -> None:
        """Begin (or continue) a finalize of `request`; a folder holding anything else is refused."""
        if self.path.exists() and not self.path.is_dir():
            raise NormsearchError(f"-o {self.path}: is a file; give a folder for the finalized model")
        if (self.path / RECIPE).is_file():
            raise NormsearchError(f"-o {self.path}: holds a run; give a new folder for the finalized model")
        held = self.request()
        if held is None and self.path.is_dir() and any(self.path.iterdir()):
            raise NormsearchError(f"-o {self.path}: not empty and not a finalize output; give a new folder")
        if held is not None and held != request:
            diff = ", ".join(k for k in sorted(set(held) | set(request)) if held.get(k) != request.get(k))
            raise NormsearchError(
                f"-o {self.path}: holds a finalize of another request (differs in {diff}); give a new folder"
            )
        if held is None:
            with os_errors(self.path, "create the folder"):
                self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path / REQUEST, json.dumps(request, indent=1))

    # --- records (a run folder's methods, under this folder's file name) -----------------------------
    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    def trials(self) -> list:
        return fold_records(self.records())

    # --- the deployable artifacts ---------------------------------------------------------------------
    def weights_name(self, seed: int, n_seeds: int) -> str:
        return f"weights{WEIGHTS_SUFFIX}" if n_seeds == 1 else f"weights-s{seed}{WEIGHTS_SUFFIX}"

    def write_weights(self, name: str, state: dict[str, Any], metadata: dict[str, str]) -> None:
        save_weights(state, self.path / name, metadata)

    def weights(self, name: str) -> dict[str, Any]:
        path = self.path / name
        if not path.is_file():
            raise NormsearchError(f"{self.path}: {name} is missing; run finalize again")
        return load_weights_file(path)

    def weights_id(self) -> str:
        """A short fingerprint of the model's weights (sha256 of the weight files): what a prediction or an
        evaluation was made with."""
        import hashlib

        digest = hashlib.sha256()
        for path in sorted(self.path.glob(f"weights*{WEIGHTS_SUFFIX}")):
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def write_preprocessing(self, preprocessing: dict[str, Any]) -> None:
        atomic_write_text(self.path / PREPROCESSING, json.dumps(preprocessing, indent=1))

    def preprocessing(self) -> dict[str, Any]:
        path = self.path / PREPROCESSING
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise NormsearchError(f"{path}: unreadable ({str(error).splitlines()[0]})") from None

    def write_document(self, document: dict[str, Any]) -> None:
        """Write arch.yaml: last, since its presence marks the folder finished."""
        atomic_write_text(self.path / ARCH, yaml.safe_dump(document, sort_keys=False))

    def document(self) -> dict[str, Any]:
        return read_mapping(self.path / ARCH)

    @property
    def arch_path(self) -> Path:
        return self.path / ARCH

    def drop_training_state(self) -> None:
        """Remove the epoch checkpoints, the pretrained base and the driver file once the model is written
        (they only serve to continue an interrupted finalize)."""
        shutil.rmtree(self.path / TUNE, ignore_errors=True)
        shutil.rmtree(self.path / PRETRAINED, ignore_errors=True)
        (self.path / DRIVER).unlink(missing_ok=True)

    # --- evaluations ----------------------------------------------------------------------------------
    def append_evaluation(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with os_errors(self.path / EVALUATIONS, "append"), (self.path / EVALUATIONS).open("a") as handle:
            handle.write(line)
            handle.flush()

    def evaluations(self) -> list[dict[str, Any]]:
        path = self.path / EVALUATIONS
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line (a killed evaluate)
        return out
