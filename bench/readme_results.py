"""The README's results tables, generated from the committed benchmark results.

    python bench/readme_results.py --write     # rewrite the block between the markers

Reads bench/results/search.json (searched widths vs the uniform multiplier, TEST split,
mean over seeds and the paired difference) and bench/results/joslim-accuracy-*.json (TEST
accuracy of each slimmable file's best level within a MACs or memory budget, and of
uniform models trained per budget) and bench/results/joslim-seeds-*.json (their summaries
over seeds, bench/joslim_seeds.py).
Both runs are scaled down for a shared 2-core machine; bench/README.md says how.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
JOSLIM_RUNS = ("resnet20", "resnet20-short", "mobilenetv2", "mobilenetv2-memory")
"""bench/results/joslim-accuracy-<name>.json files shown, in this order."""
SEED_SUMMARIES = ("resnet20-long", "resnet20-nodistill", "resnet20", "resnet20-short")
"""bench/results/joslim-seeds-<name>.json: summaries over seeds (bench/joslim_seeds.py)."""
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


def _row_order(slim: dict[str, Any]) -> tuple[bool, str, int, str]:
    """MACs before other costs; slim, two-stage, joslim, then joslim's other proposers."""
    methods = ("slim", "two-stage", "joslim")
    strategy = slim["strategy"]
    return (slim["metric"] != "macs", slim["metric"],
            methods.index(strategy) if strategy in methods else len(methods), strategy)


def _slimmable_table(models: dict[str, Any]) -> list[str]:
    """Per model and cost objective: each strategy's best level within each budget, its
    mean over 25-100% of the cost, and the uniform models trained per budget."""
    budgets = ("25%", "50%", "75%", "100%")
    lines = ["| model | cost | strategy | " + " | ".join(budgets) + " | mean accuracy over the costs |",
             "|---|---|---|" + "---:|" * (len(budgets) + 1)]

    def cell(entry: dict[str, Any] | None) -> str:
        return "-" if entry is None else f"{100 * entry['test_accuracy']:.2f}"

    for model, result in models.items():
        for slim in sorted(result.get("slimmable", {}).values(), key=_row_order):
            cells = [cell(slim["at_budget"].get(b)) for b in budgets]
            compared = result["comparison"][slim["metric"]]
            mean = compared["area"][slim["strategy"]]
            lines.append(f"| {model} | {slim['metric']} | {slim['strategy']} | "
                         + " | ".join(cells) + f" | {100 * mean:.2f} from "
                         f"{100 * compared['area_from']:.0f}% |")
        for metric, per_budget in result.get("uniform", {}).items():
            cells = [cell(per_budget.get(b)) for b in budgets]
            lines.append(f"| {model} | {metric} | uniform, trained per budget | "
                         + " | ".join(cells) + " | - |")
    return lines


def _mean_cell(row: dict[str, Any], signed: bool = False) -> str:
    """mean ± std; a paired difference (`signed`) also shows each seed's value."""
    text = f"{row['mean']:+.2f}" if signed else f"{row['mean']:.2f}"
    text += f" ± {row['std']:.2f}"
    return text + (f" ({', '.join(f'{v:+.2f}' for v in row['per_seed'])})" if signed else "")


def _seeds_tables(summary: dict[str, Any]) -> list[str]:
    """Mean accuracy over the costs per method (TEST, and the VAL the levels were chosen
    on), joslim's paired difference to each, and joslim against the uniform model per
    budget, all over the summary's seeds."""
    n = len(summary["seeds"])
    area = ["| model | cost | method | mean TEST accuracy over the costs | joslim - method, paired "
            "| the same on VAL |", "|---|---|---|---:|---:|---:|"]
    budget = ["| model | cost | budget | joslim | uniform, trained per budget | "
              "joslim - uniform, paired |", "|---|---|---|---:|---:|---:|"]
    for model, objectives in summary["models"].items():
        for metric, result in objectives.items():
            for method, row in result["area"].items():
                paired = result["paired"].get(f"joslim - {method}")
                val = result.get("val_area", {}).get(method)
                area.append(f"| {model} | {metric} | {method} | {_mean_cell(row)} | "
                            f"{'-' if paired is None else _mean_cell(paired, signed=True)} | "
                            f"{'-' if val is None else _mean_cell(val)} |")
            for b, row in result["at_budget"].items():
                if "joslim" not in row or "uniform" not in row:
                    continue
                budget.append(f"| {model} | {metric} | {b} | {_mean_cell(row['joslim'])} | "
                              f"{_mean_cell(row['uniform'])} | "
                              f"{_mean_cell(row['joslim - uniform'], signed=True)} |")
    header = (f"Over {n} seeds ({', '.join(map(str, summary['seeds']))}; mean ± standard "
              "deviation in points; paired = the difference taken seed by seed, each seed's in "
              "brackets):")
    return [header, "", *area, "", *budget]


def render() -> str:
    search = json.loads((RESULTS / "search.json").read_text())
    joslim = [json.loads((RESULTS / f"joslim-accuracy-{name}.json").read_text())
              for name in JOSLIM_RUNS]
    seeds = [json.loads((RESULTS / f"joslim-seeds-{name}.json").read_text())
             for name in SEED_SUMMARIES]
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
        "Slimmable files (one training run each; TEST accuracy of the level, chosen on val, "
        "within each budget of the cost, and uniform models trained per budget with the same "
        "recipe; bench/README.md says what each recipe is):",
        *(line for run in joslim for line in ("", f"`{run['command']}`", "",
                                               *_slimmable_table(run["models"]))),
        *(line for summary in seeds for line in (
            "", "One recipe over seeds, one results file per seed:", "",
            *(f"- `{c}`" for c in summary["commands"]),
            "", f"and summarized by `{summary['command']}`.", "", *_seeds_tables(summary))),
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
