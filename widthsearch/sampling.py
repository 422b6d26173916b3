"""Random width configurations at a target cost, without rejection sampling.

Uniform per-group widths almost never land near a tight budget (on resnet20 a 10% MACs
budget is hit about once in 200,000 draws), so configs are built to hit the window instead:

1. every group gets a random growth rate r_g in (0, 1]; at scale t its choice index is
   floor(clip(t * r_g, 0, 1) * K_g) (capped at K_g - 1, K_g allowed widths: the snap to
   the group's bins), so t = 0 is the smallest config and t = 1 / min(r) the full one;
2. costs are monotone in every width, hence in t: a vectorized bisection moves every draw
   toward an aim drawn uniformly inside the window (so draws spread over the window, not
   only its edge) and stops once the snapped config lands inside the window near its aim;
3. that config or its predecessor on the path lands in the window unless one snap step jumps
   over it; then a few greedy one-step moves (one group one width up or down, a random one
   among those that land in the window, else the one that gets closest) fix it.

A cost is any callable mapping an (n, groups) width array to n costs, or an object with
`evaluate(widths, metric)` (the supernet's CostModel, a latency table) plus a metric name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .errors import WidthSearchError

if TYPE_CHECKING:
    from .space import WidthSpace

CostFn = Callable[[np.ndarray], np.ndarray]

_BISECTION_STEPS = 40
_FIX_ROUNDS = 8


class MetricSource(Protocol):
    """Anything that prices width arrays per metric (CostModel, a latency table)."""

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray: ...


def as_cost_fn(cost: CostFn | MetricSource, metric: str | None = None) -> CostFn:
    """One calling convention for the costs: widths (n, groups) -> costs (n,)."""
    if metric is not None:
        if not hasattr(cost, "evaluate"):
            raise WidthSearchError(
                "a metric name needs a cost model with evaluate(widths, metric), "
                f"got {type(cost).__name__}"
            )
        source = cost

        def fn(widths: np.ndarray) -> np.ndarray:
            return np.asarray(source.evaluate(widths, metric), dtype=np.float64)

        return fn
    if hasattr(cost, "evaluate") and not callable(cost):
        raise WidthSearchError("a cost model needs a metric name (e.g. metric='macs')")
    if not callable(cost):
        raise WidthSearchError(f"a cost must be callable on width arrays, got {type(cost).__name__}")
    return lambda widths: np.asarray(cost(widths), dtype=np.float64).reshape(-1)


def fmt(value: float) -> str:
    """A cost for messages: whole numbers with thousands separators, else 6 digits."""
    v = float(value)
    return f"{v:,.0f}" if v == round(v) and abs(v) >= 1 else f"{v:.6g}"


def cost_range(space: WidthSpace, cost: CostFn) -> tuple[float, float]:
    """The cost of the smallest and of the full configuration."""
    lo_hi = np.stack([_widths(space, space.min()), _widths(space, space.max())])
    c = cost(lo_hi)
    return float(c[0]), float(c[1])


def _widths(space: WidthSpace, cfg) -> np.ndarray:
    return np.array([cfg[g.name] for g in space.groups], dtype=np.int64)


def window_of(target: float, tol: float, low: float | None, high: float | None) -> tuple[float, float]:
    """The accepted cost window: target * (1 -/+ tol), or [low * target, high * target]."""
    if tol < 0:
        raise WidthSearchError(f"tol must be non-negative, got {tol}")
    lo_f = 1.0 - tol if low is None else low
    hi_f = 1.0 + tol if high is None else high
    if not 0.0 <= lo_f <= hi_f:
        raise WidthSearchError(f"a cost window needs 0 <= low <= high, got low={lo_f}, high={hi_f}")
    return target * lo_f, target * hi_f


def check_target(target: float, reachable: tuple[float, float], what: str = "target") -> None:
    """One clear error when a target cost lies outside what the space can reach."""
    lo, hi = reachable
    if not lo <= target <= hi:
        raise WidthSearchError(
            f"{what} {fmt(target)} is outside the reachable range [{fmt(lo)}, {fmt(hi)}] "
            f"(smallest subnet .. full model)"
        )


def sample_indices_at(
    space: WidthSpace,
    cost: CostFn,
    window: tuple[float, float],
    n: int,
    generator: torch.Generator | None = None,
    *,
    strict: bool = True,
    toward: np.ndarray | None = None,
) -> np.ndarray:
    """`n` configs (choice indices, shape (n, groups)) whose cost lies in `window`.

    With `strict`, a draw no fix brings into the window raises (a window narrower than the
    gaps between neighbouring configs); otherwise the closest config found is kept.
    `toward` (n, groups) of choice indices replaces the random proportions: each draw then
    moves along the ray through that config (scale 1 is the config itself), which repairs
    a mutant that left the window while keeping its shape.
    """
    lo, hi = window
    reach = cost_range(space, cost)
    if n < 1:
        raise WidthSearchError(f"n must be a positive integer, got {n}")
    if hi < reach[0] or lo > reach[1]:
        raise WidthSearchError(
            f"the cost window [{fmt(lo)}, {fmt(hi)}] lies outside the reachable range "
            f"[{fmt(reach[0])}, {fmt(reach[1])}] (smallest subnet .. full model)"
        )
    lo_c, hi_c = max(lo, reach[0]), min(hi, reach[1])
    counts = np.array([len(g.choices) for g in space.groups])
    tables = [np.asarray(g.choices, dtype=np.int64) for g in space.groups]
    g_count = len(space.groups)
    rand = torch.rand((n, g_count + 1), generator=generator, dtype=torch.float64).numpy()
    if toward is None:
        rates = 1e-3 + (1.0 - 1e-3) * rand[:, :g_count]  # (0, 1]: no group frozen at its minimum
    else:
        toward = np.asarray(toward, dtype=np.int64).reshape(n, g_count)
        rates = (toward + 0.5) / counts  # floor(1 * rate * K) is the config itself
    aims = lo_c + (hi_c - lo_c) * rand[:, g_count]
    tie = torch.rand((n, _FIX_ROUNDS * 2), generator=generator, dtype=torch.float64).numpy()

    def indices_at(t: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        frac = np.clip(t[:, None] * rates[rows], 0.0, 1.0)
        return np.minimum(np.floor(frac * counts + 1e-9), counts - 1).astype(np.int64)

    def widths_of(idx: np.ndarray) -> np.ndarray:
        out = np.empty_like(idx)
        for j, tab in enumerate(tables):
            out[:, j] = tab[idx[:, j]]
        return out

    # bisection on t: invariant cost(t_lo) < aim <= cost(t_hi); a draw stops early once its
    # config lands inside the window near its aim (within 1/8 of the window's width), and
    # only the draws still running are priced
    t_lo = np.zeros(n)
    t_hi = 1.0 / rates.min(axis=1)
    band = (hi_c - lo_c) / 8.0
    hit = np.zeros(n, dtype=bool)
    result = np.empty((n, g_count), dtype=np.int64)
    active = np.arange(n)
    for _ in range(_BISECTION_STEPS):
        if len(active) == 0:
            break
        mid = 0.5 * (t_lo[active] + t_hi[active])
        idx = indices_at(mid, active)
        c = cost(widths_of(idx))
        near = (np.abs(c - aims[active]) <= band) & (c >= lo_c) & (c <= hi_c)
        result[active[near]] = idx[near]
        hit[active[near]] = True
        above = c >= aims[active]
        t_hi[active] = np.where(above, mid, t_hi[active])
        t_lo[active] = np.where(above, t_lo[active], mid)
        active = active[~near]
    rest = np.flatnonzero(~hit)
    if len(rest) == 0:
        return result
    upper, lower = indices_at(t_hi[rest], rest), indices_at(t_lo[rest], rest)
    c_up, c_low = cost(widths_of(upper)), cost(widths_of(lower))
    up_ok = (c_up >= lo_c) & (c_up <= hi_c)
    low_ok = (c_low >= lo_c) & (c_low <= hi_c)
    result[rest] = np.where(up_ok[:, None], upper, lower)
    for k in np.flatnonzero(~(up_ok | low_ok)):
        i = rest[k]
        fixed, ok = _greedy_fix(lower[k], upper[k], counts, widths_of, cost, (lo_c, hi_c), tie[i])
        if not ok and strict:
            raise WidthSearchError(
                f"no configuration found with cost in [{fmt(lo_c)}, {fmt(hi_c)}]: the window "
                "is narrower than the step between neighbouring widths here; widen the "
                "tolerance"
            )
        result[i] = fixed
    return result


def _greedy_fix(
    lower: np.ndarray,
    upper: np.ndarray,
    counts: np.ndarray,
    widths_of: Callable[[np.ndarray], np.ndarray],
    cost: CostFn,
    window: tuple[float, float],
    tie: np.ndarray,
) -> tuple[np.ndarray, bool]:
    """Walk one width at a time from the config below the window (up) and above it (down)."""
    lo, hi = window
    best, best_gap = lower, np.inf
    for start, direction in ((lower, 1), (upper, -1)):
        cur = start.copy()
        for r in range(_FIX_ROUNDS):
            moves = cur[None, :] + direction * np.eye(len(cur), dtype=np.int64)
            legal = (moves >= 0).all(axis=1) & (moves < counts).all(axis=1)
            moves = moves[legal]
            if len(moves) == 0:
                break
            c = cost(widths_of(moves))
            inside = np.flatnonzero((c >= lo) & (c <= hi))
            if len(inside):
                pick = tie[r + (_FIX_ROUNDS if direction < 0 else 0)]
                return moves[inside[int(pick * len(inside))]], True
            gap = np.where(c < lo, lo - c, c - hi)
            # keep walking toward the window without jumping past it
            toward = (c <= hi) if direction > 0 else (c >= lo)
            if not toward.any():
                break
            k = int(np.argmin(np.where(toward, gap, np.inf)))
            cur = moves[k]
            if gap[k] < best_gap:
                best, best_gap = cur, gap[k]
    return best, False
