"""NSGA-II (pymoo) behind the ask / tell protocol: a genetic algorithm picks training widths.

The decision vector is the multiplier vector m in [lo, 1]^G of `WidthEncoder`; the two
objectives are the width's latest re-scored loss and its exact cost over the full cost.
pymoo's generations are handed out `n` widths at a time: a generation's offspring are
evaluated (from the history's losses) and told to pymoo once every one of them has been
trained and re-scored, and only then is the next generation asked for. When a generation
runs out before the caller's `n` is met, the rest are random per-group widths from the
proposer's own generator (they join the history like any other width). A width asked for
and never told holds its generation back (the rest stays random): Joslim tells every width
it trains.

Resume: the state holds pymoo's population, its iteration count and its random generator
state as it was *before* the current generation was asked; loading rebuilds the algorithm,
asks again and checks that the same generation comes back, so a resumed run proposes
exactly what the uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import WidthSearchError
from ..pymoo_state import population_state, restore_population, rng_state, set_rng_state
from .proposers import CostFn, WidthEncoder, WidthOptimizer, _rand


class NSGA2Proposer(WidthOptimizer):
    """Widths from NSGA-II generations of `population` multiplier vectors (see the module)."""

    name = "nsga2"

    def __init__(self, encoder: WidthEncoder, cost_fn: CostFn, population: int = 16,
                 seed: int = 0) -> None:
        if population < 2:
            raise WidthSearchError(f"NSGA-II needs population >= 2, got {population}")
        super().__init__(encoder, cost_fn, seed)
        self.population, self.seed = int(population), int(seed)
        self.full_cost = float(cost_fn(encoder.full()[None, :])[0]) or 1.0
        self.algorithm = self._build()
        self.rng_before_ask: dict[str, Any] = {}  # set when a generation is asked for
        self.batch = np.zeros((0, encoder.num_dims))  # the generation being handed out
        self.handed = 0
        self.generations = 0  # generations told to pymoo

    # -- pymoo --------------------------------------------------------------------------------
    def _build(self) -> Any:
        try:
            from pymoo.algorithms.moo.nsga2 import NSGA2
            from pymoo.core.problem import Problem
        except ImportError:
            raise WidthSearchError(
                "the nsga2 proposer needs pymoo: pip install 'widthsearch[search]'") from None
        outer = self

        class _Training(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=outer.encoder.num_dims, n_obj=2, xl=outer.encoder.lo,
                                 xu=1.0)

            def _evaluate(self, x: np.ndarray, out: dict[str, Any], *a: Any, **k: Any) -> None:
                out["F"] = outer._objectives(np.asarray(x))

        algorithm = NSGA2(pop_size=self.population, eliminate_duplicates=True)
        algorithm.setup(_Training(), termination=("n_gen", 10 ** 9), seed=self.seed,
                        verbose=False)
        return algorithm

    def _objectives(self, x: np.ndarray) -> np.ndarray:
        """(loss, cost / full cost) of each multiplier vector; a width never scored counts
        with the worst loss of the history (pessimistic, so it is not kept for nothing)."""
        widths = self.encoder.widths(x)
        told = self.losses[np.isfinite(self.losses)]
        worst = float(told.max()) if len(told) else 0.0
        loss = []
        for config in self.encoder.configs(widths):
            i = self._index.get(config)
            value = self.losses[i] if i is not None else np.nan
            loss.append(value if np.isfinite(value) else worst)
        return np.column_stack([loss, self.cost_fn(widths) / self.full_cost])

    def _scored(self, x: np.ndarray) -> bool:
        configs = self.encoder.configs(self.encoder.widths(x))
        return all(c in self._index and np.isfinite(self.losses[self._index[c]])
                   for c in configs)

    def _next_generation(self) -> None:
        """Tell pymoo the generation handed out (if any), then ask for the next one."""
        from pymoo.core.population import Population

        if len(self.batch):
            infills = Population.new("X", self.batch)
            self.algorithm.evaluator.eval(self.algorithm.problem, infills,
                                          algorithm=self.algorithm)
            self.algorithm.tell(infills=infills)
            self.generations += 1
        self.rng_before_ask = rng_state(self.algorithm)
        infills = self.algorithm.ask()
        self.batch = (np.zeros((0, self.encoder.num_dims)) if infills is None
                      else np.asarray(infills.get("X"), dtype=np.float64))
        self.handed = 0

    # -- the protocol -------------------------------------------------------------------------
    def _propose(self, n: int, generator: torch.Generator) -> np.ndarray:
        out = []
        if self.handed >= len(self.batch) and (not len(self.batch) or self._scored(self.batch)):
            self._next_generation()
        take = self.batch[self.handed:self.handed + n]
        self.handed += len(take)
        if len(take):
            out.append(self.encoder.widths(take))
        missing = n - len(take)
        if missing:
            lo = self.encoder.lo
            m = lo + (1 - lo) * _rand(self.generator, missing, self.encoder.num_dims)
            out.append(self.encoder.widths(m))
        return np.concatenate(out) if out else np.zeros((0, len(self.encoder.space)), np.int64)

    def state_dict(self) -> dict[str, Any]:
        a = self.algorithm
        pop = population_state(a) if a.is_initialized else None
        return {**super().state_dict(), "population": self.population, "pop": pop,
                "rng_before_ask": self.rng_before_ask,
                "batch": self.batch.tolist(), "handed": self.handed,
                "generations": self.generations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.algorithm = a = self._build()
        if state["pop"] is not None:  # the objectives as told, not re-scored with newer losses
            restore_population(a, state["pop"])
        self.rng_before_ask = dict(state["rng_before_ask"])
        self.batch = np.asarray(state["batch"], dtype=np.float64).reshape(-1, self.encoder.num_dims)
        self.handed = int(state["handed"])
        self.generations = int(state["generations"])
        if len(self.batch):  # ask again: the same generation must come back
            set_rng_state(a, self.rng_before_ask)
            again = a.ask()
            x = np.zeros((0,)) if again is None else np.asarray(again.get("X"))
            if x.shape != self.batch.shape or not np.allclose(x, self.batch):
                raise WidthSearchError("the nsga2 proposer's state does not reproduce its "
                                       "generation (another pymoo version?)")

