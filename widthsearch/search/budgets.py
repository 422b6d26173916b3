"""Budgets: `macs=50%`, `params=1.2M`, `memory=800KB`, `latency=2.5ms`, as hard constraints.

A budget is parsed once (`parse_budget`) and resolved against the supernet's costs
(`resolve_budgets`): a percentage becomes an absolute limit of the full model's cost, and a
limit below the smallest subnet or above the full model is one error naming the reachable
range. Budgets of different metrics hold together; several budgets of one metric are
separate targets (one chosen config each) that the other metrics' budgets apply to.

Units: MACs and params take K / M / G / T (10^3k); memory takes B, KB / MB / GB (10^3k) or
KiB / MiB / GiB (2^10k), a bare number is bytes; latency takes s, ms, us (stored in seconds,
as the latency tables measure it) and needs a unit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import WidthSearchError
from ..sampling import MetricSource, fmt
from ..space import WidthSpace

METRICS = ("macs", "params", "memory", "memory_live", "latency")
_ALIASES = {"flops": "macs"}

_COUNT = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTES = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9,
          "kib": 2.0 ** 10, "mib": 2.0 ** 20, "gib": 2.0 ** 30}
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_UNITS: dict[str, dict[str, float]] = {
    "macs": _COUNT, "params": _COUNT, "memory": _BYTES, "memory_live": _BYTES,
    "latency": _SECONDS,
}
_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ%]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """One parsed budget: `fraction` of the full model, or an absolute `value` in base units."""

    metric: str
    spec: str
    value: float | None = None
    fraction: float | None = None

    def limit(self, full: float) -> float:
        return self.fraction * full if self.fraction is not None else float(self.value)


def parse_budget(text: str) -> Budget:
    """`metric=value[unit]` or `metric=P%`; every mistake is one WidthSearchError."""
    if not isinstance(text, str) or "=" not in text:
        raise WidthSearchError(
            f"a budget looks like macs=50% or latency=2.5ms, got {text!r}"
        )
    name, _, raw = text.partition("=")
    metric = name.strip().lower()
    if metric in _ALIASES:
        raise WidthSearchError(
            f"budget metric {name.strip()!r}: widthsearch counts multiply-accumulates, "
            f"write {_ALIASES[metric]}={raw.strip()}"
        )
    if metric not in METRICS:
        raise WidthSearchError(
            f"unknown budget metric {name.strip()!r}; known: {', '.join(METRICS)}"
        )
    match = _VALUE.match(raw)
    if not match:
        raise WidthSearchError(f"budget {text!r}: {raw.strip()!r} is not a number with a unit")
    number, unit = float(match.group(1)), match.group(2)
    spec = f"{metric}={raw.strip()}"
    if unit == "%":
        if not 0.0 < number <= 100.0:
            raise WidthSearchError(f"budget {text!r}: a percentage must be in (0, 100]")
        return Budget(metric, spec, fraction=number / 100.0)
    units = _UNITS[metric]
    key = unit.lower() if unit != "µs" else unit
    if metric == "latency" and unit == "":
        raise WidthSearchError(f"budget {text!r}: latency needs a unit (s, ms, us) or %")
    if key not in units:
        raise WidthSearchError(
            f"budget {text!r}: unknown unit {unit!r} for {metric}; use "
            f"{', '.join(u or '(none)' for u in units)} or %"
        )
    if number <= 0:
        raise WidthSearchError(f"budget {text!r} must be positive")
    return Budget(metric, spec, value=number * units[key])


@dataclass(frozen=True)
class Target:
    """Budgets that hold together: one chosen config each. `limits`: metric -> absolute."""

    limits: Mapping[str, float]
    specs: Mapping[str, str]
    full: Mapping[str, float]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.limits)

    def usage_of(self, costs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The largest cost / limit over the budgets: <= 1 means every budget holds."""
        return np.max(np.stack([np.asarray(costs[m], dtype=np.float64) / lim
                                for m, lim in self.limits.items()]), axis=0)

    def usage(self, cost_model: MetricSource) -> Callable[[np.ndarray], np.ndarray]:
        """Usage as a cost of width arrays; monotone in every width, so sample_at can aim."""

        def fn(widths: np.ndarray) -> np.ndarray:
            return self.usage_of({m: cost_model.evaluate(widths, m) for m in self.limits})

        return fn

    def to_json(self) -> dict[str, object]:
        return {m: {"spec": self.specs[m], "limit": self.limits[m],
                    "ratio": self.limits[m] / self.full[m] if self.full[m] else None}
                for m in self.limits}

    def label(self) -> str:
        return ", ".join(self.specs.values())


def metric_costs(cost_model: MetricSource, widths: np.ndarray, metric: str) -> np.ndarray:
    """One metric, or a clear error when the cost model cannot price it."""
    try:
        return np.asarray(cost_model.evaluate(widths, metric), dtype=np.float64)
    except KeyError:
        hint = (" (attach a latency table to the cost model first)" if metric == "latency"
                else "")
        raise WidthSearchError(f"the cost model has no metric {metric!r}{hint}") from None


def resolve_budgets(
    budgets: Sequence[str | Budget], space: WidthSpace, cost_model: MetricSource
) -> list[Target]:
    """Absolute limits for every target; all out-of-range budgets in one error at once."""
    parsed = [b if isinstance(b, Budget) else parse_budget(b) for b in budgets]
    if not parsed:
        raise WidthSearchError("give at least one budget, e.g. --budget macs=50%")
    ends = np.stack([space.to_vector(space.min()), space.to_vector(space.max())])
    reach: dict[str, tuple[float, float]] = {}
    for b in parsed:
        if b.metric not in reach:
            lo, hi = metric_costs(cost_model, ends, b.metric)
            reach[b.metric] = (float(lo), float(hi))
    problems = []
    for b in parsed:
        lo, hi = reach[b.metric]
        limit = b.limit(hi)
        if not lo <= limit <= hi * (1 + 1e-9):
            problems.append(
                f"{b.spec} ({fmt(limit)}) is outside the reachable {b.metric} range "
                f"[{fmt(lo)}, {fmt(hi)}] = [{100 * lo / hi:.1f}%, 100%] "
                "(smallest subnet .. full model)"
            )
    if problems:
        raise WidthSearchError("; ".join(problems))
    by_metric: dict[str, list[Budget]] = {}
    for b in parsed:
        by_metric.setdefault(b.metric, []).append(b)
    repeated = [m for m, bs in by_metric.items() if len(bs) > 1]
    if len(repeated) > 1:
        raise WidthSearchError(
            f"several targets are allowed for one metric only, got several for "
            f"{' and '.join(repeated)}; run one search per metric"
        )
    full = {m: reach[m][1] for m in by_metric}
    shared = {m: bs[0] for m, bs in by_metric.items() if m not in repeated}
    targets = []
    for b in by_metric[repeated[0]] if repeated else [None]:
        chosen = dict(shared) if b is None else {**shared, b.metric: b}
        order = [x.metric for x in parsed if x.metric in chosen]
        ordered = {m: chosen[m] for m in dict.fromkeys(order)}
        targets.append(Target({m: x.limit(full[m]) for m, x in ordered.items()},
                              {m: x.spec for m, x in ordered.items()}, full))
    return targets
