"""Budgets: parsing, units, percentages, reachable range, several at once."""

from __future__ import annotations

import numpy as np
import pytest
from _search_fakes import SyntheticCosts, synthetic_space

from widthsearch.errors import WidthSearchError
from widthsearch.search.budgets import parse_budget, resolve_budgets


@pytest.mark.parametrize(("text", "metric", "value", "fraction"), [
    ("macs=50%", "macs", None, 0.5),
    ("params=1.2M", "params", 1.2e6, None),
    ("params=300k", "params", 3e5, None),
    ("macs=2.5e6", "macs", 2.5e6, None),
    ("memory=800KB", "memory", 8e5, None),
    ("memory=1KiB", "memory", 1024.0, None),
    ("memory=4096", "memory", 4096.0, None),
    ("latency=2.5ms", "latency", 2.5e-3, None),
    ("latency=300us", "latency", 3e-4, None),
    (" MACs = 25 % ", "macs", None, 0.25),
])
def test_parse(text: str, metric: str, value: float | None, fraction: float | None) -> None:
    b = parse_budget(text)
    assert b.metric == metric
    assert b.fraction == (None if fraction is None else pytest.approx(fraction))
    assert b.value == (None if value is None else pytest.approx(value))


@pytest.mark.parametrize(("text", "message"), [
    ("macs", "looks like"),
    ("speed=3", "unknown budget metric 'speed'; known: macs, params"),
    ("flops=50%", "multiply-accumulates, write macs=50%"),
    ("macs=fast", "not a number"),
    ("macs=0%", r"percentage must be in \(0, 100\]"),
    ("macs=150%", "percentage"),
    ("latency=2.5", "latency needs a unit"),
    ("memory=3parsecs", "unknown unit 'parsecs' for memory"),
    ("params=0", "must be positive"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(WidthSearchError, match=message):
        parse_budget(text)


def test_resolve_percent_and_absolute() -> None:
    space, costs = synthetic_space(), SyntheticCosts()
    full = costs.evaluate(space.to_vector(space.max())[None], "macs")[0]
    full_p = costs.evaluate(space.to_vector(space.max())[None], "params")[0]
    (t,) = resolve_budgets(["macs=50%", f"params={int(full_p * 0.7)}"], space, costs)
    assert t.limits == {"macs": pytest.approx(0.5 * full), "params": int(full_p * 0.7)}
    w = np.stack([space.to_vector(space.min()), space.to_vector(space.max())])
    u = t.usage(costs)(w)
    assert u[0] < 1.0 and u[1] == pytest.approx(2.0)  # full model: twice the MACs budget
    assert t.to_json()["macs"]["ratio"] == pytest.approx(0.5)


def test_several_targets_of_one_metric_share_the_others() -> None:
    space, costs = synthetic_space(), SyntheticCosts()
    targets = resolve_budgets(["macs=30%", "params=80%", "macs=60%"], space, costs)
    assert [dict(t.specs) for t in targets] == [
        {"macs": "macs=30%", "params": "params=80%"},
        {"macs": "macs=60%", "params": "params=80%"},
    ]
    with pytest.raises(WidthSearchError, match="one metric only"):
        resolve_budgets(["macs=30%", "macs=60%", "params=80%", "params=90%"], space, costs)


def test_out_of_range_budgets_are_one_error_naming_the_range() -> None:
    space, costs = synthetic_space(), SyntheticCosts()
    lo = costs.evaluate(space.to_vector(space.min())[None], "macs")[0]
    hi = costs.evaluate(space.to_vector(space.max())[None], "macs")[0]
    with pytest.raises(WidthSearchError) as err:
        resolve_budgets(["macs=1%", f"params={10 ** 9}"], space, costs)
    msg = str(err.value)
    assert "macs=1%" in msg and "params=" in msg  # both at once
    assert f"[{lo:,.0f}, {hi:,.0f}]" in msg and "smallest subnet .. full model" in msg
    with pytest.raises(WidthSearchError, match="no metric 'latency'.*latency table"):
        resolve_budgets(["latency=2ms"], space, costs)
    with pytest.raises(WidthSearchError, match="at least one budget"):
        resolve_budgets([], space, costs)
