"""pymoo's NSGA-II state as plain values: saved, put back, and the next generation the same."""

from __future__ import annotations

import json

import numpy as np

from widthsearch.pymoo_state import population_state, restore_population, rng_state, set_rng_state


def _algorithm():  # type: ignore[no-untyped-def]
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.problems import get_problem

    algorithm = NSGA2(pop_size=8)
    algorithm.setup(get_problem("zdt1", n_var=4), termination=("n_gen", 100), seed=3,
                    verbose=False)
    return algorithm


def _generation(algorithm) -> np.ndarray:  # type: ignore[no-untyped-def]
    infills = algorithm.ask()
    algorithm.evaluator.eval(algorithm.problem, infills, algorithm=algorithm)
    algorithm.tell(infills=infills)
    return np.asarray(infills.get("X"))


def test_a_restored_algorithm_asks_the_same_next_generation() -> None:
    whole = _algorithm()
    for _ in range(3):
        _generation(whole)
    saved = json.loads(json.dumps({"pop": population_state(whole), "rng": rng_state(whole)}))
    assert max(saved["pop"]["crowding"]) == 1e300  # the ends of a front, as a finite number
    restored = _algorithm()
    restore_population(restored, saved["pop"])
    set_rng_state(restored, saved["rng"])
    assert restored.n_iter == whole.n_iter
    assert np.array_equal(_generation(restored), _generation(whole))
    assert np.allclose(restored.pop.get("F"), whole.pop.get("F"))
