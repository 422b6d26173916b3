"""`widthsearch quickstart`: the whole flow on Fashion-MNIST in a few minutes on a CPU.

1. train a CafeNet supernet (zoo ResNet-20) with the Trainer;
2. search it at 50% and 25% of the full model's MACs (`ws.search_widths`, VAL split);
3. fine-tune the two winners from the supernet's weights (`finish(..., "finetune")`);
4. train the uniform multiplier (`space.uniform(r)`, every layer scaled alike) at the same
   MACs from scratch (`finish(..., "retrain")`) for as many steps as the searched model got
   in total (supernet training plus fine-tuning);
5. each finished model is measured once on the TEST split by `finish`; latency is timed
   here on the exported models (torch, this CPU, batch 1, one thread);
6. one table, quickstart.json, report.md / report.html and the plots.

Every step resumes: running the command again continues an interrupted run and reuses
finished steps (a finished model's test accuracy is read back, never measured twice).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import WidthSearchError
from .report import QUICKSTART_FILE
from .search.latency import cpu_model

__all__ = ["BUDGETS", "SIZES", "QuickstartSize", "quickstart_config", "run_quickstart",
           "uniform_at"]

BUDGETS = ("macs=50%", "macs=25%")
QUICKSTART_DIR = Path("runs/quickstart")


@dataclass(frozen=True)
class QuickstartSize:
    """How big each step is: data, epochs, search effort, timing repeats."""

    subset: int | None
    val_size: int
    val_subset: int
    batch_size: int
    epochs: int
    finetune_epochs: int
    width_mult: float
    population: int
    generations: int
    mutations: int
    crossovers: int
    top_k: int
    recal_batches: int
    val_batches: int | None
    max_choices: int
    latency_runs: int
    description: str


SIZES: dict[str, QuickstartSize] = {
    # Sized for under 10 minutes on 2 idle CPU cores: 10,000 training images, 2 supernet epochs.
    "default": QuickstartSize(
        subset=10_000, val_size=5_000, val_subset=2_000, batch_size=128, epochs=2,
        finetune_epochs=1, width_mult=1.0, population=12, generations=3, mutations=6,
        crossovers=6, top_k=6, recal_batches=4, val_batches=8, max_choices=2,
        latency_runs=30,
        description="ResNet-20, 10,000 Fashion-MNIST images, 2 supernet epochs"),
    # Seconds: a smoke test of every step (the numbers mean nothing at this size).
    "tiny": QuickstartSize(
        subset=96, val_size=64, val_subset=64, batch_size=32, epochs=1,
        finetune_epochs=1, width_mult=0.5, population=3, generations=2, mutations=1,
        crossovers=1, top_k=2, recal_batches=1, val_batches=1, max_choices=1,
        latency_runs=3,
        description="ResNet-20 at half width, 96 images, 1 epoch (a smoke test)"),
}


def quickstart_config(size: QuickstartSize, root: Path | None = None) -> dict[str, Any]:
    """The supernet's run config: CafeNet on ResNet-20 with FLOPs-sensitive bins."""
    model: dict[str, Any] = {"name": "resnet20"}
    if size.width_mult != 1.0:
        model["kwargs"] = {"width_mult": size.width_mult}
    return {
        "model": model,
        "data": {"name": "fashion-mnist", "root": None if root is None else str(root),
                 "subset": size.subset, "val_size": size.val_size,
                 "val_subset": size.val_subset, "batch_size": size.batch_size},
        "supernet": {"pattern": "cafenet", "bins": True},
        "strategy": {"name": "cafenet"},
        "optim": {"epochs": size.epochs, "lr": 0.1, "warmup_epochs": 0.3},
        "train": {"checkpoint_every_steps": 25, "eval_recal_batches": size.recal_batches,
                  "eval_max_batches": size.val_batches, "device": "cpu"},
    }


# ------------------------------------------------------------------------------ pieces


def uniform_at(space: Any, cost: Any, limit: float, near: float,
               ratios: int = 401) -> tuple[float, Any]:
    """The uniform-multiplier config (one ratio r for every group, `space.uniform(r)`)
    whose MACs are nearest `near` without exceeding `limit`; returns (r, config)."""
    best: tuple[float, float, Any] | None = None
    seen = set()
    low = min(g.choices[0] / g.size for g in space.searchable) if space.searchable else 1.0
    for r in np.linspace(low, 1.0, ratios):
        config = space.uniform(float(r))
        if config in seen:
            continue
        seen.add(config)
        macs = float(cost(config).macs)
        if macs <= limit * (1 + 1e-12):
            gap = abs(macs - near)
            if best is None or gap < best[0]:
                best = (gap, float(r), config)
    if best is None:
        raise WidthSearchError(f"no uniform multiplier fits {limit:,.0f} MACs")
    return best[1], best[2]


