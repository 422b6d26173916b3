"""Scoring subnets of a trained supernet on the VAL split, the way each pattern is searched.

A subnet's score is its val top-1 accuracy and mean cross-entropy after its BN statistics
are recalibrated at its width on a few fixed, unaugmented training batches (never val or
test). How the pattern's channel assignments enter the score:

- leftmost: the one assignment;
- cafenet (LocallyFree): the best of up to `max_choices` free assignments, the leftmost
  always among them and the others drawn from a generator seeded by (seed, config), so a
  config gets the same candidates whatever else is evaluated, in whatever order, on any rank;
- bcnet (Bilateral): the mean of the left and the right assignment (accuracy and loss).

Work is batched: the recalibration batches (and the val batches, when they fit in memory)
are read once and kept; each subnet is exported once (a plain model with its own copy of
the BN statistics, so the supernet is never modified) and then recalibrated and scored at
the speed of the plain model; results are cached by (config, choice) in a bounded LRU. Under torch.distributed every
rank calls `evaluate` with the same configs; each scores a disjoint shard, and one
all-reduce of the (config, candidate) score table gives every rank the full result, equal
to one process's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import WidthSearchError
from .patterns import Bilateral
from .seeds import SEED_EVAL, derive_seed, mapping_key
from .space import WidthConfig
from .supernet import Supernet
from .train.bn import recalibrate_module, unwrap

__all__ = ["Evaluator", "Score", "candidate_choices"]

VAL_MEMORY_LIMIT = 1 << 30
"""Val batches are kept in memory up to this many bytes; beyond, they are streamed."""
_DRAWS_PER_CHOICE = 8
"""Random draws allowed per wanted candidate before giving up on finding new ones."""


@dataclass(frozen=True)
class Score:
    """The val score of one width config and the assignment(s) behind it."""

    config: WidthConfig
    accuracy: float
    """Val top-1 in [0, 1]."""
    loss: float
    """Val mean cross-entropy."""
    choice: dict[str, int] = field(default_factory=dict)
    """The assignment that produced the score ({} = leftmost; bcnet: the left one)."""
    per_choice: tuple[tuple[dict[str, int], float, float], ...] = ()
    """(choice, accuracy, loss) of every assignment tried."""


def candidate_choices(net: Supernet, config: WidthConfig, max_choices: int,
                      seed: int) -> list[dict[str, int]]:
    """The assignments a config is scored on: leftmost first; bcnet adds the right one;
    other patterns with free assignments add up to max_choices - 1 distinct random ones."""
    counts = net.num_choices(config)
    if not counts:
        return [{}]
    if isinstance(net.pattern, Bilateral):
        return [{}, dict.fromkeys(counts, 1)]
    total = math.prod(counts.values())
    wanted = min(max_choices, total)
    out: list[dict[str, int]] = [{}]
    generator = torch.Generator().manual_seed(derive_seed(seed, SEED_EVAL, mapping_key(config)))
    for _ in range(_DRAWS_PER_CHOICE * max_choices):
        if len(out) >= wanted:
            break
        pick = {k: v for k, v in net.sample_choice(config, generator).items() if v}
        if pick not in out:
            out.append(pick)
    return out


def _choice_key(choice: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in choice.items() if v))


def _take(loader: Iterable[Any], limit: int | None, device: torch.device,
          max_bytes: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The first `limit` (x, y) batches of `loader` on `device`; None once they exceed
    `max_bytes` (the caller then streams the loader instead)."""
    out, size = [], 0
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        size += x.numel() * x.element_size()
        if max_bytes is not None and size > max_bytes:
            return None
        y = torch.zeros(len(x), dtype=torch.long) if y is None else y
        out.append((x.to(device), y.to(device)))
    return out


