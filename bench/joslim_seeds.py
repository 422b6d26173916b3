"""bench_joslim_accuracy.py's results over seeds: mean, spread and paired differences.

    python bench/joslim_seeds.py bench/results/joslim-accuracy-resnet20-short.json \
        bench/results/joslim-accuracy-resnet20-short-seed1.json \
        bench/results/joslim-accuracy-resnet20-short-seed2.json \
        --out bench/results/joslim-seeds-resnet20-short.json

One seed moves TEST accuracy by up to a point on these short recipes, so a single run can
neither show nor refute a gain. The files must be one recipe: every setting equal except
those in `RECIPE_FREE`, and one cost range per objective. Only what every file holds is
summarized; the rest is listed under `dropped`. Per model and cost objective:

- `area`: each method's mean TEST accuracy over the cost range (bench_joslim_accuracy's
  `mean_accuracy`), per seed, with mean, sample standard deviation and range;
- `val_area`: the same on VAL (the levels' own scores): what recipes are chosen by, since
  the test split is read only to report;
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

from bench_joslim_accuracy import mean_accuracy

RECIPE_FREE = {"seed", "proposers", "threads", "models", "objectives"}
"""Settings that may differ between the files of one recipe: the seed, which runs a file
holds (only the shared ones are summarized), and the thread count (it moves timings)."""
REFERENCE = "joslim"


def spread(values: list[float]) -> dict[str, Any]:
    """Accuracies (fractions) in points: each, their mean, sample standard deviation, range."""
    points = [100 * v for v in values]
    return {"per_seed": [round(p, 2) for p in points],
            "mean": round(statistics.fmean(points), 2),
            "std": round(statistics.stdev(points), 2),
            "min": round(min(points), 2), "max": round(max(points), 2)}


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
    dropped: list[str] = []
    models: dict[str, Any] = {}
    for model in _shared([list(run["models"]) for run in runs], "model", dropped):
        per_seed = [run["models"][model] for run in runs]
        metrics = _shared([list(r.get("comparison", {})) for r in per_seed],
                          f"{model}: objective", dropped)
        models[model] = {metric: _objective(per_seed, metric, f"{model}, {metric}", dropped)
                         for metric in metrics}
    return {"seeds": seeds, "recipe": recipe(runs[0]),
            "commands": [run["command"] for run in runs], "models": models, "dropped": dropped}


def _shared(names: list[list[str]], what: str, dropped: list[str]) -> list[str]:
    """Names every seed has, in the first seed's order (joslim first); the others are noted."""
    everywhere = set.intersection(*map(set, names))
    for name in sorted(set().union(*names) - everywhere):
        dropped.append(f"{what} {name}: not in every seed's file")
    return sorted((n for n in names[0] if n in everywhere), key=lambda n: n != REFERENCE)


def _objective(per_seed: list[dict[str, Any]], metric: str, where: str,
               dropped: list[str]) -> dict[str, Any]:
    compared = [r["comparison"][metric] for r in per_seed]
    area_from = {c["area_from"] for c in compared}
    if len(area_from) > 1:
        raise ValueError(f"{where}: the seeds average over different cost ranges {area_from}")
    areas = [c["area"] for c in compared]
    methods = _shared([list(a) for a in areas], f"{where}: method", dropped)
    out: dict[str, Any] = {
        "area_from": area_from.pop(),
        "area": {m: spread([a[m] for a in areas]) for m in methods},
        "paired": {f"{REFERENCE} - {m}": spread([a[REFERENCE] - a[m] for a in areas])
                   for m in methods if m != REFERENCE and REFERENCE in methods},
    }
    files = [{s["strategy"]: s for s in r["slimmable"].values() if s["metric"] == metric}
             for r in per_seed]  # per seed, each strategy's slimmable file for this cost
    out["val_area"] = {m: spread([mean_accuracy(f[m]["levels"], "val")[1] for f in files])
                       for m in methods}
    levels = [{m: f["at_budget"] for m, f in by_strategy.items()} for by_strategy in files]
    uniform = [r.get("uniform", {}).get(metric, {}) for r in per_seed]
    budgets = dict.fromkeys([*(b for lv in levels for at in lv.values() for b in at),
                             *(b for u in uniform for b in u)])
    out["at_budget"] = {}
    for budget in budgets:
        row: dict[str, Any] = {}
        for method, cells in [*((m, [lv.get(m, {}).get(budget) for lv in levels])
                                for m in methods), ("uniform", [u.get(budget) for u in uniform])]:
            if all(cells):
                row[method] = spread([c["test_accuracy"] for c in cells])
            elif any(cells):
                dropped.append(f"{where}, {budget}: {method} has no level in some seeds")
        if REFERENCE in row and "uniform" in row:
            row[f"{REFERENCE} - uniform"] = spread(
                [lv[REFERENCE][budget]["test_accuracy"] - u[budget]["test_accuracy"]
                 for lv, u in zip(levels, uniform, strict=True)])
        out["at_budget"][budget] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="one results file per seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = []
    for path in args.results:
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            parser.error(f"{path}: {err}")
    try:
        summary = summarize(runs)
    except ValueError as err:
        parser.error(str(err))
    except KeyError as err:
        parser.error(f"a results file lacks {err}: is it bench_joslim_accuracy.py's output?")
    summary["command"] = " ".join(["python bench/joslim_seeds.py", *map(str, args.results),
                                   "--out", str(args.out)])
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
