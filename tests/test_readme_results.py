"""The README's results block is what bench/readme_results.py renders from bench/results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_are_generated_from_the_committed_benchmarks() -> None:
    spec = importlib.util.spec_from_file_location("readme_results",
                                                  ROOT / "bench" / "readme_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() in (ROOT / "README.md").read_text(), \
        "run python bench/readme_results.py --write"
