"""The resumable search loop: a killed or stopped search ends with the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _search_fakes import FakeEvaluator, SyntheticCosts, synthetic_space

from widthsearch.errors import WidthSearchError
from widthsearch.search.evolution import Evolution
from widthsearch.search.greedy import Greedy
from widthsearch.search.nsga2 import NSGA2
from widthsearch.search.random import RandomSearch

SEARCHERS = [
    (RandomSearch, {"samples": 120, "batch": 20}),
    (Evolution, {"population": 16, "generations": 6, "top_k": 4, "mutations": 8,
                 "crossovers": 8}),
    (Greedy, {}),
    (NSGA2, {"population": 12, "generations": 6}),
]
BUDGETS = ["macs=35%", "params=70%"]


def _run(cls, kw, state_dir, evaluator=None, **search_kw):
    space = synthetic_space((16, 24, 32, 16), widths=6)
    ev = evaluator or FakeEvaluator(space, coupling=0.05)
    s = cls(space, SyntheticCosts(), ev, BUDGETS, seed=3, state_dir=state_dir, **kw)
    return s, s.search(**search_kw)


@pytest.mark.parametrize(("cls", "kw"), SEARCHERS, ids=[c.method for c, _ in SEARCHERS])
def test_stopped_and_killed_searches_resume_to_the_same_result(cls, kw, tmp_path: Path) -> None:
    _, whole = _run(cls, kw, tmp_path / "whole")
    # stop after 2 steps, then resume in a new searcher
    _, part = _run(cls, kw, tmp_path / "stopped", max_steps=2)
    assert len(part.records) < len(whole.records)
    _, resumed = _run(cls, kw, tmp_path / "stopped")
    assert resumed.front_json() == whole.front_json()
    assert resumed.chosen_json() == whole.chosen_json()
    # killed inside a step (the evaluator dies on its 3rd call), then resumed
    space = synthetic_space((16, 24, 32, 16), widths=6)
    with pytest.raises(KeyboardInterrupt):
        _run(cls, kw, tmp_path / "killed", FakeEvaluator(space, coupling=0.05, fail_after=2))
    counting = FakeEvaluator(space, coupling=0.05)
    _, after_kill = _run(cls, kw, tmp_path / "killed", counting)
    assert after_kill.front_json() == whole.front_json()
    assert after_kill.chosen_json() == whole.chosen_json()
    # a finished search loads its state and evaluates nothing more
    idle = FakeEvaluator(space, coupling=0.05)
    _, again = _run(cls, kw, tmp_path / "whole", idle)
    assert idle.calls == 0 and again.chosen_json() == whole.chosen_json()


def test_state_from_other_settings_or_damaged_is_refused(tmp_path: Path) -> None:
    kw = {"samples": 40, "batch": 20}
    _run(RandomSearch, kw, tmp_path, max_steps=1)
    with pytest.raises(WidthSearchError, match="other settings"):
        _run(RandomSearch, {"samples": 60, "batch": 20}, tmp_path)
    # resume=False starts over and overwrites
    _, fresh = _run(RandomSearch, {"samples": 60, "batch": 20}, tmp_path, resume=False)
    assert len(fresh.records) > 0
    path = tmp_path / "state-random.json"
    blob = json.loads(path.read_text())
    blob["payload"]["k"] = 0
    path.write_text(json.dumps(blob))
    with pytest.raises(WidthSearchError, match="damaged"):
        _run(RandomSearch, {"samples": 60, "batch": 20}, tmp_path)


def test_evaluations_are_cached_and_chosen_meets_every_budget() -> None:
    space = synthetic_space((16, 24, 32, 16), widths=6)
    ev = FakeEvaluator(space)
    s = Evolution(space, SyntheticCosts(), ev, BUDGETS, population=16, generations=5,
                  top_k=4, mutations=8, crossovers=8)
    res = s.search()
    assert ev.configs_seen == len(res.records)  # each config scored once
    (chosen,) = res.chosen
    for metric, limit in chosen.target.limits.items():
        assert chosen.record.costs[metric] <= limit
    best_feasible = max(r.accuracy for r in res.records
                        if all(r.costs[m] <= lim for m, lim in chosen.target.limits.items()))
    assert chosen.record.accuracy == best_feasible
    out = res.chosen_json()["chosen"][0]
    assert set(out) == {"config", "choice", "budget", "costs", "val_accuracy"}
    assert set(res.front_json()["evaluated"][0]) >= {"config", "costs", "val_accuracy"}


def test_objectives_are_validated_and_reported() -> None:
    space = synthetic_space()
    with pytest.raises(WidthSearchError, match="unknown objective 'speed'"):
        RandomSearch(space, SyntheticCosts(), FakeEvaluator(space), ["macs=50%"],
                     objectives=["speed"])
    with pytest.raises(WidthSearchError, match="no metric 'latency'"):
        RandomSearch(space, SyntheticCosts(), FakeEvaluator(space), ["macs=50%"],
                     objectives=["latency"])
    res = NSGA2(space, SyntheticCosts(), FakeEvaluator(space), ["macs=50%"],
                objectives=["macs", "params"], population=8, generations=2).search()
    assert res.front_json()["objectives"] == ["val_accuracy", "macs", "params"]
    assert set(res.records[0].costs) == {"macs", "params", "memory"}
