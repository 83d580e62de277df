"""What the live view of a search shows: trials finished, running, the best scores, the front, and an ETA
from the epochs trained so far (the ledger keeps it current; the CLI's live table and piped progress lines
(cli/run.py, cli/feedback.py) render it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    """What the live view shows."""

    total: int
    started: float = field(default_factory=time.time)
    done: int = 0
    pruned: int = 0
    failed: int = 0
    repeats: int = 0
    running: set[str] = field(default_factory=set)
    best_source: float | None = None
    best_target: float | None = None
    front_size: int = 0
    points: dict[str, tuple[float, ...]] = field(default_factory=dict)
    message: str = ""

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    epochs_per_trial: int = 0  # epochs x units: a trial's whole work (0: count trials, not epochs)
    epochs: dict[str, int] = field(default_factory=dict)  # unit trial id -> epochs it has reported
    working_since: float | None = None  # the first trial's start (Ray's start is not training time)
    before: int = 0  # trials finished before this driver started (resume): not this driver's rate

    @property
    def eta(self) -> float | None:
        """Seconds left: from the epochs finished so far (a finished or stopped trial counts its whole
        work, a running one its epochs), at the rate since the first trial started; before any epoch,
        from finished trials."""
        finished = self.done + self.pruned + self.failed
        work, running = self.epochs_per_trial, sum(self.epochs.values())
        done_work = (finished - self.before) * work + running  # by this driver
        if work and done_work > 0 and self.working_since is not None:
            rate = (time.time() - self.working_since) / done_work
            return rate * max((self.total - finished) * work - running, 0)
        if not finished:
            return None
        return self.elapsed / finished * max(self.total - finished, 0)
