"""The README's results tables, generated from the committed benchmark results.

    python bench/readme_results.py --write     # rewrite the block between the markers

Reads bench/results/search.json (searched widths vs the uniform multiplier, TEST split,
mean over seeds and the paired difference) and bench/results/joslim-accuracy.json (TEST
accuracy of each slimmable file's best level within a MACs budget). Both runs are scaled
down for a shared 2-core machine; bench/README.md says how.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEGIN, END = "<!-- results: begin (bench/readme_results.py) -->", "<!-- results: end -->"


def _search_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| MACs budget | method | seeds | TEST acc. (%) | paired diff. vs uniform |",
             "|---|---|---:|---:|---:|"]
    for budget, methods in sorted(summary["budgets"].items(), key=lambda kv: float(kv[0])):
        for name, row in methods.items():
            std = f" ± {row['test_std']:.2f}" if row.get("test_std") is not None else ""
            diff = row.get("paired_diff")
            lines.append(f"| {budget}% | {name} | {len(row['seeds'])} | {row['test_mean']:.2f}{std}"
                         f" | {'-' if diff is None else f'{diff:+.2f}'} |")
    return lines


def _slimmable_table(results: list[dict[str, Any]]) -> list[str]:
    budgets = (0.25, 0.5, 0.75, 1.0)
    lines = ["| strategy | " + " | ".join(f"{int(100 * b)}% MACs" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for run in results:
        cells = []
        for b in budgets:
            fit = [lv["test_accuracy"] for lv in run["levels"] if lv["macs_ratio"] <= b + 1e-9]
            cells.append(f"{100 * max(fit):.2f}" if fit else "-")
        lines.append(f"| {run['strategy']} | " + " | ".join(cells) + " |")
    return lines


def render() -> str:
    search = json.loads((RESULTS / "search.json").read_text())
    joslim = json.loads((RESULTS / "joslim-accuracy.json").read_text())
    settings = search.get("settings", {})
    parts = [
        BEGIN,
        "Searched widths against the uniform multiplier at the same MACs (zoo ResNet-20, "
        "Fashion-MNIST, winners and uniform configs retrained from scratch with one recipe, "
        f"TEST split once; scaled down: supernets {settings.get('supernet_epochs')} epochs on "
        f"{settings.get('supernet_subset')} images, evolution {settings.get('population')} x "
        f"{settings.get('generations')}, retraining {settings.get('retrain_epochs')} epochs on "
        f"{settings.get('retrain_subset')} images; bench/README.md):",
        "",
        *_search_table(search["summary"]),
        "",
        "Slimmable files (one training run each, TEST accuracy of the best level within the "
        f"budget; `{joslim['command']}`):",
        "",
        *_slimmable_table(joslim["results"]),
        END,
    ]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's block")
    args = parser.parse_args()
    block = render()
    if not args.write:
        print(block)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + block + text[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
