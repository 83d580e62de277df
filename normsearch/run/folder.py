"""The run folder: the only code that knows the file names inside one, and how they are written.

A run folder holds everything a later command needs::

    recipe.yaml, space.yaml   the resolved recipe (CLI flags applied) and its search space
    study.db                  the Optuna study (SQLite): `optuna trials --storage sqlite:///<run>/study.db`
    trials.jsonl              one record per evaluation, appended as results arrive (run/records.py)
    tune/attempt-<k>/         Ray Tune's state of each driver that worked on the run, one per `run`/`resume`;
                              `<trial>/checkpoint_*` holds the trial's last epoch checkpoint (run/checkpoints)
    tune/confirm-<k>/         the same for each `normsearch confirm` (configurations re-trained with new
                              seeds; their records carry `confirm_of` and stay out of `trials()`)
    pretrained/<unit>.pt      `train.init: pretrain`: the base pretrained once on the (unit's) sources
    driver.json               the driver that holds the run (pid, host, start time), the Ray processes it
                              started and the Ray temp folder it gave Ray (recorded before Ray starts), so
                              that `resume` can end them after a killed driver

Everything a later command reads is written atomically: to a temporary file with a unique name in the same
folder, then renamed over the target, so a reader never sees half a file and two writers never share a
temporary name. Appends to trials.jsonl are single `write` calls of whole lines, flushed and fsynced, and
a line a crash cut short is moved aside to trials.jsonl.torn and recovered (run/journal.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from normsearch.config import read_mapping, validate
from normsearch.errors import NormsearchError
from normsearch.run.checkpoints import newest_checkpoint
from normsearch.run.driver import DRIVER, DriverFile
from normsearch.run.driver import ProcessRef as ProcessRef  # re-exported: a run folder's processes
from normsearch.run.files import atomic_write_text, first_line, os_errors
from normsearch.run.journal import TORN_SUFFIX, append_record, repair_tail, scan
from normsearch.run.records import TrialRecord, fold_records
from normsearch.run.storage import Storage, read_checkpoint, storage_of

if TYPE_CHECKING:
    from normsearch.recipe import Recipe
    from normsearch.space import Space

RECIPE = "recipe.yaml"
SPACE = "space.yaml"
STUDY = "study.db"
TRIALS = "trials.jsonl"
TUNE = "tune"
PRETRAINED = "pretrained"
WARM_START = "warm_start.json"
ATTEMPT_PREFIX = "attempt-"
CONFIRM_PREFIX = "confirm-"


def default_output(recipe: Recipe, now: dt.datetime | None = None) -> Path:
    """The run folder of a search: the recipe's `output`, else `runs/<name>-<timestamp>` (run/ is the one
    place that knows where run folders go and what is in them)."""
    if recipe.output:
        return Path(recipe.output)
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.name}-{stamp}"


def check_new_output(path: Path, flag: str = "output") -> None:
    """Refuse, before anything runs, a run folder that cannot be made: a file in the way, an existing run,
    or a place where this process cannot create folders (tried with a temporary folder, then removed)."""
    if path.exists() and not path.is_dir():
        raise NormsearchError(f"{flag} {path}: is a file, not a folder; give a new folder for the run")
    if (path / RECIPE).exists():
        raise NormsearchError(
            f"{flag} {path}: already holds a run; use `normsearch resume {path}` or another --output"
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NormsearchError(f"{flag} {path}: {existing} is a file, so no folder can be made under it")
    try:
        probe = tempfile.mkdtemp(dir=existing, prefix=".normsearch-probe-")
        os.rmdir(probe)
    except OSError as error:
        raise NormsearchError(f"{flag} {path}: cannot create a folder here ({first_line(error)})") from None


class RunFolder(DriverFile):
    """One run's folder. `create` makes a new one, `open` an existing one; every artifact is read and
    written through the methods here."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    # --- life cycle ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, recipe: Recipe, space: Space) -> RunFolder:
        """Make the folder and write the resolved recipe and space; nothing is left behind on failure."""
        folder = cls(path)
        check_new_output(folder.path)
        made = not folder.path.exists()
        try:
            with os_errors(folder.path, "create the run folder"):
                folder.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                folder.path / SPACE, yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
            )
            # recipe.yaml last: its presence is what marks a folder as a run.
            atomic_write_text(
                folder.path / RECIPE, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
            )
        except BaseException:
            folder.discard(made)
            raise
        return folder

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (one with a recipe.yaml)."""
        folder = cls(path)
        if not (folder.path / RECIPE).is_file():
            raise NormsearchError(f"{path}: not a run folder (no {RECIPE})")
        return folder

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether `path` holds a run (a later `resume` can continue it)."""
        return (Path(path) / RECIPE).is_file()

    def discard(self, made: bool = True) -> None:
        """Remove what `create` wrote (the folder itself when `create` made it), for a run that never
        started a trial."""
        for name in (RECIPE, SPACE, STUDY, DRIVER, TRIALS):
            (self.path / name).unlink(missing_ok=True)
        if made:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)

    def load(self) -> tuple[Recipe, Space]:
        """The recipe and space this run was started with."""
        # deferred: recipe and space import torch (arch, norms); this module stays torch-free
        from normsearch.recipe import Recipe
        from normsearch.space import Space

        recipe = validate(Recipe, read_mapping(self.path / RECIPE), str(self.path / RECIPE))
        space = validate(Space, read_mapping(self.path / SPACE), str(self.path / SPACE))
        return recipe, space

    # --- the study -----------------------------------------------------------------------------------
    @property
    def study_url(self) -> str:
        """The Optuna storage URL of the run's study."""
        return f"sqlite:///{self.path / STUDY}"

    def has_study(self) -> bool:
        return (self.path / STUDY).is_file()

    # --- records -------------------------------------------------------------------------------------
    @property
    def records_path(self) -> Path:
        return self.path / TRIALS

    def append(self, record: dict[str, Any]) -> None:
        """Append one record to trials.jsonl as a single whole line, flushed to disk (run/journal.py)."""
        append_record(self.records_path, record)

    def records(self) -> list[dict[str, Any]]:
        """Every record in the order written; a torn last line (a crash during an append) is skipped, a
        damaged line before it is one NormsearchError naming the line (run/journal.py)."""
        if not self.records_path.is_file():
            return []
        return scan(self.records_path).records

    def repair_records(self) -> str | None:
        """Move a torn last line of trials.jsonl aside (to trials.jsonl.torn); what was done, or None."""
        return repair_tail(self.records_path)

    def record_warnings(self) -> list[str]:
        """One line for each repair the records need or had: a torn last line not yet moved aside, torn
        lines kept in trials.jsonl.torn, records recovered from the study."""
        if not self.records_path.is_file():
            return []
        found = scan(self.records_path)
        out = []
        if found.torn:
            out.append(
                f"{self.records_path}: its last line is torn ({len(found.torn)} bytes, a crash during an "
                f"append) and is ignored; `normsearch resume {self.path}` moves it aside and recovers it"
            )
        aside = self.records_path.with_name(TRIALS + TORN_SUFFIX)
        if aside.is_file():
            count = len([line for line in aside.read_bytes().split(b"\n") if line.strip()])
            out.append(f"{aside}: {count} torn line(s) a crash cut from {TRIALS}, kept aside")
        recovered = [r["trial_id"] for r in found.records if r.get("recovered_from") and "trial_id" in r]
        if recovered:
            out.append(
                f"{TRIALS}: the terminal record of {', '.join(recovered)} was lost in a crash and recovered "
                "from the study (recovered_from: study)"
            )
        return out

    def trials(self) -> list[TrialRecord]:
        """Every search trial's latest state (run/records.py `fold_records`); confirmation runs are not
        search trials (`confirmations`), so the front and the search's counts never see them."""
        if not self.records_path.is_file():
            raise NormsearchError(f"{self.path}: no {TRIALS} (nothing has run yet)")
        return fold_records([r for r in self.records() if "confirm_of" not in r])

    def confirmations(self) -> list[TrialRecord]:
        """Every confirmation run's latest state (`normsearch confirm`: records with `confirm_of`)."""
        return fold_records([r for r in self.records() if "confirm_of" in r])

    # --- Ray Tune's folders and the trials' checkpoints ---------------------------------------------
    @property
    def tune_dir(self) -> Path:
        return self.path / TUNE

    def attempts(self, prefix: str = ATTEMPT_PREFIX) -> list[str]:
        """Names of the Tune experiments (one per driver; with CONFIRM_PREFIX, one per confirm) in order."""
        if self.storage is not None:  # Tune's experiments live in the storage (run/storage.py)
            names = self.storage.experiments(self.storage_tune_path, prefix)
        elif not self.tune_dir.is_dir():
            return []
        else:
            names = [p.name for p in self.tune_dir.iterdir() if p.name.startswith(prefix)]
        return sorted(names, key=lambda n: int(n.removeprefix(prefix) or 0))

    def new_attempt(self, prefix: str = ATTEMPT_PREFIX) -> str:
        """The Tune experiment name for a new driver: attempt-1, attempt-2, ... (confirm-1, ...)."""
        done = self.attempts(prefix)
        return f"{prefix}{int(done[-1].removeprefix(prefix)) + 1 if done else 1}"

    @staticmethod
    def trial_dirname(trial: str) -> str:
        """The folder name of a trial inside a Tune experiment ("t003/s1" is "t003-s1")."""
        return trial.replace("/", "-")

    @property
    def storage(self) -> Storage | None:
        """The run's storage (`storage:` in its recipe), where Tune keeps its experiments; None: here."""
        if not hasattr(self, "_storage"):
            raw = yaml.safe_load((self.path / RECIPE).read_text()) if (self.path / RECIPE).is_file() else {}
            self._storage = storage_of((raw or {}).get("storage"))
        return self._storage

    @property
    def storage_tune_path(self) -> str:
        """Ray Tune's `storage_path` inside the storage's filesystem: `<storage>/<run>/tune`."""
        assert self.storage is not None
        return self.storage.path(self.path.name, TUNE)

    def mirrored(self) -> list[str]:
        """The run folder's own files that its storage keeps a copy of (run/storage.py), relative names;
        recipe.yaml last, since its presence marks a complete run folder."""
        # The records first: what a resume reconciles the study with (run/reconcile.py).
        names = [n for n in (TRIALS, STUDY, SPACE, WARM_START) if (self.path / n).is_file()]
        names += [f"{PRETRAINED}/{p.name}" for p in sorted((self.path / PRETRAINED).glob("*.pt"))]
        return [*names, RECIPE]

    def mirror(self) -> None:
        """Copy the run folder's own files (`mirrored`; Tune's are already there) to its storage, under
        `<root>/<run>/`. A SQLite file (the study) is copied through SQLite's backup API, so the copy is
        consistent while the driver writes to it. Nothing to do for a run without storage."""
        storage, run = self.storage, self.path.name
        if storage is None:
            return
        for name in self.mirrored():
            local = self.path / name
            if local.suffix != ".db":
                storage.upload(local, storage.path(run, name))
                continue
            with tempfile.TemporaryDirectory(prefix="normsearch-study-") as tmp:
                copy = Path(tmp) / local.name
                with sqlite3.connect(local) as src, sqlite3.connect(copy) as dst:
                    src.backup(dst)
                storage.upload(copy, storage.path(run, name))

    @staticmethod
    def stored_run(storage: Storage, run: str) -> bool:
        """Whether the storage already keeps a run of this name."""
        return storage.holds(run, RECIPE)

    @classmethod
    def restore(cls, storage: Storage, run: str, local: Path) -> RunFolder:
        """A run folder restored from its storage copy into `local` (`normsearch resume URI`)."""
        storage.restore(run, local, marker=RECIPE, skip=TUNE)
        return cls.open(local)

    def last_checkpoint(self, trial: str) -> Path | str | None:
        """The newest epoch checkpoint a trial left in any attempt (or confirm), or None; with storage,
        its URI (run/storage.read_checkpoint reads either)."""
        experiments = self.attempts() + self.attempts(CONFIRM_PREFIX)
        if self.storage is not None:
            return self.storage.newest_checkpoint(
                self.storage_tune_path, experiments, self.trial_dirname(trial)
            )
        found = [self.tune_dir / name / self.trial_dirname(trial) for name in experiments]
        return newest_checkpoint([p for p in found if p.is_dir()])

    def final_state(self, trial: str):
        """The TrainState of a trial's last checkpoint, which must be its final epoch."""
        checkpoint = self.last_checkpoint(trial)
        if checkpoint is None:
            raise NormsearchError(
                f"{self.path}: no checkpoint of trial {trial} under {TUNE}/ (on a cluster, checkpoints "
                "stay on the node that trained it unless the run folder is on storage every node shares)"
            )
        state = read_checkpoint(checkpoint)
        if not state.history or not state.history[-1].get("final"):
            raise NormsearchError(f"{checkpoint}: holds epoch {state.epoch}, not the trial's final epoch")
        return state

    def pretrained_path(self, unit: str) -> Path:
        """Where the pretrained base of a unit (`train.init: pretrain`) is kept ("base" for a single unit)."""
        return self.path / PRETRAINED / f"{unit or 'base'}.pt"

    def write_warm_start(self, supernet: dict[str, Any]) -> None:
        """Keep what the SN warm start's supernet learned (its ratios, metrics, the queue it made)."""
        atomic_write_text(self.path / WARM_START, json.dumps(supernet, indent=1))

    def warm_start(self) -> dict[str, Any] | None:
        """The SN warm start's supernet record, or None when this run has none (yet)."""
        path = self.path / WARM_START
        if not path.is_file():
            return None
        try:
            found = json.loads(path.read_text())
        except (ValueError, OSError) as error:
            raise NormsearchError(f"{path}: not a warm-start record ({first_line(error)})") from None
        if not isinstance(found, dict):
            raise NormsearchError(f"{path}: not a warm-start record (not a JSON object)")
        return found