def measure_latency(model: torch.nn.Module, example: torch.Tensor, runs: int) -> float:
    """Median seconds of one forward at batch 1 on one CPU thread (after a warm-up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = model.eval()
        times = []
        with torch.inference_mode():
            for _ in range(3):
                model(example)
            for _ in range(max(1, runs)):
                start = time.perf_counter()
                model(example)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


# ------------------------------------------------------------------------------ the flow


def run_quickstart(run_dir: Path = QUICKSTART_DIR, *, size: str = "default",
                   data: Path | None = None, progress: bool | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) every step into `run_dir`; returns the quickstart.json record."""
    from . import load as load_export
    from .build import load_supernet
    from .data import example_input
    from .finish import finish
    from .report import write_report
    from .runs import atomic_write_text
    from .search import search_widths
    from .train.trainer import Trainer

    if size not in SIZES:
        raise WidthSearchError(f"unknown quickstart size {size!r}; known: {', '.join(SIZES)}")
    spec = SIZES[size]
    out = console or Console(stderr=True)
    show = out.is_terminal if progress is None else progress
    run_dir = Path(run_dir)
    started = time.perf_counter()
    data_override = [f"data.root={data}"] if data is not None else []

    out.rule(f"[1/5] CafeNet supernet: {spec.description}")
    if (run_dir / "config.yaml").exists():
        trainer = Trainer.resume(run_dir, overrides=data_override, console=out, progress=show)
        if not trainer.finished:
            out.print(f"resuming {run_dir} at step {trainer.step}/{trainer.total_steps}")
    else:
        trainer = Trainer(quickstart_config(spec, data), run_dir, console=out, progress=show)
    fit = trainer.fit()
    supernet_steps = fit.total_steps
    del trainer

    out.rule(f"[2/5] width search at {' and '.join(BUDGETS)} (evolution, VAL split)")
    result = search_widths(
        run_dir, list(BUDGETS), "evolution", seed=0, progress=show,
        population=spec.population, generations=spec.generations, mutations=spec.mutations,
        crossovers=spec.crossovers, top_k=spec.top_k,
        evaluator_options={"recal_batches": spec.recal_batches,
                           "val_batches": spec.val_batches, "max_choices": spec.max_choices})
    if len(result.chosen) != len(BUDGETS):
        raise WidthSearchError("the search found no config within one of the budgets; run "
                               "`widthsearch search` on the run to see the reachable range")
    loaded = load_supernet(run_dir)
    net = loaded.net
    full = net.cost(net.space.max())
    steps_per_epoch = supernet_steps // spec.epochs
    finetune_steps = steps_per_epoch * spec.finetune_epochs

    rows: list[dict[str, Any]] = []
    for k, chosen in enumerate(result.chosen):
        budget = chosen.target.label()
        limit = float(chosen.target.limits["macs"])
        out.rule(f"[3/5] {budget}: fine-tune the searched widths ({spec.finetune_epochs} "
                 f"epoch(s))")
        tuned = finish(run_dir, "finetune", pick=k, name=f"searched-{k}",
                       overrides=[f"optim.epochs={spec.finetune_epochs}", *data_override],
                       console=out, progress=show)
        ratio, uniform = uniform_at(net.space, net.cost, limit, float(chosen.record.costs["macs"]))
        uniform_file = run_dir / "uniform" / f"uniform-{k}.json"
        atomic_write_text(uniform_file, json.dumps(
            {"config": uniform.to_dict(), "choice": {}, "ratio": ratio, "budget": budget},
            indent=1, sort_keys=True))
        out.rule(f"[4/5] {budget}: uniform multiplier x{ratio:.3f} from scratch "
                 f"({spec.epochs + spec.finetune_epochs} epochs, the same steps)")
        scratch = finish(run_dir, "retrain", config_file=uniform_file, name=f"uniform-{k}",
                         overrides=[f"optim.epochs={spec.epochs + spec.finetune_epochs}",
                                    *data_override],
                         console=out, progress=show)
        if not tuned or not scratch:
            raise WidthSearchError("a finishing run stopped before its end; run the "
                                   "quickstart again to resume it")
        rows.append(_row("searched", budget, tuned, run_dir / "finetune" / f"searched-{k}",
                         full.macs, f"{supernet_steps} + {finetune_steps} ft",
                         chosen.record.accuracy))
        rows.append(_row(f"uniform x{ratio:.2f}", budget, scratch,
                         run_dir / "retrain" / f"uniform-{k}", full.macs,
                         f"{scratch['steps']}", None))

    out.rule("[5/5] latency of the exported models on this CPU")
    example = example_input(loaded.data)
    with Progress(TextColumn("latency"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=out, disable=not show, transient=True) as bar:
        task = bar.add_task("latency", total=len(rows))
        for row in rows:
            model = load_export(Path(row["exports"]["weights"]).with_suffix(""))
            row["latency_ms"] = 1e3 * measure_latency(model, example, spec.latency_runs)
            bar.advance(task)
    for searched, uniform in zip(rows[::2], rows[1::2], strict=True):
        searched["vs_uniform"] = searched["test_accuracy"] - uniform["test_accuracy"]

    record = {
        "size": size, "size_options": asdict(spec), "budgets": list(BUDGETS),
        "full_model": {"macs": float(full.macs), "params": float(full.params)},
        "latency_device": f"{cpu_model()}, torch {torch.__version__}, 1 thread, batch 1, "
                          f"median of {spec.latency_runs}",
        "seeds": {"train.seed": loaded.config.train.seed,
                  "data.split_seed": loaded.config.data.split_seed, "search.seed": 0},
        "splits": "search and fine-tuning selection: VAL; test_accuracy: TEST, once per model",
        "rows": rows,
    }
    atomic_write_text(run_dir / QUICKSTART_FILE, json.dumps(record, indent=1))
    paths = write_report(run_dir, title="widthsearch quickstart: ResNet-20 on Fashion-MNIST")
    record["seconds"] = time.perf_counter() - started
    record["report"] = {"html": str(paths["html"]), "markdown": str(paths["markdown"])}
    return record


def _row(name: str, budget: str, result: Mapping[str, Any], sub_run: Path, full_macs: float,
         steps: str, search_val: float | None) -> dict[str, Any]:
    exports = {k: str(sub_run / v) for k, v in result["exports"].items()}
    return {"name": name, "budget": budget, "macs": result["macs"],
            "macs_ratio": result["macs"] / full_macs if full_macs else None,
            "params": result["params"], "test_accuracy": result["test_accuracy"],
            "val_accuracy": result.get("val_accuracy"), "search_val_accuracy": search_val,
            "training": steps, "sub_run": str(sub_run), "exports": exports}


def results_table(record: Mapping[str, Any]) -> Table:
    """The comparison table printed at the end (every number measured in this run)."""
    table = Table(title="searched widths vs the uniform multiplier (test accuracy: TEST "
                        "split, measured once per model)")
    for col in ("budget", "model", "MACs", "MACs %", "params", "ms", "test acc", "vs uniform",
                "steps"):
        table.add_column(col, justify="left" if col in ("budget", "model") else "right",
                         no_wrap=True)
    for r in record["rows"]:
        gain = r.get("vs_uniform")
        table.add_row(r["budget"], r["name"], f"{r['macs'] / 1e6:.2f}M",
                      f"{100 * r['macs_ratio']:.1f}%", f"{r['params'] / 1e3:.1f}k",
                      f"{r['latency_ms']:.2f}", f"{100 * r['test_accuracy']:.2f}%",
                      "" if gain is None else f"{100 * gain:+.2f} pts", r["training"])
    return table


def print_summary(record: Mapping[str, Any], console: Console,
                  files: Sequence[str] = ("html", "markdown")) -> None:
    """The table, then where everything is."""
    console.print(results_table(record))
    console.print("ms: latency of the exported model, " + record["latency_device"])
    console.print("steps: training steps (supernet + fine-tuning for the searched widths, "
                  "from scratch for the uniform multiplier)")
    for r in record["rows"]:
        e = r["exports"]
        console.print(f"{r['budget']} {r['name']}: {e['weights']} (+ .json), {e['onnx']}")
    console.print("report: " + ", ".join(record["report"][f] for f in files))
    if "seconds" in record:
        console.print(f"done in {record['seconds'] / 60:.1f} min")
