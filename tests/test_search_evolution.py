"""Evolution keeps its candidates in the 0.8-1.0 window of the budget and improves on its start."""

from __future__ import annotations

import numpy as np
from _search_fakes import FakeEvaluator, SyntheticCosts, all_indices, synthetic_space

from widthsearch.search.evolution import Evolution


def test_candidates_stay_in_the_window_and_the_best_is_found() -> None:
    space = synthetic_space((16, 24, 32, 16, 24), widths=6)
    costs = SyntheticCosts()
    ev = FakeEvaluator(space, coupling=0.1, weights=np.array([0.3, 0.2, 0.35, 0.15, 0.25]))
    s = Evolution(space, costs, ev, ["macs=20%"], seed=0, generations=15)
    res = s.search()
    limit = res.targets[0].limits["macs"]
    used = np.array([r.costs["macs"] for r in res.records]) / limit
    assert (used <= 1.0 + 1e-9).mean() > 0.97 and (used >= 0.8 - 1e-9).mean() > 0.97
    idx = all_indices(space)
    acc = np.array([ev.accuracy(space.from_indices(r)) for r in idx])
    macs = costs.evaluate(space.widths_of_indices(idx), "macs")
    best = acc[macs <= limit].max()
    first_gen = max(r.accuracy for r in res.records if r.step == 0)
    assert res.chosen[0].record.accuracy >= best - 0.002
    assert res.chosen[0].record.accuracy > first_gen


def test_default_schedule_is_the_authors() -> None:
    space = synthetic_space()
    s = Evolution(space, SyntheticCosts(), FakeEvaluator(space), ["macs=50%"])
    assert s.options() == {"population": 50, "generations": 40, "top_k": 10, "mutations": 25,
                           "crossovers": 25, "mutation_prob": 0.1, "low": 0.8, "high": 1.0}


class NarrowerScoresHigher(FakeEvaluator):
    """An undertrained supernet's bias: the narrower the config, the higher its score."""

    def accuracy(self, config) -> float:  # noqa: ANN001
        return 1.0 - float(np.mean([config[g.name] / g.size for g in self.space.groups]))


def test_each_budget_chooses_within_its_own_window() -> None:
    """A config evaluated for the 30% budget scores higher, lies within the 75% budget,
    and still does not stand in for it: the 75% choice spends 0.8-1.0 of its budget."""
    space = synthetic_space((16, 24, 32, 16, 24), widths=6)
    s = Evolution(space, SyntheticCosts(), NarrowerScoresHigher(space), ["macs=30%", "macs=75%"],
                  seed=0, population=12, generations=3, top_k=4, mutations=6, crossovers=6)
    res = s.search()
    for chosen in res.chosen:
        used = chosen.record.costs["macs"] / chosen.target.limits["macs"]
        assert 0.8 - 1e-9 <= used <= 1.0 + 1e-9, (chosen.target.label(), used)
    low, high = (c.record for c in res.chosen)
    assert low.accuracy > high.accuracy and low.costs["macs"] <= res.targets[1].limits["macs"]
