"""Epoch checkpoints of a trial and the final weights of a finished one.

After every epoch a trial writes its `TrainState` (train.py) into a fresh folder that Ray Tune persists as
the trial's checkpoint under ``tune/attempt-<k>/<trial>/checkpoint_<n>/`` (Tune keeps only the newest per
attempt). The folder holds ``state.pt`` (the state) and ``state.json`` (its epoch, readable without torch),
so that a continued trial starts from the newest epoch any attempt reached, and a finished trial's final
weights are the model part of its last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normsearch.errors import NormsearchError

if TYPE_CHECKING:
    from normsearch.train import TrainState

STATE = "state.pt"
SUMMARY = "state.json"


def write_state(state: TrainState, folder: str | Path) -> Path:
    """Write `state` into `folder` (a fresh folder that becomes a Tune checkpoint)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state.to_dict(), folder / STATE)
    (folder / SUMMARY).write_text(json.dumps({"epoch": state.epoch}))
    return folder


def read_state(folder: str | Path) -> TrainState:
    """The TrainState in a checkpoint folder."""
    import torch

    from normsearch.train import TrainState

    path = Path(folder) / STATE
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as error:
        raise NormsearchError(f"{path}: unreadable checkpoint ({error})") from None
    return TrainState.from_dict(data)


def checkpoint_epoch(folder: Path) -> int:
    """The epoch a checkpoint folder holds (-1 when it is incomplete)."""
    try:
        return int(json.loads((folder / SUMMARY).read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


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
