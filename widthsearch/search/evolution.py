"""Single-budget evolution as the CafeNet / BCNet authors search (population 50, 40
generations, top-k 10, 25 mutations with probability 0.1 per gene + 25 crossovers).

Candidates are kept within [low, high] of the budget (0.8-1.0 by default), measured as the
budget usage (largest cost / limit over the target's budgets). Where the authors resample
until a candidate lands in the window, here the initial population is drawn in it by
`sample_at`, and a mutant or child that leaves it is moved along the ray through itself
back into it (the same bisection), so no loop waits on luck.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import WidthSearchError
from ..sampling import sample_indices_at
from .base import Searcher


class Evolution(Searcher):
    """Evolutionary search per target; one generation is one resumable step."""

    method = "evolution"

    def __init__(self, *args: Any, population: int = 50, generations: int = 40,
                 top_k: int = 10, mutations: int = 25, crossovers: int = 25,
                 mutation_prob: float = 0.1, low: float = 0.8, high: float = 1.0,
                 **kwargs: Any) -> None:
        if min(population, generations, top_k) < 1 or min(mutations, crossovers) < 0:
            raise WidthSearchError("evolution needs population, generations, top_k >= 1")
        if mutations + crossovers < 1:
            raise WidthSearchError("evolution needs at least one mutation or crossover")
        if not 0.0 <= mutation_prob <= 1.0:
            raise WidthSearchError(f"mutation_prob must lie in [0, 1], got {mutation_prob}")
        if not 0.0 <= low <= high <= 1.0:
            raise WidthSearchError(f"evolution needs 0 <= low <= high <= 1, got {low}, {high}")
        self.population, self.generations, self.top_k = int(population), int(generations), int(top_k)
        self.mutations, self.crossovers = int(mutations), int(crossovers)
        self.mutation_prob, self.low, self.high = float(mutation_prob), float(low), float(high)
        super().__init__(*args, **kwargs)

    def options(self) -> dict[str, Any]:
        return {"population": self.population, "generations": self.generations,
                "top_k": self.top_k, "mutations": self.mutations, "crossovers": self.crossovers,
                "mutation_prob": self.mutation_prob, "low": self.low, "high": self.high}

    def total_steps(self) -> int:
        return len(self.targets) * self.generations

    def init_state(self) -> dict[str, Any]:
        return {"candidates": [], "top": []}

    def step(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        t, gen = divmod(k, self.generations)
        target = self.targets[t]
        usage = self.usage(target)
        if gen == 0:
            cands = sample_indices_at(self.space, usage, (self.low, self.high), self.population,
                                      self.rng, strict=False)
            top: list[list[int]] = []
        else:
            cands = np.array(state["candidates"], dtype=np.int64)
            top = state["top"]
        self.score(cands)
        ok = self._in_window(target, cands)
        # top-k over every candidate of this target so far, ties broken by the older entry
        pool = [list(map(int, row)) for row in cands[ok]] + [list(r) for r in top]
        pool = list({tuple(r): r for r in pool}.values())
        pool_acc = self.score(np.array(pool, dtype=np.int64)) if pool else np.zeros(0)
        order = np.argsort(-pool_acc, kind="stable")[: self.top_k]
        top = [pool[i] for i in order]
        if gen == self.generations - 1 or not top:
            return {"candidates": [], "top": top}
        parents = np.array(top, dtype=np.int64)
        children = np.concatenate([self._mutate(parents), self._crossover(parents)])
        children = self._repair(target, children)
        return {"candidates": children.tolist(), "top": top}

    def eligible(self, target: int, usage: np.ndarray) -> np.ndarray:
        """As the authors choose: within the target's own window [low, high] of the budget,
        so a cheaper config found for a smaller budget does not stand in for this one (an
        undertrained supernet tends to score narrower widths higher); any config within the
        budget only when the window holds none."""
        inside = np.flatnonzero((usage >= self.low - 1e-12) & (usage <= self.high + 1e-12))
        return inside if len(inside) else super().eligible(target, usage)

    def _in_window(self, target: Any, idx: np.ndarray) -> np.ndarray:
        u = self.usage_of_indices(target, idx)
        return (u >= self.low - 1e-12) & (u <= self.high + 1e-12)

    def _mutate(self, parents: np.ndarray) -> np.ndarray:
        n, g = self.mutations, parents.shape[1]
        if n == 0:
            return parents[:0]
        pick = torch.randint(len(parents), (n,), generator=self.rng).numpy()
        flip = torch.rand((n, g), generator=self.rng, dtype=torch.float64).numpy()
        fresh = torch.rand((n, g), generator=self.rng, dtype=torch.float64).numpy()
        new = np.minimum((fresh * self.counts).astype(np.int64), self.counts - 1)
        out = parents[pick].copy()
        mask = flip < self.mutation_prob
        out[mask] = new[mask]
        return out

    def _crossover(self, parents: np.ndarray) -> np.ndarray:
        n, g = self.crossovers, parents.shape[1]
        if n == 0:
            return parents[:0]
        a = torch.randint(len(parents), (n,), generator=self.rng).numpy()
        b = torch.randint(len(parents), (n,), generator=self.rng).numpy()
        side = torch.rand((n, g), generator=self.rng, dtype=torch.float64).numpy() < 0.5
        return np.where(side, parents[a], parents[b])

    def _repair(self, target: Any, children: np.ndarray) -> np.ndarray:
        bad = np.flatnonzero(~self._in_window(target, children))
        if len(bad):
            children = children.copy()
            children[bad] = sample_indices_at(self.space, self.usage(target),
                                              (self.low, self.high), len(bad), self.rng,
                                              strict=False, toward=children[bad])
        return children
