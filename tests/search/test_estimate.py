"""The numbers behind the time estimates: the live ETA from finished epochs, the dry run's contention
factor, and a measured training unit scaled by hand."""

from __future__ import annotations

import time

import pytest

from normsearch.search.estimate import contention
from normsearch.search.progress import Progress
from normsearch.train.timing import Timing


def test_eta_follows_the_epochs_finished_since_the_first_trial_started() -> None:
    now = time.time()
    # 4 trials of 2 units x 3 epochs = 24 epochs of work; one trial finished (6), one has 2 epochs: 8 done
    # in the 40 s since the first trial started -> 5 s per epoch, 24 - 8 = 16 epochs left -> 80 s.
    p = Progress(total=4, started=now - 100, done=1, epochs_per_trial=6, working_since=now - 40)
    p.epochs = {"t001": 2}
    assert p.eta == pytest.approx(80.0, rel=0.01)


def test_eta_of_a_resumed_run_counts_only_this_drivers_work() -> None:
    now = time.time()
    # 3 trials finished before the resume (not this driver's time); this driver did one epoch in 10 s.
    p = Progress(total=5, started=now - 60, done=3, epochs_per_trial=2, working_since=now - 10, before=3)
    p.epochs = {"t003": 1}
    assert p.eta == pytest.approx(10.0 * (2 * 2 - 1), rel=0.01)


def test_eta_before_any_epoch_falls_back_to_finished_trials() -> None:
    assert Progress(total=3, epochs_per_trial=2).eta is None
    p = Progress(total=4, started=time.time() - 30, failed=1)  # one trial (failed at once) in 30 s
    assert p.eta == pytest.approx(90.0, rel=0.02)


def test_contention_is_demand_over_cores_relative_to_the_measurement() -> None:
    # An idle 8-core machine: 4 trials x 1 thread fit, no slowdown.
    assert contention(1, 4, load=1.0, cores=8) == 1.0
    # 2 cores with 5 other runnable threads: measured with (1 + 5) / 2 = 3x, run with (2 + 5) / 2 = 3.5x.
    assert contention(1, 2, load=6.0, cores=2) == pytest.approx(3.5 / 3.0)
    # An idle 2-core machine, 4 trials of 1 thread: twice the demand the cores hold.
    assert contention(1, 4, load=1.0, cores=2) == pytest.approx(2.0)


def test_a_unit_is_set_up_then_epochs_of_steps_and_evaluation_then_the_test() -> None:
    t = Timing(
        step_seconds=0.5,
        eval_image_seconds=0.001,
        setup_seconds=2.0,
        steps_per_epoch=10,
        evaluated_per_epoch=1000,
        tested=3000,
        threads=1,
        device="cpu",
        load=0.0,
    )
    assert t.unit_seconds(4) == pytest.approx(2.0 + 4 * (10 * 0.5 + 1000 * 0.001) + 3000 * 0.001)
