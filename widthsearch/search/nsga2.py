"""NSGA-II (pymoo) over the integer vector of choice indices of the searchable groups.

Objectives: maximize val accuracy and minimize each objective cost (normalized by the full
model); every budget is a hard constraint (cost / limit - 1 <= 0; with several targets of one
metric, the loosest, and each target picks its best config from the result). Only feasible
configs are sent to the evaluator: an infeasible one is ranked by its constraint violation
alone, so scoring it would be wasted. The initial population is drawn by `sample_at` with
budget usages spread uniformly from the smallest subnet to the budget, so a tight budget
starts with a feasible population instead of the mostly infeasible uniform draws.

One generation is one resumable step: the state holds pymoo's population (X, F, G, rank,
crowding) and its random generator state, and pymoo's algorithm is rebuilt from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import WidthSearchError
from ..pymoo_state import population_state, restore_population, rng_state, set_rng_state
from ..sampling import sample_indices_at
from .base import Searcher
from .budgets import Target

POPULATION_KEYS = ("X", "F", "G")
"""What a generation's state keeps of each individual, besides rank and crowding."""


class NSGA2(Searcher):
    """Multi-objective search; the front of everything evaluated is in the result."""

    method = "nsga2"

    def __init__(self, *args: Any, population: int = 50, generations: int = 40,
                 **kwargs: Any) -> None:
        if population < 2 or generations < 1:
            raise WidthSearchError("NSGA-II needs population >= 2 and generations >= 1")
        self.population, self.generations = int(population), int(generations)
        self._algorithm: Any = None
        self._algorithm_k = -1
        super().__init__(*args, **kwargs)
        if len(self.searchable) == 0:
            raise WidthSearchError("the width space has no searchable group")
        self.loosest = self._loosest()

    def options(self) -> dict[str, Any]:
        return {"population": self.population, "generations": self.generations}

    def total_steps(self) -> int:
        return self.generations

    def init_state(self) -> dict[str, Any]:
        return {}

    def _loosest(self) -> Target:
        limits: dict[str, float] = {}
        specs: dict[str, str] = {}
        for t in self.targets:
            for m, lim in t.limits.items():
                if lim >= limits.get(m, -np.inf):
                    limits[m], specs[m] = lim, t.specs[m]
        return Target(limits, specs, self.targets[0].full)

    # -- the pymoo problem ---------------------------------------------------------------------
    def _full_indices(self, x: np.ndarray) -> np.ndarray:
        idx = np.tile(self.counts - 1, (len(x), 1))
        idx[:, self.searchable] = np.rint(x).astype(np.int64)
        return np.clip(idx, 0, self.counts - 1)

    def _objectives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self._full_indices(x)
        costs = self.costs(idx)
        g = np.column_stack([costs[m] / lim - 1.0 for m, lim in self.loosest.limits.items()])
        feasible = (g <= 0).all(axis=1)
        acc = np.zeros(len(idx))
        if feasible.any():
            acc[feasible] = self.score(idx[feasible])
        f = np.column_stack([-acc] + [costs[m] / self.full_costs[m] for m in self.objectives])
        return f, g

    def _build(self, initial: np.ndarray | None) -> Any:
        """pymoo's NSGA-II on our problem; `initial` is the first population (None on a
        resume, where the restored population replaces the initialization)."""
        try:
            from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2
            from pymoo.core.problem import Problem
            from pymoo.operators.crossover.sbx import SBX
            from pymoo.operators.mutation.pm import PM
            from pymoo.operators.repair.rounding import RoundingRepair
            from pymoo.operators.sampling.rnd import IntegerRandomSampling
        except ImportError:
            raise WidthSearchError(
                "the nsga2 method needs pymoo: pip install 'widthsearch[search]'"
            ) from None

        outer = self

        class _Widths(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=len(outer.searchable), n_obj=1 + len(outer.objectives),
                                 n_ieq_constr=len(outer.loosest.limits), xl=0,
                                 xu=(outer.counts[outer.searchable] - 1).astype(float),
                                 vtype=int)

            def _evaluate(self, x: np.ndarray, out: dict[str, Any], *a: Any, **k: Any) -> None:
                out["F"], out["G"] = outer._objectives(np.asarray(x))

        algorithm = PymooNSGA2(
            pop_size=self.population,
            sampling=IntegerRandomSampling() if initial is None else initial,
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        algorithm.setup(_Widths(), termination=("n_gen", 10 ** 9), seed=self.seed,
                        verbose=False)
        return algorithm

    def _initial_population(self) -> np.ndarray:
        usage = self.usage(self.loosest)
        lo = float(usage(self.space.to_vector(self.space.min())[None])[0])
        idx = sample_indices_at(self.space, usage, (lo, 1.0), self.population, self.rng,
                                strict=False)
        return idx[:, self.searchable].astype(float)

    def _restore(self, state: dict[str, Any]) -> Any:
        algorithm = self._build(None)
        set_rng_state(algorithm, state["rng"])
        restore_population(algorithm, state, POPULATION_KEYS)
        return algorithm

    def step(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        if self._algorithm is None or self._algorithm_k != k:
            self._algorithm = (self._build(self._initial_population()) if k == 0
                               else self._restore(state))
        algorithm = self._algorithm
        infills = algorithm.ask()
        if infills is not None:
            algorithm.evaluator.eval(algorithm.problem, infills, algorithm=algorithm)
            algorithm.tell(infills=infills)
        self._algorithm_k = k + 1
        return {**population_state(algorithm, POPULATION_KEYS), "rng": rng_state(algorithm),
                "stalled": infills is None}

    def done(self, state: dict[str, Any]) -> bool:
        return bool(state.get("stalled"))

