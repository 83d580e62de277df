"""A search driver for the crash-consistency test: normsearch's own `run_search` (study, ledger, records,
reconcile on resume), with Ray Tune's trial execution replaced by a synchronous loop that feeds the real
searcher and the real Tune callback the events Tune would (two trials at a time, interleaved), reporting
made-up but deterministic metrics instead of training. Run it as

    python tests/run/crash_driver.py RUN_DIR run|resume

with NORMSEARCH_CRASH_AFTER_BYTES / NORMSEARCH_CRASH_AFTER_STUDY_WRITES set to stop it at a write point
(run/journal.py). As a script it prints the bytes appended and study writes made when it ends normally.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 3
EPOCHS = 2
CONCURRENT = 2


def recipe_and_space():
    from normsearch.recipe import load_recipe

    return load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        overrides=[f"train.epochs={EPOCHS}", f"search.num_samples={NUM_SAMPLES}", "search.max_concurrent=2"],
    )


def result(trial_key: str, epoch: int) -> dict:
    """What a trial reports after `epoch` (deterministic in the trial id, so reruns report the same)."""
    base = zlib.crc32(trial_key.encode()) % 50
    final = epoch == EPOCHS
    out = {
        "epoch": epoch,
        "final": final,
        "source_val_acc": float(base + 10 * epoch),
        "target_select_acc": float(base / 2 + 5 * epoch),
        "loss": 1.0 / epoch,
        "train_acc": float(base + 12 * epoch),
        "params": 1000,
    }
    if final:
        out["test"] = {"noisy": float(base), "fog": float(base + 1)}
    return out


class FakeTrial:
    def __init__(self, config: dict) -> None:
        self.config = config


class SynchronousTuner:
    """Tune's side of the protocol: ask the searcher, report each epoch, end the trial; two at a time."""

    def __init__(self, searcher, callback, num_samples: int) -> None:
        self.searcher, self.callback, self.num_samples = searcher, callback, num_samples

    def fit(self) -> None:
        from ray.tune.search import Searcher

        from normsearch.search.trial import TRIAL_KEY

        asked, live, finished = 0, [], False
        while True:
            while not finished and len(live) < CONCURRENT and asked < self.num_samples:
                config = self.searcher.suggest(f"fake{asked}")
                if config is None or config == Searcher.FINISHED:
                    finished = True
                    break
                asked += 1
                trial = FakeTrial(config)
                self.callback.on_trial_start(0, [], trial)
                live.append([trial, 0])
            if not live:
                return
            for entry in list(live):  # one epoch of every live trial, interleaved
                trial, done = entry
                entry[1] = done + 1
                key = str(trial.config[TRIAL_KEY])
                self.callback.on_trial_result(0, [], trial, result(key, entry[1]))
                if entry[1] == EPOCHS:
                    self.callback.on_trial_complete(0, [], trial)
                    live.remove(entry)


def main(run_dir: str, mode: str) -> None:
    from normsearch.search import tuner

    def make_tuner(recipe, space, folder, experiment, searcher, callback, num_samples, **_):
        return SynchronousTuner(searcher, callback, num_samples)

    tuner.make_tuner = make_tuner
    tuner.start_run_ray = lambda folder, recipe, timeout: False  # no Ray: trials are the loop above
    recipe, space = recipe_and_space()
    checked = object()  # the checks are the real driver's business; here they would only cost time
    tuner.run_search(recipe, space, Path(run_dir), resume=mode == "resume", checked=checked)


if __name__ == "__main__":
    from normsearch.run import journal

    main(sys.argv[1], sys.argv[2])
    print(json.dumps(journal._written))
