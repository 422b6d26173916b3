"""Greedy slimming matches brute force where greedy is exact, and records every target."""

from __future__ import annotations

import numpy as np
import pytest
from _search_fakes import FakeEvaluator, all_indices, synthetic_space

from widthsearch.search.greedy import Greedy


class StepCosts:
    """Every one-step shrink of any group saves the same cost (the sum of choice indices)."""

    def __init__(self, space) -> None:
        self.space = space

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray:
        if metric != "macs":
            raise KeyError(metric)
        w = np.atleast_2d(widths)
        steps = [w[:, j] // g.step if g.slimmable else 0 * w[:, j]
                 for j, g in enumerate(self.space.groups)]
        return 1.0 + np.sum(steps, axis=0).astype(float)


@pytest.mark.parametrize("percent", [35, 50, 65, 85])
def test_matches_brute_force_on_a_tiny_space(percent: int) -> None:
    # separable concave accuracy + equal cost per step: the greedy path is optimal, so the
    # config greedy records at each budget is the best of the whole space under it
    space = synthetic_space((8, 12, 16), widths=4)
    costs = StepCosts(space)
    ev = FakeEvaluator(space, weights=np.array([0.5, 0.2, 0.3]))
    res = Greedy(space, costs, ev, [f"macs={percent}%"]).search()
    idx = all_indices(space)
    acc = np.array([ev.accuracy(space.from_indices(r)) for r in idx])
    cost = costs.evaluate(space.widths_of_indices(idx), "macs")
    limit = res.targets[0].limits["macs"]
    best = acc[cost <= limit].max()
    (recorded,) = res.extra["recorded"]
    assert ev.accuracy(recorded) == pytest.approx(best)
    assert res.chosen[0].record.accuracy == pytest.approx(best)
    assert costs.evaluate(space.to_vector(recorded)[None], "macs")[0] <= limit


def test_path_shrinks_one_step_at_a_time_and_stops_at_the_last_target() -> None:
    space = synthetic_space((8, 12, 16), widths=4)
    ev = FakeEvaluator(space, weights=np.array([0.5, 0.2, 0.3]))
    res = Greedy(space, StepCosts(space), ev, ["macs=80%", "macs=50%"]).search()
    path = [space.to_indices(s["config"]) for s in res.extra["trajectory"]]
    assert (path[0] == space.to_indices(space.max())).all()
    for a, b in zip(path, path[1:], strict=False):
        assert np.abs(a - b).sum() == 1 and (b <= a).all()
    assert all(r is not None for r in res.extra["recorded"])
    last = space.to_vector(res.extra["recorded"][1])[None]
    assert StepCosts(space).evaluate(last, "macs")[0] <= res.targets[1].limits["macs"]
    assert len(path) < 10  # stopped once 50% was reached, not at the smallest subnet


class WeightedCosts:
    """Linear cost: a channel of g0 costs 10, one of g1 costs 1."""

    prices = np.array([0.0, 10.0, 1.0, 0.0])

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray:
        if metric != "macs":
            raise KeyError(metric)
        return np.atleast_2d(widths).astype(float) @ self.prices


def test_per_cost_ranks_shrinks_by_accuracy_lost_per_cost_saved() -> None:
    space = synthetic_space((8, 8), widths=4)
    # shrinking g0 loses more accuracy than g1 but saves 10x the cost
    ev = FakeEvaluator(space, weights=np.array([0.6, 0.4]))
    first = {}
    for per_cost in (False, True):
        res = Greedy(space, WeightedCosts(), ev, ["macs=90%"], per_cost=per_cost).search()
        step = res.extra["trajectory"][1]["config"]
        first[per_cost] = "g0" if step["g0"] < 8 else "g1"
    assert first == {False: "g1", True: "g0"}


def test_chooses_the_config_recorded_where_the_target_was_first_met() -> None:
    """AutoSlim's output is its recorded config, even when a candidate shrink scored on the
    way also fits the budget and scored higher (g0 costs 10x per channel: its first shrink
    meets 90% at once, but loses more accuracy than g1's, so greedy goes on with g1)."""
    space = synthetic_space((8, 8), widths=4)
    ev = FakeEvaluator(space, weights=np.array([0.6, 0.4]))
    res = Greedy(space, WeightedCosts(), ev, ["macs=90%"]).search()
    (recorded,) = res.extra["recorded"]
    limit = res.targets[0].limits["macs"]
    fits = [r for r in res.records if r.costs["macs"] <= limit]
    assert max(r.accuracy for r in fits) > ev.accuracy(recorded)  # a better one was scored
    assert res.chosen[0].record.config.to_dict() == recorded
