"""FLOPs-sensitive bins (CafeNet, step 4): width steps that cost about the same MACs everywhere.

A channel of an early, high-resolution layer costs far more MACs than one of a late layer,
so "one channel" is not a comparable step across groups. Bins fix that: channels are grouped
into bins sized so that one bin of any group adds about the same MACs, which shrinks the
search space and makes the free zone of the locally free pattern (r counts bins) comparable.

The rule (our reading of the authors' sibling code; see PAPERS.md):

1. f_g = MACs added by one channel of group g at full width = MACs(full config) minus MACs
   (full config with g one channel narrower). MACs are bilinear in the widths, so this is
   the producers' out-channel cost plus the consumers' in-channel cost (plus the depthwise
   members' cost), each at the other groups' full widths. Computed with the supernet's
   vectorized cost model, which evaluates any (even non-allowed) width vector.
2. b_g = clip(2^ceil(log2(max_h f_h / f_g)), min_bin, max_bin): the most expensive group
   per channel gets min_bin; a group whose channels cost k times less gets a bin of about k.
3. b_g is then moved to the nearest (in log2 distance, ties to the smaller) size that
   divides n_g, is a multiple of the group's granularity, and leaves the group at least
   `min_bins` bins (so a cheap group stays searchable instead of collapsing to one width).

Fixed groups (model input, classifier output, ops without a rule) get no bin.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import WidthSearchError
from .space import WidthSpace, default_choices

if TYPE_CHECKING:
    from .supernet import Supernet


def per_channel_macs(net: Supernet) -> dict[str, float]:
    """f_g for every non-fixed group: MACs one channel of g adds at full width."""
    space = net.space
    full = np.array([g.size for g in space.groups], dtype=np.float64)
    names = [g.name for g in space.groups if not g.fixed]
    if not names:
        return {}
    index = {g.name: i for i, g in enumerate(space.groups)}
    rows = np.repeat(full[None, :], len(names), axis=0)
    for row, name in enumerate(names):
        rows[row, index[name]] -= 1
    total = float(net.cost_model.macs(full)[0])
    reduced = net.cost_model.macs(rows)
    return {name: total - float(m) for name, m in zip(names, reduced, strict=True)}


def _valid_bins(size: int, granularity: int) -> list[int]:
    return [d for d in range(1, size + 1) if size % d == 0 and d % granularity == 0]


def _nearest(target: float, candidates: list[int]) -> int:
    return min(candidates, key=lambda d: (abs(math.log2(d) - math.log2(target)), d))


def snap_bin(target: int, size: int, *, granularity: int = 1, min_bin: int = 1,
             max_bin: int | None = None, min_bins: int = 4) -> int:
    """The bin nearest `target` that divides `size`, is a multiple of `granularity` and
    lies in [min_bin, min(max_bin, size // min_bins)]; if none does, the nearest valid one."""
    valid = _valid_bins(size, granularity)
    if not valid:
        raise WidthSearchError(
            f"no bin divides a group of {size} channels in blocks of {granularity}"
        )
    cap = size // max(1, min_bins)
    if max_bin is not None:
        cap = min(cap, max_bin)
    in_range = [d for d in valid if min_bin <= d <= cap]
    return _nearest(target, in_range or valid)


def flops_sensitive_bins(net: Supernet, min_bin: int = 1, max_bin: int | None = None, *,
                         min_bins: int = 4) -> dict[str, int]:
    """Bin size per non-fixed group, by the rule in this module's docstring.

    Args:
        net: the supernet (its graph and cost model give the per-channel MACs).
        min_bin: the smallest bin (the most expensive group per channel gets it).
        max_bin: the largest bin (None: no cap besides `min_bins`).
        min_bins: every group keeps at least this many bins (1 allows a one-bin group).
    """
    if min_bin < 1:
        raise WidthSearchError(f"min_bin must be >= 1, got {min_bin}")
    if max_bin is not None and max_bin < min_bin:
        raise WidthSearchError(f"max_bin ({max_bin}) must be >= min_bin ({min_bin})")
    cost = per_channel_macs(net)
    if not cost:
        return {}
    top = max(cost.values())
    bins = {}
    for name, f in cost.items():
        group = net.space[name]
        if f <= 0 or top <= 0:  # a channel that costs nothing: as coarse as allowed
            raw = max_bin if max_bin is not None else group.size
        else:
            raw = 2 ** math.ceil(math.log2(top / f) - 1e-9)
            raw = max(min_bin, raw if max_bin is None else min(raw, max_bin))
        bins[name] = snap_bin(raw, group.size, granularity=group.granularity, min_bin=min_bin,
                              max_bin=max_bin, min_bins=min_bins)
    return bins


def bin_space(net: Supernet, bins: dict[str, int], min_ratio: float = 0.25) -> WidthSpace:
    """net.space with each binned group's widths = multiples of its bin from `min_ratio` of
    the group (at least one bin) to full, and its `step` = its bin (so LocallyFree(r)
    moves r bins)."""
    space = net.space
    choices = {}
    for name, b in bins.items():
        group = space[name]
        if group.fixed:
            raise WidthSearchError(f"group {name!r} is fixed ({group.fixed}); it takes no bin")
        if b < 1 or group.size % b or b % group.granularity:
            raise WidthSearchError(
                f"bin {b} of group {name!r} must divide its {group.size} channels and be a "
                f"multiple of its granularity {group.granularity}"
            )
        choices[name] = default_choices(group.size, min_ratio=min_ratio, step=b)
    binned = space.with_choices(choices)
    return WidthSpace(tuple(replace(g, step=bins[g.name]) if g.name in bins else g
                            for g in binned.groups))


def apply_bins(net: Supernet, bins: dict[str, int] | None = None, *, min_ratio: float = 0.25,
               min_bin: int = 1, max_bin: int | None = None, min_bins: int = 4) -> WidthSpace:
    """Switch `net` to its bin space (FLOPs-sensitive bins unless `bins` is given).

    Replaces `net.space`, rebuilds `net.cost_model` over it, drops the supernet's cached
    channel selections (a LocallyFree assignment depends on the group's step) and
    activates the full width. Returns the new space.
    """
    if bins is None:
        bins = flops_sensitive_bins(net, min_bin, max_bin, min_bins=min_bins)
    space = bin_space(net, bins, min_ratio)
    net.set_space(space)
    return space
