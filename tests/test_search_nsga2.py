"""NSGA-II recovers the known front of a synthetic accuracy model and keeps its budgets."""

from __future__ import annotations

import numpy as np
from _search_fakes import FakeEvaluator, SyntheticCosts, all_indices, synthetic_space

from widthsearch.search.nsga2 import NSGA2
from widthsearch.search.pareto import hypervolume, pareto_front

WEIGHTS = np.array([0.3, 0.2, 0.35, 0.15, 0.25])


def _truth(space, evaluator, costs):
    idx = all_indices(space)
    acc = np.array([evaluator.accuracy(space.from_indices(r)) for r in idx])
    macs = costs.evaluate(space.widths_of_indices(idx), "macs")
    return idx, acc, macs


def test_recovers_the_known_front() -> None:
    space = synthetic_space((16, 24, 32, 16, 24), widths=6)  # 7,776 configs
    costs = SyntheticCosts()
    ev = FakeEvaluator(space, coupling=0.1, weights=WEIGHTS)
    idx, acc, macs = _truth(space, ev, costs)
    full = macs.max()
    true = pareto_front(np.column_stack([-acc, macs / full]))
    ref = np.array([0.0, 1.01])
    res = NSGA2(space, costs, ev, ["macs=100%"], seed=0, population=40, generations=30).search()
    pts = np.array([[-r.accuracy, r.costs["macs"] / full] for r in res.records])
    hv_ratio = hypervolume(pts, ref) / hypervolume(np.column_stack([-acc, macs / full])[true], ref)
    found = {r.indices for r in res.records} & {tuple(k) for k in idx[true]}
    assert len(res.records) < 0.15 * len(idx)  # it did not enumerate the space
    assert hv_ratio > 0.99
    assert len(found) >= 0.7 * true.sum()
    # the reported front is the non-dominated set of everything evaluated
    front = {res.records[i].indices for i in res.front}
    assert front == {res.records[i].indices for i in np.flatnonzero(pareto_front(pts))}


def test_budget_is_a_hard_constraint_and_the_best_under_it_is_found() -> None:
    space = synthetic_space((16, 24, 32, 16, 24), widths=6)
    costs = SyntheticCosts()
    ev = FakeEvaluator(space, coupling=0.1, weights=WEIGHTS)
    idx, acc, macs = _truth(space, ev, costs)
    res = NSGA2(space, costs, ev, ["macs=25%", "macs=50%"], seed=1, population=40,
                generations=40).search()
    assert len(res.chosen) == 2
    for chosen in res.chosen:
        limit = chosen.target.limits["macs"]
        assert chosen.record.costs["macs"] <= limit
        assert chosen.record.accuracy >= acc[macs <= limit].max() - 0.006
    # infeasible configs are never sent to the evaluator
    assert all(r.costs["macs"] <= 0.5 * macs.max() + 1e-9 for r in res.records)
