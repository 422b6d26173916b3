"""Joslim vs slim vs two-stage: the slimmable files against uniform models trained per budget.

    python bench/bench_joslim_accuracy.py --models resnet20 --subset 12000 --epochs 3 \
        --out bench/results/joslim-accuracy-resnet20.json

Fashion-MNIST, zoo ResNet-20 and zoo MobileNetV2, the same data, epochs and seed for every
run. Per model:

1. one training run per strategy (`widthsearch train --set strategy.name=...`): slim,
   two-stage, and joslim once per cost objective (MACs; peak memory), since Joslim's
   proposals aim at that cost; slim and two-stage train without a cost and serve both;
   `--proposers bo nsga2 random` adds a joslim run per other proposer
   (`strategy.options.proposer`), the same training with the BO swapped out;
2. `widthsearch slimmable RUN_DIR --metric COST` per run and objective: the levels are
   peeled, recalibrated and kept on VAL;
3. the TEST split, once per level, after every choice was made on val: the accuracy of the
   most accurate level (by val) within 25 / 50 / 75 / 100% of the full cost, and the area
   under the test-accuracy-vs-cost step curve over [lo, 100%] divided by its width (the mean
   accuracy over that range; lo = 25%, or the smallest level's cost when that is higher);
4. the reference: per objective and budget, the uniform multiplier with the most cost
   within the budget (of multipliers with equal cost, the largest), retrained from scratch
   (`finish(..., "retrain")`) with the same epochs, data and seed; each joslim budget cell
   is compared with it (target: within 0.5 points).

Each stage writes the results file as soon as it ends; running the command again resumes
(finished stages are read back from the results file; a stage that reads a training run
whose weights are no longer under --work trains it again). Plots: one per objective, named
after the results file (`<out stem>-<cost>.png`).
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

import widthsearch as ws
from widthsearch.build import WEIGHTS_FILE, load_supernet
from widthsearch.cli import main as cli
from widthsearch.finish import finish
from widthsearch.safeio import atomic_write_text
from widthsearch.search.pareto import area_under_curve
from widthsearch.train.bn import evaluate

BUDGETS = (0.25, 0.5, 0.75, 1.0)
TOLERANCE = 0.5
"""Points of test accuracy a joslim level may trail the uniform model at the same budget."""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {}
        if args.out.is_file() and not args.fresh:
            self.results = json.loads(args.out.read_text())
        self.results.update(command=command(args), settings=settings(args), machine={
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": args.threads}, data="fashion-mnist")
        self.results.setdefault("models", {})

    def save(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.args.out, json.dumps(self.results, indent=1) + "\n")

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def recipe(self, model: str) -> list[str]:
        a = self.args
        return [f"model.name={model}", f"data.subset={a.subset}", f"data.val_size={a.val}",
                f"optim.epochs={a.epochs}", f"optim.lr={a.lr}", f"train.threads={a.threads}",
                f"train.seed={a.seed}", f"train.channels_last={str(a.channels_last).lower()}",
                "train.eval_max_batches=2", "train.checkpoint_every_steps=0"]

    def model_results(self, model: str) -> dict[str, Any]:
        """One model's results, created empty on a fresh results file."""
        return self.results["models"].setdefault(model, {})

    # -- stages ---------------------------------------------------------------------------
    def train(self, model: str, run_name: str) -> dict[str, Any]:
        """One strategy's training run (`run_names` says what each name trains)."""
        store = self.model_results(model).setdefault("runs", {})
        run = self.work(model) / run_name
        if run_name in store and (run / WEIGHTS_FILE).is_file():
            return store[run_name]
        a = self.args
        strategy, cost, proposer = parse_run(run_name)
        options = [f"strategy.name={strategy}", "supernet.pattern=leftmost",
                   f"strategy.options.tau={a.tau}"]  # one re-scoring schedule for all
        if a.no_distill:  # narrower widths from the labels, for every strategy alike
            options.append("strategy.options.distill=false")
        if strategy == "joslim":
            options += [f"strategy.options.prior_points={a.prior_points}",
                        f"strategy.options.cost={cost}",
                        f"strategy.options.proposer={proposer or 'bo'}"]
        shutil.rmtree(run, ignore_errors=True)
        self.log(f"{model}: training {run_name}")
        start = time.perf_counter()
        if cli(["train", "--run-dir", str(run), "--no-progress", "--set",
                *self.recipe(model), *options]) != 0:
            raise SystemExit(f"training {model}/{run_name} failed")
        store[run_name] = {"seconds": round(time.perf_counter() - start, 1)}
        self.save()
        return store[run_name]

    def slimmable(self, model: str, run_name: str, metric: str) -> dict[str, Any]:
        key = f"{run_name}@{metric}"
        store = self.model_results(model).setdefault("slimmable", {})
        if key in store:
            return store[key]
        self.train(model, run_name)
        run = self.work(model) / run_name
        path = run / f"slimmable-{metric}.safetensors"
        self.log(f"{model}: slimmable {key}")
        start = time.perf_counter()
        if cli(["slimmable", str(run), "--metric", metric, "--recal-batches",
                str(self.args.recal_batches), "--out", str(path)]) != 0:
            raise SystemExit(f"slimmable {model}/{key} failed")
        build_s = time.perf_counter() - start
        slim = ws.load_slimmable(path)
        data = load_supernet(run).data
        full = slim.meta["full_costs"][metric]
        levels = []
        for i, lv in enumerate(slim.levels):  # the test split, once per level
            slim.set_level(i)
            test = evaluate(slim.net, lv.config, None, data.test)["accuracy"]
            levels.append({"ratio": lv.costs[metric] / full, "macs_ratio":
                           lv.costs["macs"] / slim.meta["full_costs"]["macs"],
                           "val_accuracy": lv.val["accuracy"], "test_accuracy": test})
        at_budget: dict[str, Any] = {}
        for b in BUDGETS:
            fits = [lv for lv in levels if lv["ratio"] <= b + 1e-9]
            best = max(fits, key=lambda lv: lv["val_accuracy"]) if fits else None
            at_budget[pct(b)] = best
        store[key] = {"strategy": method_of(run_name), "metric": metric, "levels": levels,
                      "at_budget": at_budget, "build_seconds": round(build_s, 1)}
        self.save()
        return store[key]

    def uniform(self, model: str, metric: str, parent: str) -> dict[str, Any]:
        """Per budget, the uniform multiplier with the most `metric` within it, retrained;
        of multipliers with equal `metric` (peak memory moves in steps), the largest."""
        store = self.model_results(model).setdefault("uniform", {}).setdefault(metric, {})
        if all(pct(b) in store for b in BUDGETS):
            return store
        self.train(model, parent)  # its config and width space; the retrain starts afresh
        loaded = load_supernet(self.work(model) / parent)
        net, space = loaded.net, loaded.net.space
        full = getattr(net.cost(space.max()), metric)
        by_config: dict[Any, tuple[float, int]] = {}
        for i in range(1, 1001):
            cfg = space.uniform(i / 1000)
            by_config[cfg] = (getattr(net.cost(cfg), metric) / full, i)
        for b in BUDGETS:
            if pct(b) in store:
                continue
            inside = [(key, c) for c, key in by_config.items() if key[0] <= b + 1e-9]
            if not inside:
                store[pct(b)] = None
                self.save()
                continue
            (ratio, _), cfg = max(inside, key=lambda t: t[0])
            path = self.work(model) / f"uniform-{metric}-{pct(b)}.json"
            path.write_text(json.dumps({"config": cfg.to_dict(), "choice": {}}))
            self.log(f"{model}: retraining the uniform model at {metric}={pct(b)}")
            start = time.perf_counter()
            out = finish(self.work(model) / parent, "retrain", config_file=path,
                         name=f"uniform-{metric}-{b:.2f}", overrides=self.recipe(model)[1:],
                         progress=False)
            store[pct(b)] = {"ratio": ratio, "macs_ratio": net.cost(cfg).macs /
                             net.cost(space.max()).macs, "val_accuracy": out["val_accuracy"],
                             "test_accuracy": out["test_accuracy"],
                             "seconds": round(time.perf_counter() - start, 1)}
            self.save()
        return store

    def work(self, model: str) -> Path:
        """Scratch runs, one directory per results file: two recipes never share a run."""
        return self.args.work / self.args.out.stem / model


