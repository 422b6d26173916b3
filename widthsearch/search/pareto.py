"""Pareto fronts, hypervolume and the area under the accuracy-vs-cost curve.

Every objective column is minimized (negate an accuracy before passing it). Fronts are found
without comparing all pairs: 2-D by one sort and a running minimum, n-D by visiting points in
order of their sum against the front found so far (vectorized per point), so 10k points take
well under a second.
"""

from __future__ import annotations

import numpy as np

from ..errors import WidthSearchError


def _as_points(points: np.ndarray | list) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise WidthSearchError(f"points must be a 2-D array (n, objectives), got shape {arr.shape}")
    if np.isnan(arr).any():
        raise WidthSearchError("points contain NaN; every objective needs a value")
    return arr


def _front_nd(points: np.ndarray) -> np.ndarray:
    """n-D front: visit points by ascending sum, test each against the front found so far.

    A dominating point has a smaller (or, after rounding, equal and lexicographically
    smaller) sum, so its dominators are visited first, and a dominator of a dominator
    dominates too: comparing against the front alone is enough.
    """
    cols = tuple(points[:, j] for j in range(points.shape[1] - 1, -1, -1))
    order = np.lexsort(cols + (points.sum(axis=1),))
    front = np.empty_like(points)
    size = 0
    mask = np.zeros(len(points), dtype=bool)
    for i in order:
        p = points[i]
        f = front[:size]
        if size and ((f <= p).all(axis=1) & (f < p).any(axis=1)).any():
            continue
        front[size] = p
        size += 1
        mask[i] = True
    return mask


def pareto_front(points: np.ndarray | list) -> np.ndarray:
    """Boolean mask of the non-dominated points (all columns minimized)."""
    arr = _as_points(points)
    if len(arr) == 0:
        return np.zeros(0, dtype=bool)
    if arr.shape[1] == 2:
        return _front_2d(arr)
    return _front_nd(arr)


def _front_2d(arr: np.ndarray) -> np.ndarray:
    """2-D front in O(n log n): sort by the first objective, keep strict improvements."""
    order = np.lexsort((arr[:, 1], arr[:, 0]))
    srt = arr[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], srt[:-1, 1])))
    keep = srt[:, 1] < best_before
    # equal points: a duplicate of a kept point is non-dominated too
    same_as_prev = np.zeros(len(srt), dtype=bool)
    same_as_prev[1:] = (srt[1:] == srt[:-1]).all(axis=1)
    for i in np.flatnonzero(same_as_prev):
        keep[i] = keep[i] or keep[i - 1]
    mask = np.zeros(len(arr), dtype=bool)
    mask[order[keep]] = True
    return mask


def pareto_fronts(points: np.ndarray | list) -> list[np.ndarray]:
    """All fronts by peeling: a list of index arrays, the first front first."""
    arr = _as_points(points)
    remaining = np.arange(len(arr))
    fronts: list[np.ndarray] = []
    while len(remaining):
        mask = pareto_front(arr[remaining])
        fronts.append(remaining[mask])
        remaining = remaining[~mask]
    return fronts


def non_dominated_rank(points: np.ndarray | list) -> np.ndarray:
    """Front number of every point (0 = non-dominated)."""
    arr = _as_points(points)
    rank = np.empty(len(arr), dtype=np.int64)
    for k, idx in enumerate(pareto_fronts(arr)):
        rank[idx] = k
    return rank


def hypervolume(points: np.ndarray | list, reference: np.ndarray | list) -> float:
    """Volume dominated by the points and bounded by `reference` (all columns minimized).

    Exact: a sweep in 2-D, recursive slicing over the last objective for more (fine for
    the few objectives of a width search). Points not strictly better than the reference in
    every objective add nothing.
    """
    arr = _as_points(points)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if len(arr) and arr.shape[1] != len(ref):
        raise WidthSearchError(
            f"reference point has {len(ref)} objectives, points have {arr.shape[1]}"
        )
    arr = arr[(arr < ref).all(axis=1)]
    if len(arr) == 0:
        return 0.0
    arr = arr[pareto_front(arr)]
    return float(_hv(arr, ref))


def _hv(arr: np.ndarray, ref: np.ndarray) -> float:
    if arr.shape[1] == 1:
        return float(ref[0] - arr[:, 0].min())
    if arr.shape[1] == 2:
        order = np.argsort(arr[:, 0], kind="stable")
        xs, ys = arr[order, 0], arr[order, 1]
        best = np.minimum.accumulate(ys)
        widths = np.diff(np.append(xs, ref[0]))
        return float(np.sum(widths * (ref[1] - best)))
    # slice along the last objective: between consecutive levels, the points at or below
    # the level dominate a (d-1)-dimensional volume
    order = np.argsort(arr[:, -1], kind="stable")
    srt = arr[order]
    levels = np.append(srt[:, -1], ref[-1])
    total = 0.0
    for i in range(len(srt)):
        height = levels[i + 1] - levels[i]
        if height <= 0:
            continue
        sub = srt[: i + 1, :-1]
        sub = sub[pareto_front(sub)]
        total += height * _hv(sub, ref[:-1])
    return total


def accuracy_curve(costs: np.ndarray | list, accuracies: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    """The step curve of the best accuracy reachable at or below each cost.

    Returns (cost knots ascending, best accuracy from each knot on): the curve is
    right-continuous and constant between knots.
    """
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    a = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if c.shape != a.shape:
        raise WidthSearchError(f"costs ({c.size}) and accuracies ({a.size}) differ in length")
    order = np.lexsort((-a, c))
    c, a = c[order], a[order]
    best = np.maximum.accumulate(a)
    keep = np.ones(len(c), dtype=bool)
    keep[:-1] = c[1:] != c[:-1]  # last (best) value of each cost
    return c[keep], best[keep]


def area_under_curve(
    costs: np.ndarray | list, accuracies: np.ndarray | list, lo: float, hi: float
) -> float:
    """Area under the best-accuracy-at-or-below-cost step curve over [lo, hi].

    Below the cheapest point nothing is reachable, so the curve counts as 0 there. Divide by
    (hi - lo) for the mean best accuracy over the cost range.
    """
    if not hi > lo:
        raise WidthSearchError(f"area_under_curve needs hi > lo, got lo={lo}, hi={hi}")
    knots, best = accuracy_curve(costs, accuracies)
    if len(knots) == 0:
        return 0.0
    starts = np.clip(knots, lo, hi)
    ends = np.clip(np.append(knots[1:], np.inf), lo, hi)
    return float(np.sum((ends - starts) * best))
