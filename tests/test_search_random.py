"""Random search draws within every budget, at once, without rejection."""

from __future__ import annotations

import numpy as np
from _search_fakes import FakeEvaluator, SyntheticCosts, synthetic_space

from widthsearch.search.random import RandomSearch


def test_draws_within_the_budgets() -> None:
    space = synthetic_space((16, 24, 32, 16, 24), widths=8)
    ev = FakeEvaluator(space, weights=np.array([0.3, 0.2, 0.35, 0.15, 0.25]))
    res = RandomSearch(space, SyntheticCosts(), ev, ["macs=15%", "params=40%"], samples=200,
                       seed=2).search()
    (target,) = res.targets
    usage = target.usage_of({m: np.array([r.costs[m] for r in res.records])
                             for m in target.metrics})
    assert ((usage >= 0.8 - 1e-9) & (usage <= 1.0 + 1e-9)).all()
    assert len(res.records) > 150  # distinct configs, not one repeated
    assert ev.calls == 4  # one batch per step
