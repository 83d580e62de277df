"""Pareto sort, hypervolume, knee and pick rules on hand-made point sets with hand-derived answers."""

from __future__ import annotations

import random

import pytest

from normsearch.errors import NormsearchError
from normsearch.results.pareto import (
    dominates,
    hypervolume_2d,
    hypervolume_prefixes,
    knee,
    non_dominated,
    non_dominated_sort,
    pick,
)

MAXMAX = ["max", "max"]
# (source, target): a convex front A-B-C-D, E dominated by B, F dominated by everything on the front.
POINTS = [(99.0, 40.0), (97.0, 70.0), (94.0, 80.0), (80.0, 85.0), (96.0, 60.0), (70.0, 30.0)]


def test_dominance_respects_directions() -> None:
    assert dominates((2, 2), (1, 2), MAXMAX)
    assert not dominates((2, 2), (2, 2), MAXMAX)
    assert dominates((1, 5), (2, 5), ["min", "max"])
    assert not dominates((1, 5), (2, 6), ["min", "max"])


def test_non_dominated_sort_gives_layered_fronts() -> None:
    fronts = non_dominated_sort(POINTS, MAXMAX)
    assert fronts[0] == [0, 1, 2, 3]
    assert fronts[1] == [4]
    assert fronts[2] == [5]
    assert non_dominated(POINTS, MAXMAX) == [0, 1, 2, 3]


def test_three_objectives_with_a_minimised_one() -> None:
    points = [(90.0, 50.0, 100.0), (90.0, 50.0, 80.0), (95.0, 40.0, 200.0)]
    assert non_dominated(points, ["max", "max", "min"]) == [1, 2]


def test_hypervolume_matches_the_staircase_area() -> None:
    # Against (0, 0): the union of rectangles [0,99]x[0,40], [0,97]x[0,70], [0,94]x[0,80], [0,80]x[0,85]
    # = 99*40 + 97*30 + 94*10 + 80*5.
    expected = 99 * 40 + 97 * 30 + 94 * 10 + 80 * 5
    assert hypervolume_2d(POINTS, (0.0, 0.0), MAXMAX) == pytest.approx(expected)
    # Dominated points add nothing; points that do not dominate the reference add nothing.
    assert hypervolume_2d(POINTS[:4], (0.0, 0.0), MAXMAX) == pytest.approx(expected)
    assert hypervolume_2d([(50.0, 10.0)], (60.0, 0.0), MAXMAX) == 0.0


def test_hypervolume_with_a_minimised_objective() -> None:
    # Minimise params, maximise accuracy; reference (params 10, acc 0): rectangles (10-2)*50 + (10-5)*(80-50).
    assert hypervolume_2d([(2.0, 50.0), (5.0, 80.0)], (10.0, 0.0), ["min", "max"]) == pytest.approx(
        8 * 50 + 5 * 30
    )


def test_hypervolume_prefixes_equal_every_prefix_recomputed() -> None:
    # By hand against (0, 0): A alone 99*40; B adds 97*30; C adds 94*10; D adds 80*5; E and F are
    # dominated and add nothing.
    a = 99 * 40
    expected = [a, a + 97 * 30, a + 97 * 30 + 94 * 10, a + 97 * 30 + 94 * 10 + 80 * 5]
    assert hypervolume_prefixes(POINTS, (0.0, 0.0), MAXMAX) == pytest.approx(expected + expected[-1:] * 2)
    # Bit for bit the same floats as recomputing each prefix, under ties, duplicates, points that join
    # and drop members, points short of the reference, and either direction.
    rng = random.Random(0)
    for _ in range(200):
        directions = [rng.choice(["max", "min"]) for _ in range(2)]
        grid = [0.0, 1.0, 2.5, 3.0, 4.0]
        points = [
            (rng.choice([*grid, rng.random() * 4]), rng.choice([*grid, rng.random() * 4]))
            for _ in range(rng.randint(0, 25))
        ]
        reference = (rng.choice([0.0, 1.0, 4.0]), rng.choice([0.0, 1.0, 4.0]))
        assert hypervolume_prefixes(points, reference, directions) == [
            hypervolume_2d(points[: k + 1], reference, directions) for k in range(len(points))
        ]


def test_two_objective_front_equals_the_pairwise_definition() -> None:
    # `non_dominated` takes an O(n log n) path for two objectives: the same indices as the definition
    # (kept unless another, unequal point is at least as good in both), under ties and duplicates.
    rng = random.Random(1)
    for _ in range(500):
        directions = [rng.choice(["max", "min"]) for _ in range(2)]
        points = [
            (rng.choice([0.0, 1.0, 2.0, rng.random()]), rng.choice([0.0, 1.0, 2.0, rng.random()]))
            for _ in range(rng.randint(0, 20))
        ]
        expected = [
            i for i, p in enumerate(points) if not any(q != p and dominates(q, p, directions) for q in points)
        ]
        assert non_dominated(points, directions) == expected
    assert non_dominated([(1.0, 2.0), (1.0, 2.0), (0.0, 2.0)], MAXMAX) == [0, 1]  # duplicates both kept


def test_knee_is_the_point_farthest_from_the_extremes_line() -> None:
    # Scaled over the front: A(1, 0), B(17/19, 2/3), C(14/19, 8/9), D(0, 1). Distances to the line A-D
    # (x + y = 1) are proportional to x + y - 1: B 0.561, C 0.626, so C is the knee.
    assert knee(POINTS, MAXMAX) == 2


def test_pick_rules_and_source_budget() -> None:
    assert pick(POINTS, MAXMAX, "max-source") == 0
    assert pick(POINTS, MAXMAX, "max-target") == 3
    # Within 1 point of the best source (99): only A; within 3: A, B, E -> B has the best target.
    assert pick(POINTS, MAXMAX, "max-target", max_source_drop=1.0) == 0
    assert pick(POINTS, MAXMAX, "max-target", max_source_drop=3.0) == 1
    with pytest.raises(NormsearchError, match="allowed: knee, max-target, max-source"):
        pick(POINTS, MAXMAX, "best")
