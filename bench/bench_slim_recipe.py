"""Why slimmable levels trail separately trained models on short runs: the slim recipe varied.

    python bench/bench_slim_recipe.py --out bench/results/slim-recipe.json

The zoo ResNet-20 on 5,000 Fashion-MNIST images for 2 epochs (the short recipe of
bench_joslim_accuracy.py), `strategy.name=slim`, seed 0, one thread. Each variant changes one
thing against the recipe (peak lr 0.1, in-place distillation on): the peak learning rate
(the widths' gradients are summed, so the step is about M + 2 = 4 times a single network's)
or distillation off. Per variant: `widthsearch slimmable --metric macs`, then each level's
VAL accuracy (1,000 images) and MACs; the best val accuracy within 25 / 50 / 75 / 100% of
the full MACs. The test split is not read: this is recipe tuning.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from bench_joslim_accuracy import BUDGETS, pct

import widthsearch as ws
from widthsearch.cli import main as cli
from widthsearch.safeio import atomic_write_text

RECIPE = ("model.name=resnet20", "data.subset=5000", "data.val_size=1000", "optim.epochs=2",
          "train.threads=1", "train.seed=0", "train.eval_max_batches=2",
          "train.checkpoint_every_steps=0", "strategy.name=slim", "supernet.pattern=leftmost",
          "strategy.options.tau=4")
VARIANTS: dict[str, tuple[str, ...]] = {
    "recipe (lr 0.1, distill)": ("optim.lr=0.1",),
    "no distillation": ("optim.lr=0.1", "strategy.options.distill=false"),
    "lr 0.025": ("optim.lr=0.025",),
    "lr 0.05": ("optim.lr=0.05",),
    "lr 0.2": ("optim.lr=0.2",),
}


def run_variant(work: Path, name: str, options: tuple[str, ...]) -> dict[str, Any]:
    run = work / name.split(" (")[0].replace(" ", "-")
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    if cli(["train", "--run-dir", str(run), "--no-progress", "--set", *RECIPE, *options]) != 0:
        raise SystemExit(f"training {name} failed")
    path = run / "slimmable.safetensors"
    if cli(["slimmable", str(run), "--metric", "macs", "--recal-batches", "10",
            "--out", str(path)]) != 0:
        raise SystemExit(f"slimmable {name} failed")
    slim = ws.load_slimmable(path)
    full = slim.meta["full_costs"]["macs"]
    levels = [{"macs_ratio": lv.costs["macs"] / full, "val_accuracy": lv.val["accuracy"]}
              for lv in slim.levels]
    at_budget = {}
    for b in BUDGETS:
        fits = [lv["val_accuracy"] for lv in levels if lv["macs_ratio"] <= b + 1e-9]
        at_budget[pct(b)] = max(fits) if fits else None
    return {"options": list(options), "levels": levels, "val_at_budget": at_budget,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/slim-recipe.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-slim-recipe"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "command": f"python bench/bench_slim_recipe.py --out {args.out}",
        "recipe": list(RECIPE), "machine": {"python": platform.python_version(),
                                             "torch": torch.__version__}, "variants": {}}
    for name, options in VARIANTS.items():
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        results["variants"][name] = run_variant(args.work, name, options)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    for name, row in results["variants"].items():
        cells = " ".join("-" if v is None else f"{100 * v:.1f}"
                         for v in row["val_at_budget"].values())
        print(f"{name:28s} {cells}")


if __name__ == "__main__":
    main()
