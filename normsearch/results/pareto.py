"""Pareto fronts over trial results: non-dominated sort, front ranks and crowding distance, 2-D hypervolume,
knee, and pick rules.

Directions are "max" or "min" per objective. Points are tuples in objective order. Everything here is plain
Python on small lists (a search has tens to hundreds of trials).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from normsearch.errors import NormsearchError

Point = Sequence[float]
PICK_RULES = ("knee", "max-target", "max-source")


def _as_max(point: Point, directions: Sequence[str]) -> tuple[float, ...]:
    return tuple(v if d == "max" else -v for v, d in zip(point, directions, strict=True))


def dominates(a: Point, b: Point, directions: Sequence[str]) -> bool:
    """True if `a` is at least as good as `b` in every objective and better in one."""
    am, bm = _as_max(a, directions), _as_max(b, directions)
    return all(x >= y for x, y in zip(am, bm, strict=True)) and any(
        x > y for x, y in zip(am, bm, strict=True)
    )


def non_dominated_sort(points: Sequence[Point], directions: Sequence[str]) -> list[list[int]]:
    """Fronts of indices, best first (Deb et al. 2002, the fast non-dominated sort of NSGA-II)."""
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    counts = [0] * n
    for i in range(n):
        for j in range(n):
            if i != j and dominates(points[i], points[j], directions):
                dominated_by[i].append(j)
            elif i != j and dominates(points[j], points[i], directions):
                counts[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if counts[i] == 0]
    while current:
        fronts.append(sorted(current))
        following = []
        for i in current:
            for j in dominated_by[i]:
                counts[j] -= 1
                if counts[j] == 0:
                    following.append(j)
        current = following
    return fronts


def non_dominated(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices of the first front (duplicates of a front point are all kept), in index order.

    A sweep in descending lexicographic order (objectives turned to maximise): a point can only be
    dominated by one before it, and if by any, then by one already on the front (dominance is transitive),
    so each point is compared with the front only: O(n log n + n * front) instead of the full sort's
    O(n^2), which the driver pays after every trial (`bench driver`)."""
    if not points:
        return []
    maxed = [_as_max(p, directions) for p in points]
    if len(directions) == 2 and all(v == v for p in maxed for v in p):  # no NaN: see _non_dominated_2d
        return _non_dominated_2d(maxed)
    front: list[int] = []
    for i in sorted(range(len(maxed)), key=lambda k: maxed[k], reverse=True):
        p = maxed[i]
        if not any(maxed[f] != p and all(x >= y for x, y in zip(maxed[f], p, strict=True)) for f in front):
            front.append(i)
    return sorted(front)


def _non_dominated_2d(maxed: list[tuple[float, ...]]) -> list[int]:
    """`non_dominated` for two objectives (already turned to maximise) in O(n log n): in the same sweep,
    every point before `p` has an x at least p's, so `p` is dominated exactly when one of them that is
    not equal to it has a y at least p's; equal points are adjacent in the sweep, so the best y before
    p's group is all that needs keeping. A front of all n points (a clean trade-off) made the general
    sweep O(n^2): 0.5 s at 1000 trials, paid by the driver after every trial."""
    front: list[int] = []
    best = before = -math.inf  # best y of the groups before the current one; of the one before it
    previous: tuple[float, ...] | None = None
    for i in sorted(range(len(maxed)), key=lambda k: maxed[k], reverse=True):
        p = maxed[i]
        if p != previous:
            if previous is not None:
                before = max(before, previous[1])
            best, previous = before, p
        if best < p[1]:
            front.append(i)
    return sorted(front)


