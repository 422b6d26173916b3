"""What a search leaves behind: search/front.json, search/chosen.json, search/front.png, and
the table printed in the terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from ..runs import atomic_write_bytes, atomic_write_text
from .base import Record, SearchResult
from .pareto import pareto_front

_LABELS = {"macs": "MACs", "params": "params", "memory": "peak memory",
           "memory_live": "live memory", "latency": "latency"}


def human(value: float, metric: str) -> str:
    """A cost in the units users read: 1.23M MACs, 812KB, 2.41ms."""
    if metric == "latency":
        return f"{value * 1e3:.3g}ms"
    suffix = "B" if metric.startswith("memory") else ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K" if suffix else "k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}{suffix}"
    return f"{value:.0f}{suffix}"


def write_outputs(result: SearchResult, out_dir: str | Path) -> dict[str, Path]:
    """front.json, chosen.json and front.png in `out_dir` (each written atomically)."""
    out = Path(out_dir)
    paths = {"front": out / "front.json", "chosen": out / "chosen.json",
             "plot": out / "front.png"}
    front = result.front_json()
    front["uniform"] = [r.to_json() for r in result.uniform]
    atomic_write_text(paths["front"], json.dumps(front, indent=1))
    atomic_write_text(paths["chosen"], json.dumps(result.chosen_json(), indent=1))
    atomic_write_bytes(paths["plot"], plot_front(result))
    return paths


def plot_front(result: SearchResult, metric: str | None = None) -> bytes:
    """PNG bytes: val accuracy against one cost (% of the full model) for every evaluated
    config, the Pareto front, the uniform-multiplier configs and the chosen points."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or result.objectives[0]
    full = result.full_costs[metric] or 1.0

    def xy(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([100.0 * r.costs[metric] / full for r in records]),
                np.array([100.0 * r.accuracy for r in records]))

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x, y = xy(result.records)
    ax.scatter(x, y, s=8, c="0.7", label=f"evaluated ({len(x)})", zorder=1)
    if len(x):
        mask = pareto_front(np.column_stack([-y, x]))
        order = np.argsort(x[mask])
        ax.step(x[mask][order], y[mask][order], where="post", color="C0", lw=1.5,
                label="Pareto front", zorder=2)
    if result.uniform:
        ux, uy = xy(result.uniform)
        order = np.argsort(ux)
        ax.plot(ux[order], uy[order], "s--", color="C1", ms=4, label="uniform multiplier",
                zorder=3)
    for i, c in enumerate(result.chosen):
        cx, cy = xy([c.record])
        ax.scatter(cx, cy, marker="*", s=180, color="C3", edgecolor="k", zorder=4,
                   label="chosen" if i == 0 else None)
        if metric in c.target.limits:
            ax.axvline(100.0 * c.target.limits[metric] / full, color="C3", ls=":", lw=1)
    ax.set_xlabel(f"{_LABELS.get(metric, metric)} (% of the full model)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{result.method}: val accuracy vs {_LABELS.get(metric, metric)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def result_table(result: SearchResult) -> Table:
    """One row per target: its budgets, the chosen config's costs and val accuracy, and the
    best uniform multiplier under the same budgets for comparison."""
    metrics = [m for m in result.full_costs]
    table = Table(title=f"widthsearch search ({result.method}): {len(result.records)} configs "
                        f"evaluated, {len(result.front)} on the front")
    table.add_column("budget")
    for m in metrics:
        table.add_column(_LABELS.get(m, m), justify="right")
    table.add_column("val acc", justify="right")
    table.add_column("uniform val acc", justify="right")
    for c in result.chosen:
        cells = [c.target.label()]
        for m in metrics:
            v = c.record.costs[m]
            full = result.full_costs[m]
            cells.append(f"{human(v, m)} ({100 * v / full:.1f}%)" if full else human(v, m))
        cells.append(f"{100 * c.record.accuracy:.2f}%")
        uni = [r for r in result.uniform
               if all(r.costs[m] <= lim * (1 + 1e-12) for m, lim in c.target.limits.items())]
        cells.append(f"{100 * max(r.accuracy for r in uni):.2f}%" if uni else "-")
        table.add_row(*cells)
    return table
