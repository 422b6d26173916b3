"""Greedy slimming (AutoSlim): from the full width, repeatedly shrink the group whose
one-step shrink loses the least val accuracy, and record the config where each target's
budgets are first met.

One shrink is one resumable step; every candidate shrink is scored (a cached batch), so a
step costs one evaluation per group that can still shrink.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WidthSearchError
from .base import Searcher


class Greedy(Searcher):
    """AutoSlim's greedy slimming; `step` is how many allowed widths one shrink removes.

    AutoSlim ranks shrinks by the accuracy they lose, which is fair when every step saves
    about the same cost (FLOPs-sensitive bins). `per_cost=True` ranks them by accuracy lost
    per unit of the first budget's metric saved instead, for spaces whose steps differ in cost.
    """

    method = "greedy"

    def __init__(self, *args: Any, step: int = 1, per_cost: bool = False,
                 **kwargs: Any) -> None:
        if step < 1:
            raise WidthSearchError(f"greedy step must be a positive integer, got {step}")
        self.shrink, self.per_cost = int(step), bool(per_cost)
        super().__init__(*args, **kwargs)

    def options(self) -> dict[str, Any]:
        return {"step": self.shrink, "per_cost": self.per_cost}

    def total_steps(self) -> int:
        return int(np.sum(self.counts - 1)) + 1

    def init_state(self) -> dict[str, Any]:
        return {"current": (self.counts - 1).tolist(), "recorded": [None] * len(self.targets),
                "trajectory": [], "stuck": False}

    def done(self, state: dict[str, Any]) -> bool:
        return state["stuck"] or all(r is not None for r in state["recorded"])

    def step(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        cur = np.array(state["current"], dtype=np.int64)
        if k > 0:
            cands = []
            for j in self.searchable:
                if cur[j] > 0:
                    c = cur.copy()
                    c[j] = max(0, c[j] - self.shrink)
                    cands.append(c)
            if not cands:
                return {**state, "stuck": True}
            cands = np.array(cands)
            acc = self.score(cands)
            metric = self.targets[0].metrics[0]
            saved = self.costs(cur[None])[metric][0] - self.costs(cands)[metric]
            lost = float(self.score(cur[None])[0]) - acc
            key = lost / np.maximum(saved, 1e-12) if self.per_cost else lost
            # ties: the shrink that saves the most of the first budget's metric
            cur = cands[np.lexsort((-saved, key))[0]]
        acc_cur = float(self.score(cur[None])[0])
        recorded = list(state["recorded"])
        for i, t in enumerate(self.targets):
            if recorded[i] is None and self.usage_of_indices(t, cur[None])[0] <= 1.0 + 1e-12:
                recorded[i] = cur.tolist()
        trajectory = [*state["trajectory"], {"indices": cur.tolist(), "val_accuracy": acc_cur}]
        return {"current": cur.tolist(), "recorded": recorded, "trajectory": trajectory,
                "stuck": False}

    def eligible(self, target: int, usage: np.ndarray) -> np.ndarray:
        """AutoSlim's output: the config recorded where the target was first met."""
        indices = self._state["recorded"][target]
        if indices is None:
            return super().eligible(target, usage)
        return np.array([self._lookup[tuple(int(v) for v in indices)]])

    def recorded(self, state: dict[str, Any] | None = None) -> list[dict[str, int] | None]:
        """The config recorded at each target (AutoSlim's output), in target order."""
        st = self._state if state is None else state
        return [None if r is None else self.space.from_indices(r).to_dict() for r in st["recorded"]]

    def result_extra(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"recorded": self.recorded(state),
                "trajectory": [{"config": self.space.from_indices(s["indices"]).to_dict(),
                                "val_accuracy": s["val_accuracy"]} for s in state["trajectory"]]}
