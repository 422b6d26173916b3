"""Random search within the budget: configs drawn at a target cost by `sample_at`.

Each target gets `samples` configs whose budget usage (largest cost / limit) lies in
[low, 1], drawn in batches of `batch` (one resumable step each). Drawing at the budget,
not uniformly over widths, matters: uniform widths almost never reach a tight budget.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import WidthSearchError
from ..sampling import sample_indices_at
from .base import Searcher


class RandomSearch(Searcher):
    """Score random configs near each budget and keep the best (the baseline of any search)."""

    method = "random"

    def __init__(self, *args: Any, samples: int = 500, batch: int = 50, low: float = 0.8,
                 **kwargs: Any) -> None:
        if samples < 1 or batch < 1:
            raise WidthSearchError("random search needs samples >= 1 and batch >= 1")
        if not 0.0 <= low <= 1.0:
            raise WidthSearchError(f"low must lie in [0, 1], got {low}")
        self.samples, self.batch, self.low = int(samples), int(batch), float(low)
        super().__init__(*args, **kwargs)

    def options(self) -> dict[str, Any]:
        return {"samples": self.samples, "batch": self.batch, "low": self.low}

    @property
    def _per_target(self) -> int:
        return math.ceil(self.samples / self.batch)

    def total_steps(self) -> int:
        return len(self.targets) * self._per_target

    def init_state(self) -> dict[str, Any]:
        return {}

    def step(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        target = self.targets[k // self._per_target]
        start = (k % self._per_target) * self.batch
        n = min(self.batch, self.samples - start)
        idx = sample_indices_at(self.space, self.usage(target), (self.low, 1.0), n, self.rng,
                                strict=False)
        self.score(idx)
        return state
