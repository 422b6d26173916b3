"""bench_joslim_accuracy.py's results over seeds: mean, spread and paired differences.

    python bench/joslim_seeds.py bench/results/joslim-accuracy-resnet20-short.json \
        bench/results/joslim-accuracy-resnet20-short-seed1.json \
        bench/results/joslim-accuracy-resnet20-short-seed2.json \
        --out bench/results/joslim-accuracy-resnet20-short-seeds.json

One seed moves TEST accuracy by up to a point on these short recipes, so a single run can
neither show nor refute a gain. The files must be one recipe (every setting equal but the
seed, the proposers and the thread count); only what every file holds is summarized. Per model
and cost objective:

- `area`: each method's mean TEST accuracy over the cost range (bench_joslim_accuracy's
  `mean_accuracy`), per seed, with mean, standard deviation (n - 1) and range;
- `paired`: joslim (the BO proposer) minus each other method, seed by seed, the same way;
- `at_budget`: per budget, each method's TEST accuracy and the uniform model trained there,
  and joslim minus uniform paired by seed (the 0.5-point target).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

RECIPE_FREE = {"seed", "proposers", "threads", "models", "objectives"}
"""Settings that may differ between the files of one recipe: what is being varied, how many
runs each file holds, and the thread count (it moves timings, not the recipe)."""
REFERENCE = "joslim"


def spread(values: list[float]) -> dict[str, Any]:
    """Values in points, their mean, sample standard deviation and range."""
    points = [round(100 * v, 2) for v in values]
    return {"per_seed": points, "mean": round(statistics.fmean(points), 2),
            "std": round(statistics.stdev(points), 2) if len(points) > 1 else None,
            "min": min(points), "max": max(points)}


def recipe(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results["settings"].items() if k not in RECIPE_FREE}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of several results files of one recipe (one per seed)."""
    if len(runs) < 2:
        raise ValueError("give at least two results files, one per seed")
    seeds = [run["settings"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two results files share a seed: {seeds}")
    for run in runs[1:]:
        if recipe(run) != recipe(runs[0]):
            raise ValueError(f"the files are not one recipe: {recipe(runs[0])} vs {recipe(run)}")
    models: dict[str, Any] = {}
    shared_models = set.intersection(*(set(run["models"]) for run in runs))
    for model in sorted(shared_models):
        per_seed = [run["models"][model] for run in runs]
        metrics = set.intersection(*(set(r.get("comparison", {})) for r in per_seed))
        models[model] = {metric: _objective(per_seed, metric) for metric in sorted(metrics)}
    return {"seeds": seeds, "recipe": recipe(runs[0]),
            "commands": [run["command"] for run in runs], "models": models}


def _objective(per_seed: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    areas = [r["comparison"][metric]["area"] for r in per_seed]
    shared = [m for m in areas[0] if all(m in a for a in areas)]
    methods = sorted(shared, key=lambda m: m != REFERENCE)  # joslim first, then as run
    out: dict[str, Any] = {
        "area_from": [r["comparison"][metric]["area_from"] for r in per_seed],
        "area": {m: spread([a[m] for a in areas]) for m in methods},
        "paired": {f"{REFERENCE} - {m}": spread([a[REFERENCE] - a[m] for a in areas])
                   for m in methods if m != REFERENCE and REFERENCE in methods},
    }
    levels = [{s["strategy"]: s["at_budget"] for s in r["slimmable"].values()
               if s["metric"] == metric} for r in per_seed]
    uniform = [r.get("uniform", {}).get(metric, {}) for r in per_seed]
    budgets: dict[str, Any] = {}
    for budget in levels[0].get(REFERENCE, {}):
        row: dict[str, Any] = {}
        for method in methods:
            cells = [lv.get(method, {}).get(budget) for lv in levels]
            if all(cells):
                row[method] = spread([c["test_accuracy"] for c in cells])
        refs = [u.get(budget) for u in uniform]
        if all(refs):
            row["uniform"] = spread([c["test_accuracy"] for c in refs])
            if REFERENCE in row:
                row[f"{REFERENCE} - uniform"] = spread(
                    [lv[REFERENCE][budget]["test_accuracy"] - ref["test_accuracy"]
                     for lv, ref in zip(levels, refs)])
        budgets[budget] = row
    out["at_budget"] = budgets
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="one results file per seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        summary = summarize([json.loads(path.read_text()) for path in args.results])
    except (OSError, ValueError, KeyError) as err:
        parser.error(str(err))
    summary["command"] = " ".join(["python bench/joslim_seeds.py", *map(str, args.results),
                                   "--out", str(args.out)])
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