def mean_accuracy(levels: list[dict[str, Any]], split: str = "test") -> tuple[float, float]:
    """(lo, mean `split` accuracy of the step curve over [lo, 100%]), lo = max(25%, the
    cheapest level). Every strategy's cheapest level is the same smallest width (it is
    always a candidate and never dominated), so lo is shared at one cost; below it no level
    exists and counting zero there would only measure the smallest width's cost."""
    ratios = [lv["ratio"] for lv in levels]
    accuracies = [lv[f"{split}_accuracy"] for lv in levels]
    lo = max(0.25, min(ratios))
    return lo, area_under_curve(ratios, accuracies, lo, 1.0) / (1.0 - lo)


def run_names(metric: str, proposers: list[str]) -> list[str]:
    """The training runs read for one cost objective: slim, two-stage, `joslim-<cost>` (the
    BO proposer) and `joslim-<cost>-<proposer>` per other proposer."""
    return ["slim", "two-stage", f"joslim-{metric}",
            *(f"joslim-{metric}-{p}" for p in proposers if p != "bo")]


def parse_run(run_name: str) -> tuple[str, str | None, str | None]:
    """(strategy, joslim's cost, joslim's proposer other than BO) of a `run_names` name."""
    if not run_name.startswith("joslim-"):
        return run_name, None, None
    _, cost, *proposer = run_name.split("-")
    return "joslim", cost, proposer[0] if proposer else None


