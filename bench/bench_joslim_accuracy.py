"""A small accuracy comparison of joslim, slim and two-stage (one short run each).

    python bench/bench_joslim_accuracy.py --out bench/results/joslim-accuracy.json

Zoo ResNet-20 on a Fashion-MNIST subset, the same epochs, seed and data for all three.
Each run goes through `widthsearch train --set strategy.name=...` and `widthsearch
slimmable RUN_DIR`; TEST accuracy is then read off each slimmable file at 25 / 50 / 75 /
100% of the full MACs (the most accurate level within the budget; the test split is read
here, once per level, after every choice was made on val), and the area under the
test-accuracy-vs-MACs step curve over [25%, 100%] (mean accuracy over that range).

This is a short-run smoke version of the issue's benchmark, sized for a shared CPU: tau and
prior_points are scaled down so the Bayesian proposals start within the run. Its numbers
say whether the pipeline works end to end, not how the methods compare after full training.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

import widthsearch as ws
from widthsearch.build import load_supernet
from widthsearch.cli import main as cli
from widthsearch.search.pareto import area_under_curve
from widthsearch.train.bn import evaluate

BUDGETS = (0.25, 0.5, 0.75, 1.0)


def run_one(name: str, args: argparse.Namespace) -> dict:
    run = args.work / name
    shutil.rmtree(run, ignore_errors=True)
    options = [f"strategy.name={name}", f"strategy.options.tau={args.tau}"]
    if name == "joslim":
        options.append(f"strategy.options.prior_points={args.prior_points}")
    sets = ["model.name=resnet20", f"data.subset={args.subset}", f"data.val_size={args.val}",
            f"optim.epochs={args.epochs}", "train.threads=1", f"train.seed={args.seed}",
            "supernet.pattern=leftmost", "train.eval_max_batches=2", *options]
    start = time.perf_counter()
    code = cli(["train", "--run-dir", str(run), "--no-progress", "--set", *sets])
    if code != 0:
        raise SystemExit(f"training {name} failed ({code})")
    train_s = time.perf_counter() - start
    code = cli(["slimmable", str(run), "--recal-batches", "10"])
    if code != 0:
        raise SystemExit(f"slimmable {name} failed ({code})")
    slim = ws.load_slimmable(run / "slimmable.safetensors")
    loaded = load_supernet(run)
    full = slim.meta["full_costs"]["macs"]
    tests = []
    for i, lv in enumerate(slim.levels):  # the test split, once per level, choices made on val
        slim.set_level(i)
        m = evaluate(slim.net, lv.config, None, loaded.data.test)
        tests.append(m["accuracy"])
    at_budget = {}
    for b in BUDGETS:
        fits = [i for i, lv in enumerate(slim.levels) if lv.costs["macs"] <= b * full]
        if fits:
            best = max(fits, key=lambda i: slim.levels[i].val["accuracy"])
            at_budget[f"{int(b * 100)}%"] = {"level": best, "test_accuracy": tests[best],
                                             "macs_ratio": slim.levels[best].costs["macs"] / full}
        else:
            at_budget[f"{int(b * 100)}%"] = None
    ratios = [lv.costs["macs"] / full for lv in slim.levels]
    area = area_under_curve(ratios, tests, 0.25, 1.0) / 0.75
    return {"strategy": name, "train_seconds": train_s, "levels": [
        {"macs_ratio": r, "val_accuracy": lv.val["accuracy"], "test_accuracy": t}
        for r, lv, t in zip(ratios, slim.levels, tests, strict=True)],
        "at_budget": at_budget, "test_area_25_100": area}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/joslim-accuracy.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/widthsearch-joslim-bench"))
    parser.add_argument("--subset", type=int, default=6000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tau", type=int, default=2)
    parser.add_argument("--prior-points", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=["joslim", "slim", "two-stage"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [run_one(name, args) for name in args.strategies]
    record = {"command": "python bench/bench_joslim_accuracy.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k in ("subset", "val", "epochs", "tau", "prior_points", "seed")),
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "model": "resnet20", "data": "fashion-mnist", "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for r in results:
        budgets = {k: None if v is None else round(100 * v["test_accuracy"], 2)
                   for k, v in r["at_budget"].items()}
        print(r["strategy"], "area", round(100 * r["test_area_25_100"], 2), budgets,
              f"{r['train_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
