"""Where a supernet was trained: the cost of every width a run trained, per epoch.

A supernet that never trains near a budget cannot rank widths there. `TrainedCosts` keeps a
histogram of the cost ratio (cost / full cost) of every width trained, written to
metrics.jsonl once per epoch (`kind: trained_costs`); `untrained_budgets` says which budgets
a search asks for where training never went, and `plot_trained_costs` draws the
histograms with the budgets marked (`widthsearch inspect RUN_DIR`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WidthSearchError

HISTOGRAM_BINS = 200  # over [0, 1] of the full cost: a 10% budget's window spans 4 bins


class TrainedCosts:
    """A histogram, per epoch, of the cost ratio (cost / full cost) of every width trained.

    Kept in the checkpoint (`state_dict`), so a resumed run's histograms equal an
    uninterrupted run's.
    """

    def __init__(self, cost_model: Any, metric: str = "macs", bins: int = HISTOGRAM_BINS
                 ) -> None:
        from ..search.budgets import metric_costs

        self.cost_model, self.metric, self.bins = cost_model, metric, bins
        full = cost_model.space.to_vector(cost_model.space.max())[None, :]
        self.full = float(metric_costs(cost_model, full, metric)[0])
        self.counts = np.zeros(bins, dtype=np.int64)

    def add(self, configs: Sequence[Mapping[str, int]]) -> None:
        if not configs:
            return
        space = self.cost_model.space
        widths = np.stack([space.to_vector(c) for c in configs])
        ratios = self.cost_model.evaluate(widths, self.metric) / self.full
        index = np.clip((ratios * self.bins).astype(np.int64), 0, self.bins - 1)
        np.add.at(self.counts, index, 1)

    def flush(self) -> dict[str, Any]:
        """The epoch's record (for metrics.jsonl), and a fresh histogram for the next one."""
        record = {"metric": self.metric, "bins": self.bins, "full": self.full,
                  "counts": self.counts.tolist()}
        self.counts = np.zeros(self.bins, dtype=np.int64)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "counts": self.counts.tolist()}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if state is None:  # a checkpoint from before costs were recorded: start counting
            return
        counts = list(state.get("counts", []))
        if state.get("metric") != self.metric or len(counts) != self.bins:
            raise WidthSearchError("the checkpoint's trained-cost histogram does not fit this run")
        self.counts = np.asarray(counts, dtype=np.int64)


def share_in_window(records: Sequence[Mapping[str, Any]], metric: str, low: float,
                    high: float) -> float | None:
    """The share of trained widths whose cost ratio lies in [low, high], over all epochs'
    records of `metric` (None when the run recorded none)."""
    counts = [np.asarray(r["counts"], dtype=np.float64) for r in records
              if r.get("metric") == metric]
    if not counts:
        return None
    total = np.sum(counts, axis=0)
    if total.sum() == 0:
        return None
    bins = len(total)
    edges = np.arange(bins) / bins  # bin i holds ratios in [i/bins, (i+1)/bins)
    inside = (edges + 1.0 / bins > low) & (edges <= high)
    return float(total[inside].sum() / total.sum())


def untrained_budgets(records: Sequence[Mapping[str, Any]], targets: Sequence[Any],
                      low: float = 0.8, high: float = 1.0, threshold: float = 0.01
                      ) -> list[str]:
    """One line per budget whose window [low, high] x budget holds less than `threshold` of
    the widths the run trained (budgets of a metric the run did not record are skipped)."""
    lines = []
    for target in targets:
        for metric, limit in target.limits.items():
            full = target.full[metric]
            share = share_in_window(records, metric, low * limit / full, high * limit / full)
            if share is not None and share < threshold:
                spec = target.specs[metric]
                lines.append(
                    f"{spec}: only {100 * share:.2f}% of the widths trained lie within "
                    f"{low:g}-{high:g} of it, so the supernet cannot rank widths there; "
                    f"train with --set train.sampler=budgets 'train.budgets=[{spec}]'")
    return lines


def plot_trained_costs(records: Sequence[Mapping[str, Any]], path: str | Path,
                       budgets: Sequence[tuple[str, float]] = ()) -> Path | None:
    """Histograms of the trained cost ratio, one line per epoch, budgets as vertical lines.

    `budgets`: (label, ratio of the full cost). Returns the PNG written (None: no records).
    """
    records = [r for r in records if r.get("counts")]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(records)))
    for r, color in zip(records, colors, strict=True):
        counts = np.asarray(r["counts"], dtype=np.float64)
        share = counts / max(counts.sum(), 1.0)
        centers = (np.arange(len(counts)) + 0.5) / len(counts)
        ax.plot(centers, share, color=color, lw=1.2, label=f"epoch {r.get('epoch', '?')}")
    for label, ratio in budgets:
        ax.axvline(ratio, color="crimson", ls="--", lw=1)
        ax.text(ratio, ax.get_ylim()[1] * 0.95, f" {label}", color="crimson", va="top",
                fontsize=8)
    metric = records[0].get("metric", "cost")
    ax.set_xlabel(f"{metric} of the widths trained / full model")
    ax.set_ylabel("share of the widths trained")
    ax.set_xlim(0, 1.02)
    ax.set_title("Where the supernet was trained")
    if len(records) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
