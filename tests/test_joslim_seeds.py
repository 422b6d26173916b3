"""bench/joslim_seeds.py: means, spreads and paired differences over seeds, one recipe only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # its sibling bench_joslim_accuracy
    spec = importlib.util.spec_from_file_location("joslim_seeds", ROOT / "bench" / "joslim_seeds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(seed: int, joslim: float, slim: float, uniform: float,
            **settings: Any) -> dict[str, Any]:
    """One bench_joslim_accuracy results file with one objective and one budget."""
    cell = {"ratio": 0.5, "test_accuracy": joslim}

    def levels(test: float) -> list[dict[str, float]]:  # val one point above test
        return [{"ratio": 0.5, "test_accuracy": test, "val_accuracy": test + 0.01},
                {"ratio": 1.0, "test_accuracy": test + 0.02, "val_accuracy": test + 0.03}]

    return {
        "command": f"bench --seed {seed}",
        "settings": {"seed": seed, "epochs": 2, "threads": 1, **settings},
        "models": {"resnet20": {
            "comparison": {"macs": {"area": {"joslim": joslim, "slim": slim},
                                    "area_from": 0.25}},
            "slimmable": {
                "joslim-macs@macs": {"strategy": "joslim", "metric": "macs",
                                     "levels": levels(joslim), "at_budget": {"50%": cell}},
                "slim@macs": {"strategy": "slim", "metric": "macs", "levels": levels(slim),
                              "at_budget": {"50%": {"ratio": 0.5, "test_accuracy": slim}}}},
            "uniform": {"macs": {"50%": {"ratio": 0.5, "test_accuracy": uniform}}},
        }},
    }


def test_paired_differences_are_taken_seed_by_seed(seeds: ModuleType) -> None:
    summary = seeds.summarize([results(0, 0.70, 0.68, 0.71), results(1, 0.60, 0.61, 0.66),
                               results(2, 0.65, 0.62, 0.66, threads=2)])
    macs = summary["models"]["resnet20"]["macs"]
    assert summary["seeds"] == [0, 1, 2]
    assert macs["area"]["joslim"]["per_seed"] == [70.0, 60.0, 65.0]
    assert macs["area"]["joslim"]["mean"] == pytest.approx(65.0)
    assert macs["area"]["joslim"]["std"] == pytest.approx(5.0)
    assert macs["paired"]["joslim - slim"]["per_seed"] == [2.0, -1.0, 3.0]
    assert macs["paired"]["joslim - slim"]["mean"] == pytest.approx(4 / 3, abs=0.01)
    # from the levels' val scores (each a point above test over [50%, 100%])
    assert macs["val_area"]["joslim"]["per_seed"] == [71.0, 61.0, 66.0]
    assert macs["val_area"]["slim"]["per_seed"] == [69.0, 62.0, 63.0]
    at_half = macs["at_budget"]["50%"]
    assert at_half["joslim - uniform"]["per_seed"] == [-1.0, -6.0, -1.0]
    assert at_half["uniform"]["min"] == 66.0 and at_half["uniform"]["max"] == 71.0
    assert summary["dropped"] == []


def test_what_one_seed_lacks_is_left_out_and_listed(seeds: ModuleType) -> None:
    partial = results(1, 0.60, 0.61, 0.66)
    model = partial["models"]["resnet20"]
    del model["comparison"]["macs"]["area"]["slim"]
    model["slimmable"]["joslim-macs@macs"]["at_budget"]["50%"] = None  # no level fits there
    summary = seeds.summarize([results(0, 0.70, 0.68, 0.71), partial])
    macs = summary["models"]["resnet20"]["macs"]
    assert list(macs["area"]) == ["joslim"] and macs["paired"] == {}
    assert list(macs["at_budget"]["50%"]) == ["uniform"]
    assert any("method slim" in note for note in summary["dropped"])
    assert any("joslim has no level" in note for note in summary["dropped"])


def test_files_of_different_recipes_or_one_seed_are_refused(seeds: ModuleType) -> None:
    with pytest.raises(ValueError, match="not one recipe"):
        seeds.summarize([results(0, 0.7, 0.6, 0.7), results(1, 0.7, 0.6, 0.7, epochs=3)])
    with pytest.raises(ValueError, match="share a seed"):
        seeds.summarize([results(0, 0.7, 0.6, 0.7), results(0, 0.7, 0.6, 0.7)])
    with pytest.raises(ValueError, match="at least two"):
        seeds.summarize([results(0, 0.7, 0.6, 0.7)])
    other_range = results(1, 0.7, 0.6, 0.7)
    other_range["models"]["resnet20"]["comparison"]["macs"]["area_from"] = 0.3
    with pytest.raises(ValueError, match="different cost ranges"):
        seeds.summarize([results(0, 0.7, 0.6, 0.7), other_range])
