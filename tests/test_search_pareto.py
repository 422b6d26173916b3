"""Pareto sort, hypervolume and area under the curve against brute force and pymoo."""

from __future__ import annotations

import time

import numpy as np
import pytest

from widthsearch.errors import WidthSearchError
from widthsearch.search.pareto import (
    accuracy_curve,
    area_under_curve,
    hypervolume,
    non_dominated_rank,
    pareto_front,
    pareto_fronts,
)


def _brute_front(points: np.ndarray) -> np.ndarray:
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if np.all(points[j] <= points[i]) and np.any(points[j] < points[i]):
                mask[i] = False
                break
    return mask


@pytest.mark.parametrize("dims", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_matches_brute_force(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 6, size=(120, dims)).astype(float)  # many ties and duplicates
    assert np.array_equal(pareto_front(pts), _brute_front(pts))


def test_fronts_peel_everything_once_and_in_order() -> None:
    rng = np.random.default_rng(3)
    pts = rng.random((300, 3))
    fronts = pareto_fronts(pts)
    allidx = np.concatenate(fronts)
    assert sorted(allidx.tolist()) == list(range(300))
    for k in range(1, len(fronts)):
        # every point of front k is dominated by some point of front k-1
        prev = pts[fronts[k - 1]]
        for p in pts[fronts[k]]:
            assert np.any(np.all(prev <= p, axis=1) & np.any(prev < p, axis=1))
    rank = non_dominated_rank(pts)
    assert all((rank[f] == k).all() for k, f in enumerate(fronts))


def test_front_of_10k_points_is_fast() -> None:
    rng = np.random.default_rng(0)
    pts = rng.random((10_000, 3))
    t = time.perf_counter()
    mask = pareto_front(pts)
    assert time.perf_counter() - t < 10.0
    sub = rng.choice(10_000, 400, replace=False)
    # a point on the front of all is on the front of any subset holding it
    inner = _brute_front(pts[sub])
    assert np.all(inner[mask[sub]])
    t = time.perf_counter()
    pareto_fronts(rng.random((10_000, 2)))
    assert time.perf_counter() - t < 10.0


def test_hypervolume_2d_exact() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [2.5, 2.5]])
    # staircase against (4, 4): 3*1 + 2*1 + 1*1 = 6
    assert hypervolume(pts, [4.0, 4.0]) == pytest.approx(6.0)
    assert hypervolume(pts[:1], [4.0, 4.0]) == pytest.approx(3.0)
    assert hypervolume([[5.0, 5.0]], [4.0, 4.0]) == 0.0


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_pymoo(dims: int) -> None:
    HV = pytest.importorskip("pymoo.indicators.hv").HV

    rng = np.random.default_rng(dims)
    pts = rng.random((40, dims))
    ref = np.full(dims, 1.1)
    assert hypervolume(pts, ref) == pytest.approx(float(HV(ref_point=ref)(pts)), rel=1e-9)


def test_hypervolume_3d_box() -> None:
    assert hypervolume([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0]) == pytest.approx(6.0)
    with pytest.raises(WidthSearchError, match="objectives"):
        hypervolume([[0.0, 0.0]], [1.0, 1.0, 1.0])


def test_accuracy_curve_and_area() -> None:
    costs = [1.0, 2.0, 3.0, 2.0]
    accs = [0.5, 0.4, 0.8, 0.7]
    knots, best = accuracy_curve(costs, accs)
    assert knots.tolist() == [1.0, 2.0, 3.0]
    assert best.tolist() == [0.5, 0.7, 0.8]
    # [0, 4]: 0 on [0,1), 0.5 on [1,2), 0.7 on [2,3), 0.8 on [3,4]
    assert area_under_curve(costs, accs, 0.0, 4.0) == pytest.approx(2.0)
    assert area_under_curve(costs, accs, 1.5, 2.5) == pytest.approx(0.25 + 0.35)
    # a dominated point never raises the curve
    assert area_under_curve(costs + [3.5], accs + [0.1], 0.0, 4.0) == pytest.approx(2.0)
    with pytest.raises(WidthSearchError):
        area_under_curve(costs, accs, 2.0, 1.0)
