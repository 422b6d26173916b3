"""The run-time slimmable deliverable: one set of shared weights, K widths along the Pareto
front of val accuracy vs cost, switchable at run time.

Building it (`build_slimmable`, or `make_slimmable(run_dir)` after a joslim / slim /
two-stage run):
1. candidates: the widths of the training history (plus the smallest and the full width);
2. each is scored on a few VAL batches with the final weights (batch statistics), and
   Pareto fronts of (loss, cost) are peeled until the fronts taken reach the top of the
   cost range (at least `min_fronts` of them: one-batch losses are noisy);
3. every width kept is BN-recalibrated on unaugmented training batches and scored on VAL;
   the Pareto-efficient ones (val error, cost) become the levels, sorted by cost.

The file (`save_slimmable` / `load_slimmable`) is safetensors: the supernet's weights, and
per level the BN running statistics of its recalibration; the JSON metadata holds the model
spec, the width space, and every level's config, costs and val score. Nothing is pickled.
`SlimmableNet.set_level(i)` / `set_budget(macs=...)` activate a level's widths on the shared
weights (no weight is copied) and swap in that level's BN statistics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import WidthSearchError
from .space import WidthConfig
from .supernet import Supernet
from .train.bn import bn_state, evaluate, load_bn_state, recalibrate_bn, unwrap

__all__ = ["Level", "SlimmableNet", "build_slimmable", "load_slimmable", "make_slimmable",
           "peel", "save_slimmable"]

FORMAT = "widthsearch-slimmable/1"
BUDGET_KEYS = ("macs", "params", "memory", "latency")


@dataclass
class Level:
    """One width of the slimmable network: its config, exact costs and val score."""

    config: WidthConfig
    costs: dict[str, float]
    """"macs", "params", "memory" (and "latency" when measured), absolute."""
    val: dict[str, float] = field(default_factory=dict)
    """"accuracy" and "loss" on the val split after BN recalibration."""

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "costs": dict(self.costs), "val": dict(self.val)}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Level:
        return cls(WidthConfig(record["config"]), {k: float(v) for k, v in record["costs"].items()},
                   {k: float(v) for k, v in record["val"].items()})


# ------------------------------------------------------------------------------ the module


class SlimmableNet(nn.Module):
    """A supernet restricted to its levels; `set_level` / `set_budget` switch widths."""

    def __init__(self, net: Supernet, levels: Sequence[Level],
                 bn_stats: Sequence[Mapping[str, torch.Tensor]], meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not levels or len(levels) != len(bn_stats):
            raise WidthSearchError("a slimmable network needs levels, each with BN statistics")
        self.net = net
        self._levels = list(levels)
        self._bn = [dict(s) for s in bn_stats]
        self.meta = dict(meta or {})
        self.level = -1
        self.set_level(len(self._levels) - 1)

    @property
    def levels(self) -> list[Level]:
        return list(self._levels)

    def set_level(self, index: int) -> SlimmableNet:
        """Run at level `index` (0 = the cheapest; negative counts from the end)."""
        n = len(self._levels)
        if not -n <= index < n:
            raise WidthSearchError(f"level {index} does not exist; this network has {n} (0..{n - 1})")
        index %= n
        self.net.activate(self._levels[index].config)
        load_bn_state(self.net, self._bn[index])
        self.level = index
        return self

    def set_budget(self, *, macs: float | str | None = None, params: float | str | None = None,
                   memory: float | str | None = None, latency: float | str | None = None) -> int:
        """Switch to the most accurate level within every budget given (absolute numbers, or
        "50%" of the full width's cost); returns its index."""
        budgets = {"macs": macs, "params": params, "memory": memory, "latency": latency}
        limits = {k: self._limit(k, v) for k, v in budgets.items() if v is not None}
        fits = [i for i, lv in enumerate(self._levels)
                if all(lv.costs[k] <= limit for k, limit in limits.items())]
        if not fits:
            cheapest = ", ".join(f"{k} {self._levels[0].costs[k]:.4g}" for k in limits)
            raise WidthSearchError(f"no level fits the budget {limits}; the cheapest level "
                                   f"needs {cheapest}")
        best = max(fits, key=lambda i: (self._levels[i].val.get("accuracy", 0.0), -i))
        self.set_level(best)
        return best

    def _limit(self, key: str, value: float | str) -> float:
        if not all(key in lv.costs for lv in self._levels):
            raise WidthSearchError(f"the levels record no {key}; budgets available: "
                                   + ", ".join(k for k in BUDGET_KEYS if k in self._levels[0].costs))
        if isinstance(value, str):
            match = re.fullmatch(r"\s*([0-9.]+)\s*%\s*", value)
            if not match:
                raise WidthSearchError(f"budget {key}={value!r}: give a number or a percentage like '50%'")
            full = self.meta.get("full_costs", {}).get(key)
            if full is None:
                raise WidthSearchError(f"the full {key} is not recorded; give an absolute budget")
            return float(match.group(1)) / 100.0 * float(full)
        return float(value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def export(self, level: int | None = None) -> nn.Module:
        """The plain model of `level` (default: the active one), with its BN statistics."""
        previous = self.level
        self.set_level(self.level if level is None else level)
        try:
            return self.net.export(self._levels[self.level].config)
        finally:
            self.set_level(previous)

    def to_onnx(self, level: int, path: str | Path, example_input: torch.Tensor | None = None) -> Path:
        """ONNX of level `level` (ws.to_onnx of its exported plain model)."""
        from .export import to_onnx

        if example_input is None:
            shape = self.meta.get("input_shape")
            if shape is None:
                raise WidthSearchError("give an example input: this file records no input shape")
            example_input = torch.zeros(1, *shape)
        return to_onnx(self.export(level), example_input, path)


# ------------------------------------------------------------------------------ building


def peel(losses: np.ndarray, costs: np.ndarray, *, min_fronts: int = 2,
         tolerance: float = 0.02) -> np.ndarray:
    """Indices of the Pareto fronts of (loss, cost), peeled until the fronts taken reach
    the top of the cost range (within `tolerance` of the largest cost) and at least
    `min_fronts` are taken."""
    from .search.pareto import pareto_fronts

    losses, costs = np.asarray(losses, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    if len(losses) == 0:
        return np.zeros(0, dtype=np.int64)
    top = costs.max() - tolerance * costs.max()
    chosen: list[int] = []
    for k, front in enumerate(pareto_fronts(np.stack([losses, costs], axis=1))):
        chosen.extend(int(i) for i in front)
        if k + 1 >= min_fronts and costs[chosen].max() >= top:
            break
    return np.array(sorted(chosen), dtype=np.int64)


def build_slimmable(net: Supernet, candidates: Iterable[Mapping[str, int]], *,
                    val_loader: Iterable[Any], recal_loader: Iterable[Any],
                    metric: str = "macs", score_batches: int = 1, recal_batches: int = 20,
                    val_batches: int | None = None, min_fronts: int = 2,
                    meta: Mapping[str, Any] | None = None) -> SlimmableNet:
    """The slimmable network of `net` over `candidates` (see the module docstring)."""
    from .train.joslim import rescore

    net = unwrap(net)
    configs = list(dict.fromkeys(net.space.validate(c) for c in candidates))
    if not configs:
        raise WidthSearchError("no candidate widths to build a slimmable network from")
    device = next(net.parameters()).device
    batches = []
    for i, (x, y) in enumerate(val_loader):
        if i >= score_batches:
            break
        batches.append((x.to(device), y.to(device)))
    if not batches:
        raise WidthSearchError("the val split gave no batch to score the candidates on")
    losses = sum(rescore(net, configs, x, y) for x, y in batches) / len(batches)
    widths = np.stack([net.space.to_vector(c) for c in configs])
    costs = net.cost_model.evaluate(widths, metric).astype(np.float64)
    chosen = peel(losses.cpu().numpy(), costs, min_fronts=min_fronts)

    snapshot = bn_state(net)
    recal = []
    for i, batch in enumerate(recal_loader):
        if i >= recal_batches:
            break
        recal.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    scored: list[tuple[Level, dict[str, torch.Tensor]]] = []
    try:
        for i in chosen:
            cfg = configs[int(i)]
            recalibrate_bn(net, cfg, None, recal, len(recal))
            stats = bn_state(net)
            m = evaluate(net, cfg, None, val_loader, max_batches=val_batches, restore_bn=False)
            level = Level(cfg, _costs(net, cfg, metric),
                          {"accuracy": m["accuracy"], "loss": m["loss"]})
            scored.append((level, stats))
    finally:
        load_bn_state(net, snapshot)
    from .search.pareto import pareto_front

    points = np.array([[1.0 - lv.val["accuracy"], lv.costs[metric]] for lv, _ in scored])
    keep = [scored[i] for i in np.flatnonzero(pareto_front(points))]
    keep.sort(key=lambda item: (item[0].costs[metric], -item[0].val["accuracy"]))
    info = {"metric": metric, "candidates": len(configs), "peeled": len(chosen),
            "full_costs": _costs(net, net.space.max(), metric),
            **dict(meta or {})}
    return SlimmableNet(net, [lv for lv, _ in keep], [s for _, s in keep], info)


def _costs(net: Supernet, config: WidthConfig, metric: str) -> dict[str, float]:
    """MACs, params, memory and the run's own cost metric (e.g. latency) of one config."""
    c = net.cost(config)
    out = {"macs": float(c.macs), "params": float(c.params), "memory": float(c.memory)}
    if metric not in out:
        w = net.space.to_vector(config)[None, :]
        out[metric] = float(net.cost_model.evaluate(w, metric)[0])
    return out


def make_slimmable(run_dir: str | Path, *, score_batches: int = 1, recal_batches: int = 20,
                   val_batches: int | None = None, metric: str | None = None,
                   extra_candidates: int = 0, seed: int = 0) -> SlimmableNet:
    """The slimmable network of a trained run: its supernet and the width history its
    strategy kept (joslim, slim, two-stage), plus the smallest and the full width.

    A run of another strategy keeps no history; `extra_candidates` random per-group widths
    (drawn with `seed`) are then the candidates, as in a two-stage search."""
    from .build import load_supernet
    from .train.joslim import history_widths
    from .train.proposers import WidthEncoder, classifier_inputs

    loaded = load_supernet(run_dir)
    net, config = loaded.net, loaded.config
    checkpoint = loaded.run.latest_checkpoint()
    state = loaded.run.load_checkpoint() if checkpoint is not None else {}
    strategy = state.get("strategy", {})
    options = dict(config.strategy.options)
    metric = metric or options.get("cost", "macs")
    widths = history_widths(strategy, len(net.space))
    encoder = WidthEncoder(net.space, float(options.get("lo", 0.42)),
                           classifier_inputs(net) if options.get("keep_last_full", True) else [])
    candidates = [net.space.from_vector(w) for w in widths]
    candidates += [WidthConfig(net.space.from_vector(encoder.smallest())), net.space.max()]
    if extra_candidates or not len(widths):
        n = extra_candidates or 1000
        g = torch.Generator().manual_seed(seed)
        lo = encoder.lo
        m = lo + (1 - lo) * torch.rand((n, encoder.num_dims), generator=g, dtype=torch.float64)
        candidates += encoder.configs(encoder.widths(m.numpy()))
    data = loaded.data
    if data.recal is None:
        raise WidthSearchError("the run's data has no recalibration loader")
    x, _ = next(iter(data.val))
    meta = {"strategy": config.strategy.name, "step": loaded.step,
            "input_shape": list(x.shape[1:]), "model": getattr(net.model, "widthsearch_spec", {}),
            "supernet": config.supernet.model_dump() if hasattr(config.supernet, "model_dump")
            else {}, "run_dir": str(Path(run_dir).resolve())}
    return build_slimmable(net, candidates, val_loader=data.val, recal_loader=data.recal,
                           metric=metric, score_batches=score_batches,
                           recal_batches=recal_batches, val_batches=val_batches, meta=meta)


# ------------------------------------------------------------------------------ the file


def save_slimmable(slim: SlimmableNet, path: str | Path) -> Path:
    """One safetensors file: weights, per-level BN statistics, JSON metadata."""
    from safetensors.torch import save

    from .build import space_to_json
    from .runs import atomic_write_bytes

    path = Path(path)
    net = slim.net
    previous = slim.level
    slim.set_level(len(slim.levels) - 1)
    tensors = {f"weights/{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for i, stats in enumerate(slim._bn):
        for k, v in stats.items():
            tensors[f"bn/{i}/{k}"] = v.detach().cpu().contiguous()
    slim.set_level(previous)
    record = {"format": FORMAT, "levels": [lv.to_json() for lv in slim.levels],
              "space": space_to_json(net), **slim.meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={"widthsearch": json.dumps(record)}))
    return path


def load_slimmable(path: str | Path, model: nn.Module | None = None) -> SlimmableNet:
    """A SlimmableNet from `save_slimmable`'s file. The supernet is rebuilt from the model
    spec in the file (a registry model) or from the full-size `model` you pass."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from . import models
    from .build import space_from_json
    from .patterns import LocallyFree

    path = Path(path)
    if not path.is_file():
        raise WidthSearchError(f"{path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            record = json.loads((f.metadata() or {}).get("widthsearch", "{}"))
        tensors = load_file(str(path))
    except Exception as e:  # a damaged file can fail in many ways
        raise WidthSearchError(f"{path} is not a readable slimmable file: {e}") from e
    if record.get("format") != FORMAT:
        raise WidthSearchError(f"{path} is not a widthsearch slimmable file")
    if model is None:
        spec = record.get("model") or {}
        if not spec.get("name"):
            raise WidthSearchError(f"{path} names no registered model; pass the full-size model")
        model = models.get(spec["name"], **spec.get("kwargs", {}))
    space = record["space"]
    pattern = LocallyFree(space["r"]) if space["pattern"] == "cafenet" else space["pattern"]
    s = record.get("supernet", {})
    net = Supernet(model, torch.zeros(1, *record["input_shape"]), pattern=pattern,
                   min_ratio=float(s.get("min_ratio", 0.25)), divisions=int(s.get("divisions", 16)))
    net.set_space(space_from_json(net.space, space))
    weights = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise WidthSearchError(f"{path} does not fit the rebuilt supernet: {e}") from None
    levels = [Level.from_json(r) for r in record["levels"]]
    stats: list[dict[str, torch.Tensor]] = [{} for _ in levels]
    for k, v in tensors.items():
        if k.startswith("bn/"):
            _, i, name = k.split("/", 2)
            stats[int(i)][name] = v
    meta = {k: v for k, v in record.items() if k not in ("format", "levels", "space")}
    return SlimmableNet(net.eval(), levels, stats, meta)


# ------------------------------------------------------------------------------ command line


def add_arguments(p: Any) -> None:
    """Options of `widthsearch slimmable RUN_DIR`."""
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained run directory")
    p.add_argument("--out", type=Path, help="the slimmable file (default: RUN_DIR/slimmable.safetensors)")
    p.add_argument("--metric", help="the cost the levels trade against: macs, params, memory "
                   "or another cost of the cost model (default: the run's cost option, or macs)")
    p.add_argument("--score-batches", type=int, default=1,
                   help="val batches each candidate is scored on before peeling (default 1)")
    p.add_argument("--recal-batches", type=int, default=20,
                   help="training batches of BN recalibration per level (default 20)")
    p.add_argument("--val-batches", type=int, help="val batches scoring each level (default: all)")
    p.add_argument("--candidates", type=int, default=0,
                   help="extra random per-group candidates (default: none; 1000 for a run "
                        "without a width history)")


def main_args(args: Any) -> int:
    """Build, save, print and plot the slimmable network of `args.run_dir`."""
    from rich.console import Console
    from rich.table import Table

    for name in ("score_batches", "recal_batches"):
        if getattr(args, name) < 1:
            raise WidthSearchError(f"--{name.replace('_', '-')} must be >= 1")
    slim = make_slimmable(args.run_dir, score_batches=args.score_batches,
                          recal_batches=args.recal_batches, val_batches=args.val_batches,
                          metric=args.metric, extra_candidates=args.candidates)
    out = args.out or Path(args.run_dir) / "slimmable.safetensors"
    save_slimmable(slim, out)
    metric = slim.meta["metric"]
    full = slim.meta["full_costs"]
    table = Table(title=f"slimmable levels ({slim.meta['candidates']} candidates, "
                        f"{slim.meta['peeled']} peeled, {len(slim.levels)} kept)")
    for col in ("level", "val accuracy", "val loss", "MACs", "MACs %", "params", "memory"):
        table.add_column(col, justify="right")
    for i, lv in enumerate(slim.levels):
        table.add_row(str(i), f"{lv.val['accuracy']:.2%}", f"{lv.val['loss']:.4f}",
                      f"{lv.costs['macs']:,.0f}", f"{lv.costs['macs'] / full['macs']:.1%}",
                      f"{lv.costs['params']:,.0f}", f"{lv.costs['memory']:,.0f}")
    console = Console()
    console.print(table)
    plot = plot_levels(slim, Path(args.run_dir) / "slimmable.png", metric)
    console.print(f"wrote {out} and {plot}")
    return 0


def plot_levels(slim: SlimmableNet, path: Path, metric: str = "macs") -> Path:
    """Val accuracy against cost (as a fraction of the full width), one point per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = float(slim.meta["full_costs"][metric])
    xs = [lv.costs[metric] / full for lv in slim.levels]
    ys = [100 * lv.val["accuracy"] for lv in slim.levels]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.step(xs, ys, where="post", color="tab:blue", alpha=0.5)
    ax.plot(xs, ys, "o", color="tab:blue")
    ax.set_xlabel(f"{metric} (fraction of the full width)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"slimmable levels ({slim.meta.get('strategy', '')})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