def method_of(run_name: str) -> str:
    """The name results are reported under: the strategy, and a non-BO proposer after it
    (`joslim-random`)."""
    strategy, _, proposer = parse_run(run_name)
    return f"{strategy}-{proposer}" if proposer else strategy


def pct(b: float) -> str:
    return f"{round(100 * b)}%"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("models", "objectives", "proposers", "subset", "val", "epochs", "tau",
            "prior_points", "seed", "recal_batches", "lr", "threads", "channels_last", "no_distill")
    return {k: getattr(args, k) for k in keys}


def command(args: argparse.Namespace) -> str:
    parts = []
    for k, v in settings(args).items():
        flag = f"--{k.replace('_', '-')}"
        if isinstance(v, bool):
            parts += [flag] if v else []
            continue
        v = " ".join(map(str, v)) if isinstance(v, list) else v
        parts.append(f"{flag} {v}")
    parts.append(f"--out {args.out}")
    return "python bench/bench_joslim_accuracy.py " + " ".join(parts)


def compare(model_results: dict[str, Any]) -> dict[str, Any]:
    """Per objective: each strategy's mean accuracy over [area_from, 100%] of the cost
    (`mean_accuracy`), and each joslim budget cell minus the uniform model there."""
    out: dict[str, Any] = {}
    uniform = model_results.get("uniform", {})
    for slim in model_results.get("slimmable", {}).values():
        metric = slim["metric"]
        row = out.setdefault(metric, {"area": {}, "joslim_vs_uniform": {}})
        row["area_from"], row["area"][slim["strategy"]] = mean_accuracy(slim["levels"])
        if slim["strategy"] != "joslim":
            continue
        for b, cell in slim["at_budget"].items():
            ref = uniform.get(metric, {}).get(b)
            if cell is None or ref is None:
                continue
            diff = 100 * (cell["test_accuracy"] - ref["test_accuracy"])
            row["joslim_vs_uniform"][b] = {"points": round(diff, 2),
                                           "met": diff >= -TOLERANCE}
    for row in out.values():
        area = row["area"]
        if {"joslim", "slim", "two-stage"} <= set(area):
            row["joslim_area_above_both"] = area["joslim"] > max(area["slim"], area["two-stage"])
    return out


def plot(model: str, metric: str, model_results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for slim in model_results["slimmable"].values():
        if slim["metric"] != metric:
            continue
        levels = sorted(slim["levels"], key=lambda lv: lv["ratio"])
        ax.step([100 * lv["ratio"] for lv in levels],
                [100 * lv["test_accuracy"] for lv in levels], where="post", marker="o",
                label=slim["strategy"])
    ref = [(100 * v["ratio"], 100 * v["test_accuracy"])
           for v in model_results.get("uniform", {}).get(metric, {}).values() if v]
    if ref:
        ax.plot(*zip(*sorted(ref), strict=True), "k--s", label="uniform, trained per budget")
    ax.set_xlabel(f"{metric} (% of the full model)")
    ax.set_ylabel("TEST accuracy (%)")
    ax.set_title(f"{model}, Fashion-MNIST: slimmable levels")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")  # off the curves
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path("bench/results/joslim-accuracy-resnet20.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-joslim"))
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--objectives", nargs="+", default=["macs", "memory"])
    parser.add_argument("--proposers", nargs="+", default=["bo"],
                        choices=["bo", "nsga2", "random"],
                        help="joslim's width proposers to train and compare (bo is always run; the "
                             "uniform proposer is slim's sampling, which slim already runs)")
    parser.add_argument("--subset", type=int, default=6000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tau", type=int, default=4)
    parser.add_argument("--prior-points", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recal-batches", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true",
                        help="train with NHWC weights (faster depthwise convolutions on CPU)")
    parser.add_argument("--no-distill", action="store_true",
                        help="train the narrower widths on the labels, not by in-place "
                             "distillation from the full width (every strategy)")
    parser.add_argument("--fresh", action="store_true", help="start a new results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    for model in args.models:
        for metric in args.objectives:  # each stage trains the runs it reads, when missing
            for run in run_names(metric, args.proposers):
                bench.slimmable(model, run, metric)
            bench.uniform(model, metric, parent="slim")
        results = bench.results["models"][model]
        results["comparison"] = compare(results)
        bench.save()
        for metric in args.objectives:
            plot(model, metric, results, args.out.parent / f"{args.out.stem}-{metric}.png")
        bench.log(f"{model}: {json.dumps(results['comparison'])}")
    bench.log(f"done: {args.out}")


if __name__ == "__main__":
    main()
