"""A synthetic width space, cost model and evaluator for the searcher tests.

Accuracy is a known function of the widths (concave per group, plus a small coupling), so a
search's result can be checked against brute force over the whole space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from widthsearch import ChannelGroup, WidthConfig, WidthSpace


def synthetic_space(sizes: Sequence[int] = (16, 24, 32, 16), widths: int = 4) -> WidthSpace:
    groups = [ChannelGroup("input", 3, (3,), fixed="the model input")]
    for i, n in enumerate(sizes):
        step = n // widths
        groups.append(ChannelGroup(f"g{i}", n, tuple(range(step, n + 1, step)), step=step))
    groups.append(ChannelGroup("out", 10, (10,), fixed="the model output"))
    return WidthSpace(tuple(groups))


class SyntheticCosts:
    """MACs bilinear along a chain of groups (like convs), params linear, memory a max."""

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray:
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        if metric == "macs":
            return np.rint(100.0 * (w[:, :-1] * w[:, 1:]).sum(axis=1))
        if metric == "params":
            return np.rint(9.0 * w.sum(axis=1) + (w[:, :-1] * w[:, 1:]).sum(axis=1))
        if metric == "memory":
            return 4.0 * w.max(axis=1) * 49
        raise KeyError(metric)


@dataclass(frozen=True)
class FakeScore:
    config: WidthConfig
    accuracy: float
    loss: float
    choice: dict[str, int]
    per_choice: tuple = ()


@dataclass
class FakeEvaluator:
    """Accuracy = sum over groups of a concave gain of the width ratio (+ a coupling term)."""

    space: WidthSpace
    coupling: float = 0.0
    fail_after: int | None = None  # raise after this many evaluate() calls (a kill)
    calls: int = 0
    configs_seen: int = 0
    weights: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.2, 0.35, 0.15]))

    def accuracy(self, config: Mapping[str, int]) -> float:
        ratios = np.array([config[g.name] / g.size for g in self.space.groups if g.slimmable])
        gain = float(np.sum(self.weights[: len(ratios)] * np.sqrt(ratios)))
        return 0.1 + 0.8 * gain / float(self.weights[: len(ratios)].sum()) + \
            self.coupling * float(ratios[0] * ratios[-1])

    def evaluate(self, configs: Sequence[Mapping[str, int]]) -> list[FakeScore]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.configs_seen += len(configs)
        out = []
        for c in configs:
            acc = self.accuracy(c)
            out.append(FakeScore(WidthConfig(c), acc, 1.0 - acc, {}))
        return out


def all_indices(space: WidthSpace) -> np.ndarray:
    """Every config of a small space as choice indices."""
    grids = np.meshgrid(*[np.arange(len(g.choices)) for g in space.groups], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1)
