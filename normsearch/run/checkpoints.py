"""Epoch checkpoints of a trial and the final weights of a finished one.

After every epoch a trial writes its `TrainState` (train.py) into a fresh folder that Ray Tune persists as
the trial's checkpoint under ``tune/attempt-<k>/<trial>/checkpoint_<n>/`` (Tune keeps only the newest per
attempt). The folder holds ``state.pt`` (the state) and ``state.json`` (its epoch, readable without torch),
so that a continued trial starts from the newest epoch any attempt reached, and a finished trial's final
weights are the model part of its last checkpoint.

A run folder is shared (colleagues, cluster jobs), so nothing in it is trusted to run code: ``state.pt``
holds only tensors and plain values (dicts, lists, numbers, strings, booleans, None; the random
generators' states are byte tensors) and is read with ``torch.load(weights_only=True)``, whose unpickler
builds nothing else. A file that is not such a checkpoint is refused in one line naming it, before
anything in it is used (docs/run-folder-trust.md).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normsearch.errors import NormsearchError
from normsearch.run.files import first_line, weights_only_reason

if TYPE_CHECKING:
    from normsearch.train import TrainState

STATE = "state.pt"
SUMMARY = "state.json"
# The fields of a TrainState and the plain type each must have once read back (None allowed where noted).
FIELDS: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "model": (dict,),
    "optimizer": (dict,),
    "schedule": (dict,),
    "generators": (dict,),
    "switched": (int,),
    "history": (list,),
    "scaler": (dict, type(None)),
    "init": (dict, type(None)),
}


def plain(value: Any, where: str = "state") -> Any:
    """`value` as tensors and plain Python values only (what `torch.load(weights_only=True)` reads back):
    mappings become dicts, tuples stay tuples, numpy scalars become Python numbers. Anything else is a bug
    in what training put into its state, named by its place (`where`), never silently pickled."""
    import torch  # deferred: this module stays torch-free (run/folder and run/storage import it)

    # Exact types: numpy's float64 is a float subclass that the weights-only reader refuses.
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return value.item()
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot go into a checkpoint (tensors and plain values only)"
    )


def write_state(state: TrainState, folder: str | Path) -> Path:
    """Write `state` into `folder` (a fresh folder that becomes a Tune checkpoint): tensors and plain
    values only, so that `read_state` reads it without unpickling anything."""
    import torch  # deferred: this module stays torch-free (run/folder and run/storage import it)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(plain(state.to_dict()), folder / STATE)
    (folder / SUMMARY).write_text(json.dumps({"epoch": state.epoch}))
    return folder


def load_plain(path: Path, what: str = "checkpoint") -> Any:
    """The tensors and plain values in a torch file, read with `weights_only=True` (nothing in the file can
    run code or build an object of any other type); one NormsearchError line naming the file otherwise."""
    import torch  # deferred: this module stays torch-free (run/folder and run/storage import it)

    if not path.is_file():
        kind = "missing" if not path.exists() else "not a regular file"
        raise NormsearchError(f"{path}: not a normsearch {what} ({kind})")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        why = weights_only_reason(error) or first_line(error)
        raise NormsearchError(
            f"{path}: not a normsearch {what}, which holds only tensors and plain values ({why}); "
            "nothing in it was loaded"
        ) from None


def read_state(folder: str | Path) -> TrainState:
    """The TrainState in a checkpoint folder, read without unpickling (see the module docstring) and
    checked field by field; one NormsearchError line naming the file when it is not one."""
    from normsearch.train import TrainState  # deferred, as torch: training's state imports torch

    path = Path(folder) / STATE
    data = load_plain(path)
    if not isinstance(data, dict) or set(data) != set(FIELDS):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise NormsearchError(
            f"{path}: not a normsearch checkpoint (holds {got}, not the fields {sorted(FIELDS)})"
        )
    for name, types in FIELDS.items():
        if not isinstance(data[name], types) or (isinstance(data[name], bool) and int in types):
            raise NormsearchError(
                f"{path}: not a normsearch checkpoint ({name} is a {type(data[name]).__name__})"
            )
    return TrainState.from_dict(data)


def check_state(folder: Path | None) -> Path | None:
    """`folder` after checking, in the driver, that its state reads as a checkpoint (`read_state`), so that
    a file planted in the run folder is one line before any trial is handed it."""
    if folder is not None:
        read_state(folder)
    return folder


def checkpoint_epoch(folder: Path) -> int:
    """The epoch a checkpoint folder holds (-1 when it is incomplete)."""
    try:
        epoch = json.loads((folder / SUMMARY).read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return -1
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0 else -1


def newest_checkpoint(trial_dirs: list[Path]) -> Path | None:
    """Among the checkpoints in the given trial folders, the one with the most epochs (the later attempt
    on a tie); None when there is none."""
    best: tuple[int, int, Path] | None = None
    for order, trial_dir in enumerate(trial_dirs):
        for folder in trial_dir.glob("checkpoint_*"):
            epoch = checkpoint_epoch(folder)
            if epoch >= 0 and (best is None or (epoch, order) > best[:2]):
                best = (epoch, order, folder)
    return best[2] if best else None


def final_weights(checkpoint: Path) -> dict[str, Any]:
    """The model's state_dict from a trial's last checkpoint."""
    return read_state(checkpoint).model