def front_ranks(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Each point's front number: 0 for points no other point dominates, 1 for those dominated only by
    front-0 points, and so on (the fast non-dominated sort of NSGA-II, Deb et al. 2002, §III-A). Equal
    points share a rank. MO-ASHA (search/moasha.py) ranks the trials at a rung by it."""
    ranks = [0] * len(points)
    for rank, front in enumerate(non_dominated_sort(points, directions) if points else []):
        for i in front:
            ranks[i] = rank
    return ranks


def crowding_distances(points: Sequence[Point], directions: Sequence[str]) -> list[float]:
    """NSGA-II's crowding distance (Deb et al. 2002, §III-B), computed within each point's own front.

    For every objective the front is sorted on it; its two ends get infinity and every other point adds
    the gap between its two neighbours divided by the objective's range over the front. So a front of one
    or two points is all infinite, and a larger distance means a more isolated point, the one to prefer
    when ranks tie (it keeps the front spread out). An objective whose range over the front is zero or not
    finite (a point at +-inf) adds nothing to the inner points. Ties within a sort keep index order, so the
    result is deterministic. The distance does not depend on the directions; the fronts do."""
    distances = [0.0] * len(points)
    for front in non_dominated_sort(points, directions) if points else []:
        for d in range(len(directions)):
            ordered = sorted(front, key=lambda i: (points[i][d], i))
            distances[ordered[0]] = distances[ordered[-1]] = math.inf
            span = points[ordered[-1]][d] - points[ordered[0]][d]
            if span <= 0 or not math.isfinite(span):
                continue
            for before, i, after in zip(ordered, ordered[1:-1], ordered[2:], strict=False):
                distances[i] += (points[after][d] - points[before][d]) / span
    return distances


def hypervolume_2d(points: Sequence[Point], reference: Point, directions: Sequence[str]) -> float:
    """Area dominated by `points` and bounded by `reference` (a point worse than all of them in both
    objectives). Points that do not dominate the reference add nothing."""
    if len(reference) != 2:
        raise NormsearchError("hypervolume: only two objectives are supported")
    ref = _as_max(reference, directions)
    pts = sorted(
        {p for p in (_as_max(q, directions) for q in points) if p[0] > ref[0] and p[1] > ref[1]},
        key=lambda p: (-p[0], -p[1]),
    )
    area, best_y = 0.0, ref[1]
    for x, y in pts:  # sweep from the largest first objective down
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def hypervolume_prefixes(points: Sequence[Point], reference: Point, directions: Sequence[str]) -> list[float]:
    """`hypervolume_2d(points[:k + 1], reference, directions)` for every k, in one pass (the report's
    hypervolume over trials). The front of the prefix is kept as it grows: a new point that a member
    dominates (or equals) changes nothing; one that joins drops the members it dominates, and the area
    is swept again over the front only. Dominated points add no term to `hypervolume_2d`'s sweep, so the
    terms, their order and the floats are the same as recomputing every prefix, at O(n * front) instead
    of O(n^2 log n)."""
    if len(reference) != 2:
        raise NormsearchError("hypervolume: only two objectives are supported")
    ref = _as_max(reference, directions)
    front: list[tuple[float, ...]] = []  # distinct, non-dominated, beyond the reference; sorted (-x, -y)
    area, out = 0.0, []
    for point in points:
        p = _as_max(point, directions)
        beyond = p[0] > ref[0] and p[1] > ref[1]
        if beyond and not any(f[0] >= p[0] and f[1] >= p[1] for f in front):
            front = [f for f in front if not (p[0] >= f[0] and p[1] >= f[1])]
            bisect.insort(front, p, key=lambda f: (-f[0], -f[1]))
            area, best_y = 0.0, ref[1]
            for x, y in front:  # hypervolume_2d's sweep
                if y > best_y:
                    area += (x - ref[0]) * (y - best_y)
                    best_y = y
        out.append(area)
    return out


def knee(points: Sequence[Point], directions: Sequence[str]) -> int:
    """Index (into `points`) of the front's knee: the front point farthest from the straight line
    between the front's two extremes, after scaling each objective to [0, 1] over the front
    (Das 1999, "knee" as maximum distance to the extreme-point line). Two or fewer points: the one with
    the best sum of scaled objectives."""
    front = non_dominated(points, directions)
    if not front:
        raise NormsearchError("knee: no points")
    scaled = {}
    dims = len(directions)
    lows = [min(_as_max(points[i], directions)[d] for i in front) for d in range(dims)]
    highs = [max(_as_max(points[i], directions)[d] for i in front) for d in range(dims)]
    for i in front:
        p = _as_max(points[i], directions)
        scaled[i] = tuple(
            (p[d] - lows[d]) / (highs[d] - lows[d]) if highs[d] > lows[d] else 1.0 for d in range(dims)
        )
    if len(front) <= 2 or dims != 2:
        return max(front, key=lambda i: (sum(scaled[i]), -i))
    # Extremes: best in the first objective and best in the second.
    a = max(front, key=lambda i: (scaled[i][0], scaled[i][1]))
    b = max(front, key=lambda i: (scaled[i][1], scaled[i][0]))
    (ax, ay), (bx, by) = scaled[a], scaled[b]
    norm = math.hypot(bx - ax, by - ay) or 1.0

    def distance(i: int) -> float:
        x, y = scaled[i]
        # Signed: positive on the side away from the origin (the convex bulge of a max-max front).
        return ((bx - ax) * (ay - y) - (by - ay) * (ax - x)) / norm

    return max(front, key=lambda i: (distance(i), sum(scaled[i]), -i))


def pick(
    points: Sequence[Point],
    directions: Sequence[str],
    rule: str,
    source_index: int = 0,
    target_index: int = 1,
    max_source_drop: float | None = None,
) -> int:
    """Choose one point: `knee`, `max-target`, `max-source`; with `max_source_drop`, `max-target` only
    among points within that many points of the best source accuracy."""
    if rule not in PICK_RULES:
        raise NormsearchError(f"--pick: unknown rule {rule!r}; allowed: {', '.join(PICK_RULES)}")
    if not points:
        raise NormsearchError("no completed trials to pick from")
    if rule == "knee":
        return knee(points, directions)
    candidates = list(range(len(points)))
    if max_source_drop is not None:
        best_source = max(points[i][source_index] for i in candidates)
        candidates = [i for i in candidates if points[i][source_index] >= best_source - max_source_drop]
    key = target_index if rule == "max-target" else source_index
    other = source_index if rule == "max-target" else target_index
    return max(candidates, key=lambda i: (points[i][key], points[i][other], -i))


def worst_reference(directions: Sequence[str], bounds: Sequence[tuple[float, float]] | None = None) -> tuple:
    """The documented default hypervolume reference: 0 % for an accuracy to maximise; for a minimised
    objective the given upper bound (e.g. the largest parameter count seen)."""
    ref = []
    for d, (_lo, hi) in zip(directions, bounds or [(0.0, 0.0)] * len(directions), strict=True):
        ref.append(0.0 if d == "max" else hi)
    return tuple(ref)
