"""The run's records: one line per evaluation in trials.jsonl, appended as results arrive.

A trial's state is its last line; a complete trial stays complete; a torn last line (a killed driver) is
ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normsearch.errors import NormsearchError


@dataclass
class TrialRecord:
    """A trial's latest state."""

    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    arch: dict[str, Any] | None = None
    epoch: int | None = None
    node_id: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    nodes: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def key(self) -> str:
        """Identity of the configuration, for collapsing duplicates."""
        return json.dumps(self.arch if self.arch is not None else self.config, sort_keys=True)


def read_trials(run_dir: Path) -> list[TrialRecord]:
    """Every trial of a run, in the order they first appeared; a torn last line (a killed driver) is
    ignored."""
    path = run_dir / "trials.jsonl"
    if not path.is_file():
        raise NormsearchError(f"{run_dir}: no trials.jsonl (not a run folder, or nothing has run yet)")
    trials: dict[str, TrialRecord] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        tid = rec["trial_id"]
        old = trials.get(tid)
        if old is not None and old.complete and rec["status"] != "complete":
            continue  # a complete trial stays complete
        trial = TrialRecord(
            trial_id=tid,
            status=rec["status"],
            config=rec.get("config", {}),
            metrics=rec.get("metrics") or (old.metrics if old else {}),
            test=rec.get("test") or (old.test if old else {}),
            arch=rec.get("arch"),
            epoch=rec.get("epoch") if rec.get("epoch") is not None else (old.epoch if old else None),
            node_id=rec.get("node_id"),
            versions=rec.get("versions", {}),
            seed=rec.get("seed"),
            nodes=(old.nodes if old else set()) | ({rec["node_id"]} if rec.get("node_id") else set()),
        )
        trials[tid] = trial
    return list(trials.values())