class Evaluator:
    """Scores width configs of `net` on the val split (see the module docstring).

    Args:
        net: the trained supernet (moved to `device`).
        recal_loader: unaugmented training batches (`DataBundle.recal`); its first
            `recal_batches` batches are read once and reused for every config.
        val_loader: the val split; the first `val_batches` batches (None: all).
        recal_batches: 0 scores with the supernet's own BN statistics.
        max_choices: how many assignments a cafenet config may try (>= 1).
        seed: seeds the assignments tried; the same seed gives the same scores.
        progress: show a rich progress bar over the subnets evaluated.
        cache_size: (config, choice) results kept (least recently used dropped first).
    """

    def __init__(self, net: Supernet, recal_loader: Iterable[Any] | None,
                 val_loader: Iterable[Any], *, recal_batches: int = 20, max_choices: int = 4,
                 val_batches: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = False,
                 cache_size: int = 100_000) -> None:
        if recal_batches < 0:
            raise WidthSearchError(f"recal_batches must be >= 0, got {recal_batches}")
        if max_choices < 1:
            raise WidthSearchError(f"max_choices must be >= 1, got {max_choices}")
        if val_batches is not None and val_batches < 1:
            raise WidthSearchError(f"val_batches must be >= 1 or None, got {val_batches}")
        if cache_size < 0:
            raise WidthSearchError(f"cache_size must be >= 0, got {cache_size}")
        if recal_batches > 0 and recal_loader is None:
            raise WidthSearchError("recal_batches > 0 needs a recal_loader of training batches")
        if recal_loader is not None and recal_loader is val_loader:
            raise WidthSearchError("BN recalibration must not see the val split: pass training "
                                   "batches (DataBundle.recal) as recal_loader")
        if getattr(recal_loader, "augment", False):
            raise WidthSearchError("the recal_loader augments its images; recalibrate on clean "
                                   "training images (DataBundle.recal)")
        self.net = unwrap(net)
        self.device = torch.device(device)
        self.net.to(self.device)
        self.max_choices, self.seed, self.progress = max_choices, seed, progress
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[WidthConfig, tuple[tuple[str, int], ...]],
                                 tuple[float, float]] = OrderedDict()
        self._recal = ([x for x, _ in _take(recal_loader, recal_batches, self.device) or []]
                       if recal_batches > 0 and recal_loader is not None else [])
        if recal_batches > 0 and not self._recal:
            raise WidthSearchError("BN recalibration got no batches (empty recal loader)")
        self._val_loader, self._val_batches = val_loader, val_batches
        self._val = _take(val_loader, val_batches, self.device, VAL_MEMORY_LIMIT)
        if self._val is not None and not self._val:
            raise WidthSearchError("evaluation got no batches (empty val loader)")
        self.evaluated = 0
        """Subnets (config, choice) scored so far, cache misses only."""

    # -- public ------------------------------------------------------------------------------
    def __call__(self, config: Mapping[str, int]) -> Score:
        """The score of one config."""
        return self.evaluate([config])[0]

    def evaluate(self, configs: Sequence[Mapping[str, int]]) -> list[Score]:
        """Scores of `configs`, in order. The supernet's BN statistics, active widths and
        train/eval modes are left as they were (each subnet is scored as its export)."""
        cfgs = [self.net.space.validate(c) for c in configs]
        unique = list(dict.fromkeys(cfgs))
        candidates = {c: candidate_choices(self.net, c, self.max_choices, self.seed)
                      for c in unique}
        rank, world = _rank_world()
        mine = unique[rank::world]
        work = [(c, ch) for c in mine for ch in candidates[c] if self._get(c, ch) is None]
        results: dict[tuple[WidthConfig, tuple[tuple[str, int], ...]], tuple[float, float]] = {}
        if work:
            results = self._score_all(work)
        if world > 1:
            results = self._gather(unique, candidates, results)
        for key, value in results.items():
            self._put(key, value)
        table = {(c, _choice_key(ch)): self._lookup(c, ch, results)
                 for c in unique for ch in candidates[c]}
        return [self._combine(c, candidates[c], table) for c in cfgs]

    def clear(self) -> None:
        """Forget cached results (call after the supernet's weights change)."""
        self._cache.clear()

    # -- scoring -----------------------------------------------------------------------------
    def _score_all(self, work: list[tuple[WidthConfig, dict[str, int]]]
                   ) -> dict[tuple[WidthConfig, tuple[tuple[str, int], ...]], tuple[float, float]]:
        out = {}
        with self._bar(len(work)) as (bar, task):
            for config, choice in work:
                out[(config, _choice_key(choice))] = self._score_one(config, choice)
                self.evaluated += 1
                bar.advance(task)
        return out

    def _score_one(self, config: WidthConfig, choice: dict[str, int]) -> tuple[float, float]:
        """(accuracy, loss) of one subnet, run as its export: the plain model computes what
        the supernet computes at (config, choice) (export equivalence), without slicing
        weights in every forward, and recalibrating its copy of the BN statistics leaves
        the supernet's untouched. The first recalibration batch replaces the statistics,
        so the result does not depend on what was scored before."""
        sub = self.net.export(config, choice or None).to(self.device)
        if self._recal:
            recalibrate_module(sub, self._recal, len(self._recal))
        sub.eval()
        total_loss, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self._val_iter():
                logits = sub(x)
                total_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
        if seen == 0:
            raise WidthSearchError("evaluation got no batches (empty val loader)")
        return correct / seen, total_loss / seen

    def _val_iter(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self._val is not None:
            return self._val
        return ((x.to(self.device), y.to(self.device)) for i, (x, y) in
                enumerate(self._val_loader)
                if self._val_batches is None or i < self._val_batches)

    def _combine(self, config: WidthConfig, choices: list[dict[str, int]],
                 table: Mapping[tuple[WidthConfig, tuple[tuple[str, int], ...]],
                                tuple[float, float]]) -> Score:
        per = tuple((dict(ch), *table[(config, _choice_key(ch))]) for ch in choices)
        if isinstance(self.net.pattern, Bilateral) and len(per) > 1:
            acc = sum(p[1] for p in per) / len(per)
            loss = sum(p[2] for p in per) / len(per)
            return Score(config, acc, loss, dict(per[0][0]), per)
        best = min(range(len(per)), key=lambda i: (-per[i][1], per[i][2], i))
        return Score(config, per[best][1], per[best][2], dict(per[best][0]), per)

    # -- distributed -------------------------------------------------------------------------
    def _gather(self, unique: list[WidthConfig], candidates: dict[WidthConfig, list[dict[str, int]]],
                results: dict[tuple[WidthConfig, tuple[tuple[str, int], ...]], tuple[float, float]]
                ) -> dict[tuple[WidthConfig, tuple[tuple[str, int], ...]], tuple[float, float]]:
        """Every rank's shard on every rank: one all-reduce (sum) of a table that each rank
        fills at the rows it scored (float64: the sum of one value and zeros is exact).
        Rows a rank had cached count as its own, so the table is complete."""
        rank, world = _rank_world()
        width = max(len(v) for v in candidates.values())
        table = torch.zeros(len(unique), width, 3, dtype=torch.float64)
        for i, c in enumerate(unique):
            if i % world != rank:
                continue
            for j, ch in enumerate(candidates[c]):
                value = self._lookup(c, ch, results)
                table[i, j] = torch.tensor([value[0], value[1], 1.0], dtype=torch.float64)
        on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        table = table.to(on)
        dist.all_reduce(table)
        table = table.cpu()
        out = {}
        for i, c in enumerate(unique):
            for j, ch in enumerate(candidates[c]):
                if table[i, j, 2].item() != 1.0:
                    raise WidthSearchError("ranks disagree on the configs to evaluate: every "
                                           "rank must call evaluate() with the same configs")
                out[(c, _choice_key(ch))] = (float(table[i, j, 0]), float(table[i, j, 1]))
        return out

    # -- cache -------------------------------------------------------------------------------
    def _get(self, config: WidthConfig, choice: Mapping[str, int]) -> tuple[float, float] | None:
        key = (config, _choice_key(choice))
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    def _put(self, key: tuple[WidthConfig, tuple[tuple[str, int], ...]],
             value: tuple[float, float]) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _lookup(self, config: WidthConfig, choice: Mapping[str, int],
                results: Mapping[tuple[WidthConfig, tuple[tuple[str, int], ...]],
                                 tuple[float, float]]) -> tuple[float, float]:
        key = (config, _choice_key(choice))
        if key in results:
            return results[key]
        value = self._get(config, choice)
        if value is None:  # only possible with a cache smaller than one call's work
            value = self._score_all([(config, dict(choice))])[key]
        return value

    def _bar(self, total: int) -> _Bar:
        return _Bar(total, self.progress and _rank_world()[0] == 0)


class _Bar:
    """A rich progress bar over subnets, or nothing."""

    def __init__(self, total: int, show: bool) -> None:
        self.progress = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), disable=not show, transient=True)
        self.total = total

    def __enter__(self) -> tuple[Progress, Any]:
        self.progress.__enter__()
        return self.progress, self.progress.add_task("evaluate", total=self.total)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
