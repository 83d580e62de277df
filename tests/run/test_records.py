"""Reading runs back: the last record wins, a torn line is ignored, duplicates collapse, pruned stay out."""

from __future__ import annotations

import json
from pathlib import Path

from normsearch.results.front import compute_front
from normsearch.run.folder import RunFolder

OBJ = {"source_val_acc": "max", "target_select_acc": "max"}


def record(tid: str, status: str, src: float, tgt: float, arch: dict, epoch: int = 3) -> str:
    return json.dumps(
        {
            "trial_id": tid,
            "status": status,
            "config": {"x": tid},
            "arch": arch,
            "epoch": epoch,
            "metrics": {"source_val_acc": src, "target_select_acc": tgt},
        }
    )


def test_front_collapses_duplicates_and_ignores_unfinished_trials(tmp_path: Path) -> None:
    a, b, c = {"norm": {"default": "bn"}}, {"norm": {"default": "in"}}, {"norm": {"input": "instance"}}
    lines = [
        record("t1", "running", 50.0, 10.0, a, epoch=1),
        record("t1", "complete", 90.0, 40.0, a),
        record("t2", "complete", 94.0, 30.0, a),  # the same architecture again: one point, averaged
        record("t3", "complete", 85.0, 60.0, b),
        record("t4", "pruned", 99.0, 99.0, c, epoch=1),  # stopped early: never on the front
        record("t5", "complete", 80.0, 20.0, c),
        '{"trial_id": "t6", "status": "comp',  # a killed driver's torn last line
    ]
    (tmp_path / "trials.jsonl").write_text("\n".join(lines) + "\n")
    trials = RunFolder(tmp_path).trials()
    assert [t.trial_id for t in trials] == ["t1", "t2", "t3", "t4", "t5"]
    assert trials[0].complete and trials[0].metrics["source_val_acc"] == 90.0
    front = compute_front(trials, OBJ)
    assert len(front.points) == 3  # a (t1+t2), b, c (t5 only)
    assert (92.0, 35.0) in front.points
    assert front.member_ids() == {"t1", "t2", "t3"}
    # Hypervolume against (0, 0) of {(92, 35), (85, 60)} = 92*35 + 85*(60-35).
    assert front.hypervolume == 92 * 35 + 85 * 25
