"""Ranking fidelity: does the supernet rank widths the way stand-alone training does?

Weight-sharing search is only as good as the order the supernet puts subnets in. This
module measures that order against the truth for N widths drawn near a budget
(`WidthSpace.sample_at`, within `low`-`high` of the budget, as the searchers draw them):

- the supernet's score of each width: `Evaluator` val accuracy, per the run's pattern
  (leftmost: its one assignment; CafeNet: the best free assignment; BCNet: the mean);
- the stand-alone score: the same width exported with a fresh initialization and trained
  from scratch by the finishing machinery (`finish(..., "retrain", test=False)`), short,
  then its VAL accuracy (the sub-run's own last validation); the TEST split stays unread.

Kendall tau and Spearman rho between the two, a scatter plot and a JSON record go to
RUN_DIR/fidelity/<tag>/. Every stand-alone run is a finishing sub-run
(RUN_DIR/retrain/fidelity-<tag>-<recipe digest>-<i>), so running the command again reuses
the finished ones and resumes an interrupted one; the sampled widths are stored first, so a
resume trains the same ones, and a changed recipe trains new runs.
The stand-alone runs may be trained under another run (`standalone_run`) with the same
model, data and optimizer: two supernets of one model then share one set of ground truths.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from .errors import WidthSearchError, require
from .runs import RunDir, atomic_write_text

__all__ = ["FIDELITY_FILE", "FidelityResult", "fidelity", "rank_correlation"]

FIDELITY_FILE = "fidelity.json"
PLOT_FILE = "fidelity.png"
SAMPLES_FILE = "samples.json"
SHARED_SECTIONS = ("model", "data", "optim")
"""Config sections two runs must share for one's stand-alone runs to stand for the other's."""


@dataclass(frozen=True)
class FidelityResult:
    """What fidelity.json holds, plus where it was written."""

    record: dict[str, Any]
    path: Path

    @property
    def kendall_tau(self) -> float:
        return float(self.record["kendall_tau"])

    @property
    def spearman(self) -> float:
        return float(self.record["spearman"])


def rank_correlation(supernet: Sequence[float], standalone: Sequence[float]) -> dict[str, float]:
    """Kendall tau-b and Spearman rho (with p-values) of two paired score lists; NaN when
    one side is constant (no order to agree with)."""
    require("scipy", "search", "ranking fidelity")
    from scipy.stats import kendalltau, spearmanr

    if len(supernet) != len(standalone):
        raise WidthSearchError(f"paired scores needed: {len(supernet)} supernet scores, "
                               f"{len(standalone)} stand-alone scores")
    if len(supernet) < 2:
        raise WidthSearchError("rank correlation needs at least 2 widths")
    if len(set(supernet)) < 2 or len(set(standalone)) < 2:
        nan = float("nan")
        return {"kendall_tau": nan, "kendall_p": nan, "spearman": nan, "spearman_p": nan}
    tau = kendalltau(supernet, standalone)
    rho = spearmanr(supernet, standalone)
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue)}


def budget_tag(budget: str) -> str:
    """A folder name for a budget: "macs=25%" -> "macs-25pct"."""
    text = budget.strip().lower().replace("%", "pct").replace("=", "-")
    return re.sub(r"[^a-z0-9.\-]+", "_", text)


def subrun_name(tag: str, recipe: Sequence[str], index: int) -> str:
    """The stand-alone sub-run of width `index`: the recipe's digest is in the name, so a
    run trained with another recipe is never reused for this one."""
    digest = hashlib.sha1(json.dumps(list(recipe)).encode()).hexdigest()[:8]
    return f"fidelity-{tag}-{digest}-{index:03d}"


def _draw_widths(space: Any, cost_model: Any, budget: str, samples: int, low: float,
                 high: float, seed: int) -> tuple[list[dict[str, int]], dict[str, Any]]:
    """`samples` distinct widths within [low, high] of the budget, deterministic for seed."""
    from .search.budgets import resolve_budgets

    targets = resolve_budgets([budget], space, cost_model)
    if len(targets) != 1 or len(targets[0].limits) != 1:
        raise WidthSearchError(f"fidelity takes one budget of one metric, got {budget!r}")
    target = targets[0]
    metric, limit = next(iter(target.limits.items()))
    generator = torch.Generator().manual_seed(seed)
    drawn = space.sample_at(cost_model, limit, generator=generator, metric=metric, low=low,
                            high=high, n=4 * samples)
    unique = list(dict.fromkeys(drawn))[:samples]
    if len(unique) < samples:
        raise WidthSearchError(
            f"the window {low:g}-{high:g} of {budget} holds only {len(unique)} distinct "
            f"widths in {4 * samples} draws; ask for fewer --samples or widen the window")
    info = {"budget": budget, "metric": metric, "limit": limit, "full": target.full[metric],
            "low": low, "high": high, "seed": seed}
    return [c.to_dict() for c in unique], info


def _check_shared(run: RunDir, other: RunDir) -> None:
    from .config import load_config

    a, b = load_config(run.read_config()).to_dict(), load_config(other.read_config()).to_dict()
    differ = [s for s in SHARED_SECTIONS if a[s] != b[s]]
    if differ:
        raise WidthSearchError(
            f"stand-alone runs of {other.path} cannot stand for {run.path}: their "
            f"{', '.join(differ)} settings differ")


def _load_or_draw(folder: Path, draw: Any, expect: Mapping[str, Any]) -> list[dict[str, int]]:
    """The stored widths of an earlier call with the same settings, or freshly drawn ones."""
    path = folder / SAMPLES_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("settings") != dict(expect):
            raise WidthSearchError(
                f"{path} was drawn with other settings ({stored.get('settings')}); give "
                "another --name or delete that folder")
        return [dict(c) for c in stored["configs"]]
    configs, info = draw()
    atomic_write_text(path, json.dumps({"settings": dict(expect), "info": info,
                                        "configs": configs}, indent=1, sort_keys=True))
    return configs


def fidelity(run_dir: str | Path, samples: int, *, budget: str = "macs=25%", low: float = 0.8,
             high: float = 1.0, seed: int = 0, epochs: int | None = None,
             overrides: Sequence[str] = (), standalone_run: str | Path | None = None,
             name: str | None = None, evaluator_options: Mapping[str, Any] | None = None,
             console: Console | None = None, progress: bool | None = None) -> FidelityResult:
    """Rank agreement between the supernet of `run_dir` and stand-alone training for
    `samples` widths near `budget` (see the module docstring). `epochs` and `overrides`
    ("data.subset=5000") shape the short stand-alone recipe; `name` picks the output folder
    (default: the budget's tag)."""
    from .build import load_supernet
    from .evaluate import Evaluator
    from .finish import finish

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise WidthSearchError(f"--samples must be an integer >= 2, got {samples}")
    if not 0.0 < low <= high <= 1.0:
        raise WidthSearchError(f"the window needs 0 < low <= high <= 1, got {low}-{high}")
    console = console or Console(stderr=True)
    loaded = load_supernet(run_dir)
    run = loaded.run
    trainer_run = RunDir.open(standalone_run) if standalone_run is not None else run
    if trainer_run.path.resolve() != run.path.resolve():
        _check_shared(run, trainer_run)
    tag = name or budget_tag(budget)
    folder = run.path / "fidelity" / tag
    folder.mkdir(parents=True, exist_ok=True)
    recipe = ([f"optim.epochs={epochs}"] if epochs is not None else []) + list(overrides)
    settings = {"budget": budget, "samples": samples, "low": low, "high": high, "seed": seed}
    net = loaded.net
    configs = _load_or_draw(folder, lambda: _draw_widths(net.space, net.cost_model, budget,
                                                         samples, low, high, seed), settings)
    widths = [net.space.validate(c) for c in configs]

    started = time.perf_counter()
    evaluator = Evaluator(net, loaded.data.recal, loaded.data.val, seed=seed,
                          progress=bool(progress), **dict(evaluator_options or {}))
    scores = evaluator.evaluate(widths)
    supernet_seconds = time.perf_counter() - started

    started = time.perf_counter()
    rows = []
    for i, (config, score) in enumerate(zip(configs, scores, strict=True)):
        path = folder / "widths" / f"{i:03d}.json"
        if not path.is_file():
            atomic_write_text(path, json.dumps(config, indent=1, sort_keys=True))
        sub = subrun_name(tag, recipe, i)
        console.print(f"fidelity {tag}: stand-alone run {i + 1}/{len(configs)} ({sub})")
        result = finish(trainer_run.path, "retrain", config_file=path, name=sub,
                        overrides=recipe, console=console, progress=progress, test=False)
        if not result:  # stopped before its end (an interrupt): resume later
            raise WidthSearchError(f"stand-alone run {sub} did not finish; run the same "
                                   "command again to resume it")
        rows.append({"config": config, "macs": float(net.cost(widths[i]).macs),
                     "supernet_accuracy": score.accuracy, "supernet_loss": score.loss,
                     "choice": score.choice, "standalone_val_accuracy": result["val_accuracy"],
                     "subrun": str(Path("retrain") / sub)})
    standalone_seconds = time.perf_counter() - started

    corr = rank_correlation([r["supernet_accuracy"] for r in rows],
                            [r["standalone_val_accuracy"] for r in rows])
    record = {"run": str(run.path), "pattern": loaded.config.supernet.pattern,
              "strategy": loaded.config.strategy.name, **settings,
              "standalone_run": str(trainer_run.path), "recipe": recipe, **corr,
              "supernet_seconds": supernet_seconds, "standalone_seconds": standalone_seconds,
              "samples_scored": rows}
    out = folder / FIDELITY_FILE
    atomic_write_text(out, json.dumps(record, indent=1, sort_keys=True))
    plot(record, folder / PLOT_FILE)
    return FidelityResult(record, out)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def plot(record: Mapping[str, Any], path: Path) -> Path:
    """Supernet val accuracy against stand-alone val accuracy, one point per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["samples_scored"]
    x = [100 * r["supernet_accuracy"] for r in rows]
    y = [100 * r["standalone_val_accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(x, y, s=18)
    tau, rho = record["kendall_tau"], record["spearman"]
    ax.set_title(f"{record['pattern']} @ {record['budget']}: Kendall tau {_fmt(tau)}, "
                 f"Spearman {_fmt(rho)}", fontsize=9)
    ax.set_xlabel("supernet val accuracy (%)")
    ax.set_ylabel("stand-alone val accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(result: FidelityResult) -> str:
    """One line for the terminal."""
    r = result.record
    return (f"{r['pattern']} supernet, {len(r['samples_scored'])} widths at {r['budget']} "
            f"({r['low']:g}-{r['high']:g}): Kendall tau {r['kendall_tau']:.3f} "
            f"(p={r['kendall_p']:.3g}), Spearman {r['spearman']:.3f}; wrote {result.path}")
