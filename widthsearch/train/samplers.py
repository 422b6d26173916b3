"""Where training draws its random widths: per group, uniformly in cost, or at the budgets.

Drawing every group's width on its own concentrates the cost of the drawn subnets around
the middle of the range (on resnet20 the 1% quantile of the MACs ratio is 0.19 while the
smallest subnet is at 0.06), so a tight budget is never trained. A sampler says what a
strategy's random widths aim at:

- `widths`: each group's width uniformly from its allowed widths;
- `cost-uniform`: a target cost drawn uniformly between the smallest and the full cost,
  then a random config at that cost (`WidthSpace.sample_at`);
- `budgets`: one of the run's declared budgets at random, then a random config within
  0.8-1.0 of it (the window the CafeNet / BCNet searches keep).

Samplers hold no state of their own: every draw comes from the step's generator, so a
resumed run draws the same widths (train/costs.py records where the widths went).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import WidthSearchError
from ..space import WidthConfig, WidthSpace

SAMPLERS = ("widths", "cost-uniform", "budgets")


class WidthSampler(abc.ABC):
    """Draws the random widths of a training step: per group (`sample`) or as one width
    ratio for every group (`sample_uniform`, for strategies with `uniform: true`)."""

    name = "sampler"

    @abc.abstractmethod
    def sample(self, space: WidthSpace, generator: torch.Generator) -> WidthConfig:
        """A random config of `space` (a space over the supernet's groups)."""

    def sample_uniform(self, space: WidthSpace, generator: torch.Generator,
                       low: float) -> WidthConfig:
        """One ratio for all groups, uniform in [low, 1]."""
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        return space.uniform(low + (1.0 - low) * u)


class PerGroupWidths(WidthSampler):
    """Each group's width drawn on its own, uniformly from its allowed widths."""

    name = "widths"

    def sample(self, space: WidthSpace, generator: torch.Generator) -> WidthConfig:
        return space.sample(generator)


class _CostAware(WidthSampler):
    """A sampler that first draws a cost to aim at, then a config at that cost."""

    cost_model: Any

    @abc.abstractmethod
    def _aim(self, space: WidthSpace, generator: torch.Generator
             ) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
        """(cost of width arrays, lowest and highest acceptable cost) for one draw."""

    def sample(self, space: WidthSpace, generator: torch.Generator) -> WidthConfig:
        cost, lo, hi = self._aim(space, generator)
        ends = np.stack([space.to_vector(space.min()), space.to_vector(space.max())])
        smallest, full = (float(c) for c in cost(ends))
        lo, hi = max(lo, smallest), min(hi, full)  # the window within reach
        if hi <= lo:  # one exact cost: the window is that point
            return space.sample_at(cost, lo, 0.0, generator, strict=False)
        return space.sample_at(cost, hi, 0.0, generator, low=lo / hi, high=1.0, strict=False)

    def sample_uniform(self, space: WidthSpace, generator: torch.Generator,
                       low: float) -> WidthConfig:
        """The one-ratio config nearest a target drawn in the window, preferring those inside
        it (bisection on the ratio, whose cost grows with it; one-ratio costs are coarse)."""
        cost, lo, hi = self._aim(space, generator)
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        target = lo + (hi - lo) * u

        def price(r: float) -> float:
            return float(cost(space.to_vector(space.uniform(r))[None, :])[0])

        a, b = low, 1.0
        for _ in range(40):
            mid = 0.5 * (a + b)
            a, b = (mid, b) if price(mid) <= target else (a, mid)
        # a: the widest ratio at or below the target, b: the next config above it
        best = min((a, b), key=lambda r: (not lo <= price(r) <= hi, abs(price(r) - target)))
        return space.uniform(best)


class CostUniform(_CostAware):
    """A target cost drawn uniformly between the smallest and the full cost."""

    name = "cost-uniform"

    def __init__(self, cost_model: Any, metric: str = "macs", tol: float = 0.02) -> None:
        from ..search.budgets import metric_costs

        self.cost_model, self.metric, self.tol = cost_model, metric, tol
        metric_costs(cost_model, cost_model.space.to_vector(cost_model.space.max())[None, :],
                     metric)  # an unknown metric is an error now, not at the first step

    def _aim(self, space: WidthSpace, generator: torch.Generator
             ) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
        def cost(widths: np.ndarray) -> np.ndarray:
            return self.cost_model.evaluate(widths, self.metric)

        ends = np.stack([space.to_vector(space.min()), space.to_vector(space.max())])
        smallest, full = (float(c) for c in cost(ends))
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        target = smallest + (full - smallest) * u
        return cost, target * (1 - self.tol), target * (1 + self.tol)


class AtBudgets(_CostAware):
    """One declared budget at random, then a config within `low`-`high` of it."""

    name = "budgets"

    def __init__(self, cost_model: Any, budgets: Sequence[str], space: WidthSpace,
                 low: float = 0.8, high: float = 1.0) -> None:
        from ..search.budgets import resolve_budgets

        if not budgets:
            raise WidthSearchError(
                "train.sampler=budgets needs the run's budgets, e.g. "
                "--set 'train.budgets=[macs=10%,macs=25%]'")
        self.targets = resolve_budgets(list(budgets), space, cost_model)
        self.cost_model, self.low, self.high = cost_model, low, high

    def _aim(self, space: WidthSpace, generator: torch.Generator
             ) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
        k = int(torch.randint(len(self.targets), (1,), generator=generator))
        usage = self.targets[k].usage(self.cost_model)  # cost / limit, monotone in widths
        return usage, self.low, self.high


def build_sampler(name: str, cost_model: Any, space: WidthSpace, *,
                  budgets: Sequence[str] = (), metric: str = "macs") -> WidthSampler:
    """The sampler a run config names (`train.sampler`)."""
    if name == "widths":
        return PerGroupWidths()
    if name == "cost-uniform":
        return CostUniform(cost_model, metric)
    if name == "budgets":
        return AtBudgets(cost_model, budgets, space)
    raise WidthSearchError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
