"""A pymoo genetic algorithm's state as plain values, and back: checkpoints hold no pickles.

The width search (`search/nsga2.py`) and the training-width proposer
(`train/nsga2_proposer.py`) both resume pymoo's NSGA-II from these: the population with what
survival reads (objectives, constraints when there are any, rank, crowding), the iteration
count, and numpy's bit-generator state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INFINITE_CROWDING = 1e300
"""Crowding distances are infinite at the ends of a front; JSON has no infinity."""


def population_state(algorithm: Any, keys: Sequence[str] = ("X", "F")) -> dict[str, Any]:
    """The population's `keys` (plus rank and crowding) and the iteration count."""
    pop = algorithm.pop
    state = {k: np.asarray(pop.get(k), dtype=np.float64).tolist() for k in (*keys, "rank")}
    state["crowding"] = [INFINITE_CROWDING if v == np.inf else float(v)
                         for v in np.asarray(pop.get("crowding"), dtype=np.float64)]
    state["n_iter"] = int(algorithm.n_iter)
    return state


def restore_population(algorithm: Any, state: Mapping[str, Any],
                       keys: Sequence[str] = ("X", "F")) -> None:
    """Put a `population_state` back into a freshly set-up algorithm, objectives as saved
    (not re-evaluated)."""
    from pymoo.core.population import Population

    pop = Population.new("X", np.array(state["X"], dtype=float))
    for k in (*keys[1:], "rank", "crowding"):
        pop.set(k, np.array(state[k]))
    algorithm.pop = pop
    algorithm.is_initialized = True
    algorithm.n_iter = int(state["n_iter"])
    algorithm._set_optimum()


def rng_state(algorithm: Any) -> dict[str, Any]:
    """The algorithm's numpy bit-generator state as plain Python values."""
    return _plain(algorithm.random_state.bit_generator.state)


def set_rng_state(algorithm: Any, state: Mapping[str, Any]) -> None:
    algorithm.random_state.bit_generator.state = dict(state)


def _plain(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_plain(v) if isinstance(v, Mapping) else int(v) if isinstance(v, np.integer)
                else v) for k, v in state.items()}
