"""Width search benchmark: searched widths against the uniform multiplier at the same MACs.

    python bench/bench_search.py --work runs/bench-search --out bench/results/search.json

Fashion-MNIST, zoo ResNet-20. Stages (each writes the results JSON and its markdown twin as
soon as it finishes, so a run cut off early still has numbers; running the command again
resumes: finished supernets, searches and retraining sub-runs are reused):

1. supernets: one per strategy (cafenet; sandwich = leftmost channels, the sandwich rule
   with per-layer random widths; bcnet if asked), same model, data, optimizer and space;
2. evolution search at each MACs budget (VAL split, `Evaluator`), per supernet;
3. retraining from scratch (`finish(..., "retrain")`) of every evolution winner and of the
   uniform multiplier `space.uniform(r)` with the most MACs within the same budget, one
   short recipe for all, seed by seed (seed 0 of everything first);
4. ranking fidelity (`widthsearch.fidelity`) of every supernet on the same widths near a
   budget, the stand-alone runs trained once and shared;
5. NSGA-II and greedy winners with one seed; then the remaining seeds (a run cut off
   late still has every method).

TEST accuracy is read once per retrained model, by the finishing sub-run, at its end;
search and fidelity use VAL only. The report: per budget and method, the mean and spread
(sample standard deviation) of test accuracy, the paired difference against uniform (same
seed), the target (+0.5 / +0.4 / +0.3 points at 25 / 50 / 75%) and by how much it is
met or missed; Kendall tau / Spearman per supernet; the wall time of each stage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from widthsearch.build import load_supernet
from widthsearch.config import TrainConfig, load_config
from widthsearch.fidelity import fidelity
from widthsearch.finish import FINISH_FILE, finish
from widthsearch.search.api import search_widths
from widthsearch.train.trainer import Trainer

TARGETS = {10: 0.5, 25: 0.5, 50: 0.4, 75: 0.3}
"""Budget (% MACs) -> test accuracy points over uniform to beat (the issues' targets)."""
STRATEGIES = {  # name -> (pattern, strategy options)
    "cafenet": ("cafenet", {"K": 3, "max_width_step": True}),
    "sandwich": ("leftmost", {"n": 2, "distill": False, "uniform": False}),
    "bcnet": ("bcnet", {}),
}
QUIET_HOUR_UTC = 16
"""From this hour the shared machine is quieter: two intra-op threads instead of one."""


def threads_now(limit: int = 2) -> int:
    """One intra-op thread while the machine is busy, up to `limit` from QUIET_HOUR_UTC."""
    return min(limit, 2) if dt.datetime.now(dt.UTC).hour >= QUIET_HOUR_UTC else 1


class Bench:
    """The benchmark's state: arguments, work folder and the results record (JSON)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.console = Console(stderr=True)
        self.quiet = Console(file=open(self.work / "console.log", "a"), width=120)  # noqa: SIM115
        self.out: Path = args.out
        self.results: dict[str, Any] = {}
        if self.out.is_file() and not args.fresh:
            self.results = json.loads(self.out.read_text())
        self.results["settings"] = {k: (str(v) if isinstance(v, Path) else v)
                                    for k, v in vars(args).items()}
        self.results["machine"] = {"platform": platform.platform(), "torch": torch.__version__,
                                   "cpus": torch.get_num_threads()}
        self.results.setdefault("wall_seconds", {})
        self.results.setdefault("retrain", {})

    # -- bookkeeping ----------------------------------------------------------------------
    def threads(self) -> int:
        return threads_now(self.args.max_threads)

    def set_threads(self) -> int:
        n = self.threads()
        torch.set_num_threads(n)
        return n

    def log(self, text: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        self.console.print(f"[{stamp}] {text}")

    def timed(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run a stage; its wall time is kept from the first run that did the work (a
        resumed stage that only reads back finished work does not overwrite it)."""
        threads = self.set_threads()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        walls = self.results["wall_seconds"]
        if key not in walls or seconds > walls[key].get("seconds", 0.0):
            walls[key] = {"seconds": round(seconds, 1), "threads": threads}
        self.save()
        return out

    def save(self) -> None:
        self.results["summary"] = summarize(self.results, self.args)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, sort_keys=True))
        tmp.replace(self.out)
        self.out.with_suffix(".md").write_text(markdown(self.results, self.args))

    # -- configs --------------------------------------------------------------------------
    def run_config(self, strategy: str) -> dict[str, Any]:
        a = self.args
        pattern, options = STRATEGIES[strategy]
        train: dict[str, Any] = {"seed": 0, "device": "cpu", "threads": self.threads(),
                                 "eval_recal_batches": a.recal_batches,
                                 "checkpoint_every_steps": 50, "log_every_steps": 20}
        if a.sampler is not None:
            train["sampler"] = a.sampler
            if a.sampler == "budgets":
                train["budgets"] = [f"macs={b}%" for b in a.sampler_budgets]
        return {
            "model": {"name": "resnet20"},
            "data": {"name": "fashion-mnist", "root": a.data_root, "batch_size": a.batch_size,
                     "val_size": 5000, "val_subset": a.val_subset, "augment": True},
            "supernet": {"pattern": pattern, "bins": True, "min_ratio": 0.25},
            "strategy": {"name": strategy, "options": options},
            "optim": {"name": "sgd", "lr": 0.1, "epochs": a.supernet_epochs,
                      "warmup_epochs": 0.25},
            "train": train,
        }

    def evaluator_options(self) -> dict[str, Any]:
        a = self.args
        return {"recal_batches": a.recal_batches, "val_batches": a.val_batches,
                "max_choices": a.max_choices}

    def supernet_overrides(self) -> list[str]:
        return [f"data.subset={self.args.supernet_subset}"]

    def run_dir(self, strategy: str) -> Path:
        suffix = f"-{self.args.sampler}" if self.args.sampler else ""
        return self.work / f"{strategy}{suffix}"

    def recipe(self, seed: int) -> list[str]:
        a = self.args
        return [f"optim.epochs={a.retrain_epochs}", f"data.subset={a.retrain_subset}",
                f"train.seed={seed}", f"train.threads={self.threads()}",
                "train.checkpoint_every_steps=0"]

    # -- stages ---------------------------------------------------------------------------
    def train_supernet(self, strategy: str) -> None:
        run = self.run_dir(strategy)
        if (run / "supernet.safetensors").is_file():
            return
        self.log(f"training the {strategy} supernet in {run}")
        if (run / "config.yaml").is_file():
            trainer = Trainer.resume(run, overrides=[f"train.threads={self.threads()}"],
                                     console=self.quiet, progress=False)
        else:
            config = load_config(self.run_config(strategy), self.supernet_overrides())
            trainer = Trainer(config, run, console=self.quiet, progress=False)
        fit = trainer.fit()
        self.results.setdefault("supernets", {})[strategy] = {
            "run": str(run), "steps": fit.step, "val": fit.val,
            "train_loss": fit.train_loss}

    def search(self, strategy: str, method: str) -> list[dict[str, Any]]:
        a = self.args
        budgets = [f"macs={b}%" for b in a.budgets]
        options: dict[str, Any] = {}
        if method in ("evolution", "nsga2"):
            options = {"population": a.population, "generations": a.generations}
        if method == "evolution":
            options.update(top_k=max(2, a.population // 5), mutations=a.population // 2,
                           crossovers=a.population - a.population // 2)
        if method == "greedy":
            options = {"step": a.greedy_step}
        self.log(f"{method} search of the {strategy} supernet at {', '.join(budgets)}")
        result = search_widths(self.run_dir(strategy), budgets, method, seed=0,
                               out_dir=self.run_dir(strategy) / f"search-{method}",
                               evaluator_options=self.evaluator_options(), **options)
        chosen = []
        for c in result.chosen:
            ratio = c.record.costs["macs"] / result.full_costs["macs"]
            budget = next(b for b in a.budgets
                          if abs(c.target.limits["macs"] / result.full_costs["macs"]
                                 - b / 100) < 1e-6)
            chosen.append({"budget": budget, "config": c.record.config.to_dict(),
                           "choice": dict(c.record.choice), "macs_ratio": ratio,
                           "val_accuracy": c.record.accuracy})
        self.results.setdefault("search", {}).setdefault(strategy, {})[method] = {
            "evaluated": len(result.records), "chosen": chosen}
        return chosen

    def uniform_configs(self) -> list[dict[str, Any]]:
        """Per budget, the uniform multiplier with the most MACs within the budget."""
        loaded = load_supernet(self.run_dir(self.args.strategies[0]))
        space, net = loaded.net.space, loaded.net
        full = net.cost(space.max()).macs
        ratios = [i / 1000 for i in range(1, 1001)]
        configs = {}
        for r in ratios:
            cfg = space.uniform(r)
            configs.setdefault(cfg, (r, net.cost(cfg).macs / full))
        out = []
        for b in self.args.budgets:
            inside = [(m, r, c) for c, (r, m) in configs.items() if m <= b / 100 + 1e-12]
            macs, r, cfg = max(inside, key=lambda t: t[0])
            out.append({"budget": b, "config": cfg.to_dict(), "choice": {}, "ratio": r,
                        "macs_ratio": macs})
        self.results["uniform"] = out
        return out

    def retrain(self, label: str, entry: dict[str, Any], seed: int) -> dict[str, Any]:
        """Retrain one config from scratch with the shared recipe (a finishing sub-run of
        the first supernet's run: retraining from scratch uses only its model and data)."""
        key = f"{label}@{entry['budget']}/s{seed}"
        done = self.results["retrain"].get(key)
        parent = self.args.retrain_under or self.run_dir(self.args.strategies[0])
        sub = Path(parent) / "retrain" / f"{label}-{entry['budget']}-s{seed}"
        trained = _retrained_config(sub)
        if trained is not None and trained != entry["config"]:
            self.log(f"{key}: the search now chooses another config; retraining it")
            shutil.rmtree(sub)
        elif done is not None:
            return done
        folder = self.work / "widths"
        folder.mkdir(exist_ok=True)
        path = folder / f"{label}-{entry['budget']}.json"
        path.write_text(json.dumps({"config": entry["config"], "choice": entry["choice"]},
                                   sort_keys=True))
        self.log(f"retraining {key}")
        start = time.perf_counter()
        self.set_threads()
        result = finish(parent, "retrain", config_file=path,
                        name=f"{label}-{entry['budget']}-s{seed}", overrides=self.recipe(seed),
                        console=self.quiet, progress=False)
        row = {"method": label, "budget": entry["budget"], "seed": seed,
               "macs_ratio": entry["macs_ratio"], "search_val_accuracy":
               entry.get("val_accuracy"), "val_accuracy": result["val_accuracy"],
               "test_accuracy": result["test_accuracy"], "steps": result["steps"],
               "seconds": round(time.perf_counter() - start, 1)}
        self.results["retrain"][key] = row
        walls = self.results["wall_seconds"].setdefault(
            f"retrain:{label}", {"seconds": 0.0, "threads": self.threads(), "runs": 0})
        walls["seconds"] = round(walls["seconds"] + row["seconds"], 1)
        walls["runs"] += 1
        self.save()
        return row

    def fidelity(self) -> None:
        a = self.args
        shared = a.standalone_from or self.run_dir(a.strategies[0])
        out = self.results.setdefault("fidelity", {})
        for strategy in a.strategies:
            if strategy in out and out[strategy].get("samples") == a.fidelity_samples:
                continue
            self.log(f"fidelity of the {strategy} supernet: {a.fidelity_samples} widths at "
                     f"macs={a.fidelity_budget}%")
            self.set_threads()
            res = fidelity(self.run_dir(strategy), a.fidelity_samples,
                           budget=f"macs={a.fidelity_budget}%", epochs=a.fidelity_epochs,
                           overrides=[f"data.subset={a.fidelity_subset}",
                                      f"train.threads={self.threads()}",
                                      "train.checkpoint_every_steps=0"],
                           standalone_run=shared, console=self.quiet, progress=False,
                           evaluator_options=self.evaluator_options())
            r = res.record
            out[strategy] = {k: r[k] for k in ("kendall_tau", "kendall_p", "spearman",
                                               "spearman_p", "budget", "samples",
                                               "supernet_seconds", "standalone_seconds")}
            out[strategy]["pairs"] = [[s["supernet_accuracy"], s["standalone_val_accuracy"]]
                                      for s in r["samples_scored"]]
            out[strategy]["path"] = str(res.path)
            self.save()


def _retrained_config(sub_run: Path) -> dict[str, int] | None:
    """The config a finished retraining sub-run trained (None when there is none)."""
    path = sub_run / FINISH_FILE
    return json.loads(path.read_text())["config"] if path.is_file() else None


# ------------------------------------------------------------------------------ the report


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return list(results.get("retrain", {}).values())


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per budget and method: test accuracy mean / spread, paired difference vs uniform."""
    rows = _rows(results)
    out: dict[str, Any] = {}
    for b in args.budgets:
        uni = {r["seed"]: r["test_accuracy"] for r in rows
               if r["budget"] == b and r["method"] == "uniform"}
        per: dict[str, Any] = {}
        for method in dict.fromkeys(r["method"] for r in rows if r["budget"] == b):
            acc = {r["seed"]: r["test_accuracy"] for r in rows
                   if r["budget"] == b and r["method"] == method}
            vals = [100 * acc[s] for s in sorted(acc)]
            entry: dict[str, Any] = {
                "seeds": sorted(acc), "test_mean": statistics.fmean(vals),
                "test_std": statistics.stdev(vals) if len(vals) > 1 else None,
                "macs_ratio": next(r["macs_ratio"] for r in rows
                                   if r["budget"] == b and r["method"] == method)}
            paired = [100 * (acc[s] - uni[s]) for s in sorted(acc) if s in uni]
            if method != "uniform" and paired:
                diff = statistics.fmean(paired)
                target = TARGETS.get(b)
                entry.update(paired_diff=diff, paired_std=(statistics.stdev(paired)
                                                           if len(paired) > 1 else None),
                             paired_seeds=len(paired), target=target,
                             margin=None if target is None else diff - target,
                             met=None if target is None else diff >= target)
            per[method] = entry
        out[str(b)] = per
    walls = results.get("wall_seconds", {})
    methods = {}
    for label in dict.fromkeys(r["method"] for r in rows):
        strategy, _, method = label.rpartition("-")
        parts = ([f"retrain:{label}"] if label == "uniform" else
                 [f"supernet:{strategy}", f"search:{strategy}:{method}", f"retrain:{label}"])
        methods[label] = {"stages": parts, "seconds": round(sum(
            walls.get(k, {}).get("seconds", 0.0) for k in parts), 1),
            "retrain_runs": walls.get(f"retrain:{label}", {}).get("runs", 0)}
    return {"budgets": out, "method_wall_seconds": methods}


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["# Width search benchmark (scaled down; see settings)", ""]
    s = results["settings"]
    lines += [f"Supernets: {s['supernet_epochs']} epochs on {s['supernet_subset']} training "
              f"images; evolution population {s['population']} x {s['generations']} "
              f"generations; retraining {s['retrain_epochs']} epochs on {s['retrain_subset']} "
              f"images; val {s['val_subset']} images; test: the full 10,000-image test split.",
              "", "| budget | method | MACs | seeds | test acc (%) | std | paired diff vs "
              "uniform | target | met |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for b, per in results.get("summary", {}).get("budgets", {}).items():
        for method, e in per.items():
            lines.append(
                f"| {b}% | {method} | {100 * e['macs_ratio']:.1f}% | {len(e['seeds'])} | "
                f"{e['test_mean']:.2f} | {_f(e['test_std'])} | "
                f"{_f(e.get('paired_diff'), '+.2f')} | {_f(e.get('target'), '+.1f')} | "
                f"{'' if e.get('met') is None else ('yes' if e['met'] else 'no, by ' + format(-e['margin'], '.2f'))} |")
    fid = results.get("fidelity", {})
    if fid:
        lines += ["", "| supernet | widths | budget | Kendall tau | p | Spearman |",
                  "|---|---:|---|---:|---:|---:|"]
        for name, f in fid.items():
            lines.append(f"| {name} | {f['samples']} | {f['budget']} | {f['kendall_tau']:.3f} | "
                         f"{f['kendall_p']:.3g} | {f['spearman']:.3f} |")
    lines += ["", "| method | stages | wall s (retraining: all seeds and budgets) |",
              "|---|---|---:|"]
    for label, m in results.get("summary", {}).get("method_wall_seconds", {}).items():
        lines.append(f"| {label} | {' + '.join(m['stages'])} | {m['seconds']:.0f} |")
    lines += ["", "| stage | wall s | threads |", "|---|---:|---:|"]
    for k, v in results.get("wall_seconds", {}).items():
        lines.append(f"| {k} | {v['seconds']:.0f} | {v['threads']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/bench-search"))
    p.add_argument("--out", type=Path, default=Path("bench/results/search.json"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--strategies", nargs="+", default=["cafenet", "sandwich"],
                   choices=tuple(STRATEGIES))
    p.add_argument("--budgets", nargs="+", type=int, default=[25, 50, 75])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--extra-methods", nargs="*", default=["nsga2", "greedy"],
                   choices=("nsga2", "greedy", "random"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--supernet-epochs", type=int, default=2)
    p.add_argument("--supernet-subset", type=int, default=10000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--recal-batches", type=int, default=4)
    p.add_argument("--val-batches", type=int, default=None)
    p.add_argument("--max-choices", type=int, default=4,
                   help="cafenet: assignments scored per config (the best counts)")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--greedy-step", type=int, default=2)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--retrain-subset", type=int, default=10000)
    p.add_argument("--fidelity-samples", type=int, default=20)
    p.add_argument("--fidelity-budget", type=int, default=25)
    p.add_argument("--fidelity-epochs", type=int, default=1)
    p.add_argument("--fidelity-subset", type=int, default=5000)
    p.add_argument("--sampler", default=None,
                   help="train.sampler of the supernets (widths | cost-uniform | budgets)")
    p.add_argument("--sampler-budgets", nargs="+", type=int, default=[10, 25])
    p.add_argument("--skip-fidelity", action="store_true")
    p.add_argument("--standalone-from", type=Path, default=None,
                   help="train the fidelity stand-alone runs under this run (same model, data "
                        "and optimizer) to share them between benchmark runs")
    p.add_argument("--retrain-under", type=Path, default=None,
                   help="the run whose retrain/ folder holds the retraining sub-runs (default: "
                        "the first supernet's); benchmark runs sharing it reuse each other's "
                        "uniform-multiplier runs")
    p.add_argument("--max-threads", type=int, default=2,
                   help="intra-op threads from 16:00 UTC on (1 before)")
    p.add_argument("--fresh", action="store_true", help="start a new results file")
    args = p.parse_args(argv)
    if args.sampler is not None and "sampler" not in TrainConfig.model_fields:
        p.error("this version of widthsearch has no train.sampler option")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    names = {s: bench.run_dir(s).name for s in args.strategies}  # cafenet, cafenet-budgets
    for strategy, name in names.items():
        bench.timed(f"supernet:{name}", lambda s=strategy: bench.train_supernet(s))
    winners = {}
    for strategy, name in names.items():
        winners[name] = bench.timed(f"search:{name}:evolution",
                                    lambda s=strategy: bench.search(s, "evolution"))
    uniform = bench.uniform_configs()

    def retrain_all(seed: int, methods: dict[str, list[dict[str, Any]]]) -> None:
        for b in args.budgets:
            for label, entries in methods.items():
                for e in entries:
                    if e["budget"] == b:
                        bench.retrain(label, e, seed)

    methods = {"uniform": uniform, **{f"{n}-evolution": w for n, w in winners.items()}}
    retrain_all(args.seeds[0], methods)
    if not args.skip_fidelity:
        bench.timed("fidelity", bench.fidelity)
    for method in args.extra_methods:  # one seed each, before the remaining seeds
        extra = {}
        for strategy, name in names.items():
            extra[f"{name}-{method}"] = bench.timed(
                f"search:{name}:{method}", lambda s=strategy, m=method: bench.search(s, m))
        retrain_all(args.seeds[0], extra)
    for seed in args.seeds[1:]:
        retrain_all(seed, methods)
    bench.log(f"done: {args.out}")


if __name__ == "__main__":
    main()
