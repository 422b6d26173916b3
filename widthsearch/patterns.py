"""Width patterns: which physical channels a group of width c uses.

A pattern maps (group size n, width c, width step) to a list of channel assignments; a
*choice* is an index into that list, and choice 0 is always the leftmost assignment [0, c),
so `choice=None` means "the fixed pattern" for every pattern.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations

import torch

from .errors import WidthSearchError

Selection = slice | torch.Tensor
"""Active channel indices: a slice when contiguous (fast views), else an int64 tensor."""


class Pattern:
    """Base class: a pattern enumerates channel assignments for a width."""

    name = "pattern"

    def choices(self, n: int, c: int, step: int = 1) -> list[tuple[int, ...]]:
        """All channel assignments for width c in a group of n channels, leftmost first."""
        return [tuple(range(c))]

    def num_choices(self, n: int, c: int, step: int = 1) -> int:
        return len(self.choices(n, c, step))

    def indices(self, n: int, c: int, step: int, choice: int) -> Selection:
        """The active channels of one assignment, as a slice when contiguous."""
        options = self.choices(n, c, step)
        if not 0 <= choice < len(options):
            raise WidthSearchError(
                f"choice {choice} is out of range: pattern {self.name} has {len(options)} "
                f"assignments for width {c} of {n}"
            )
        return as_selection(options[choice])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Leftmost(Pattern):
    """The fixed pattern of slimmable networks: width c uses channels [0, c)."""

    name = "leftmost"

    def choices(self, n: int, c: int, step: int = 1) -> list[tuple[int, ...]]:
        return [tuple(range(c))]

    def indices(self, n: int, c: int, step: int, choice: int) -> Selection:
        if choice != 0:
            raise WidthSearchError(f"the leftmost pattern has one assignment, got choice {choice}")
        return slice(0, c)


class LocallyFree(Pattern):
    """CafeNet: base channels [0, c - r*step) plus free blocks chosen in [c - r*step, c + r*step).

    r counts width steps (bins), so a choice moves whole steps; the zone is clipped to the
    group and to whole steps. Each width has C(zone blocks, free blocks) assignments.
    """

    name = "cafenet"

    def __init__(self, r: int = 1) -> None:
        if r < 0:
            raise WidthSearchError(f"the free-zone offset r must be >= 0, got {r}")
        self.r = r

    def choices(self, n: int, c: int, step: int = 1) -> list[tuple[int, ...]]:
        return list(_locally_free_choices(n, c, step, self.r))

    def num_choices(self, n: int, c: int, step: int = 1) -> int:
        return len(_locally_free_choices(n, c, step, self.r))

    def __repr__(self) -> str:
        return f"LocallyFree(r={self.r})"


@lru_cache(maxsize=4096)
def _locally_free_choices(n: int, c: int, step: int, r: int) -> tuple[tuple[int, ...], ...]:
    if c >= n or r == 0:
        return (tuple(range(c)),)
    unit = step if c % step == 0 else 1
    base_end = max(0, c - r * unit)
    zone_end = min(c + r * unit, (n // unit) * unit)
    blocks = (zone_end - base_end) // unit
    free = (c - base_end) // unit
    if math.comb(blocks, free) > 10_000:
        raise WidthSearchError(f"too many locally free assignments for width {c} of {n}")
    base = tuple(range(base_end))
    out = []
    for picked in combinations(range(blocks), free):
        extra = tuple(base_end + b * unit + k for b in picked for k in range(unit))
        out.append(base + extra)
    return tuple(out)


class Bilateral(Pattern):
    """BCNet: width c is the left channels [0, c) (choice 0) or the right ones [n-c, n) (1)."""

    name = "bcnet"

    def choices(self, n: int, c: int, step: int = 1) -> list[tuple[int, ...]]:
        if c >= n:
            return [tuple(range(n))]
        return [tuple(range(c)), tuple(range(n - c, n))]

    def indices(self, n: int, c: int, step: int, choice: int) -> Selection:
        if choice == 0 or c >= n:
            return slice(0, min(c, n))
        if choice == 1:
            return slice(n - c, n)
        raise WidthSearchError(f"the bilateral pattern has choices 0 and 1, got {choice}")


def as_selection(channels: tuple[int, ...] | list[int] | torch.Tensor) -> Selection:
    """A slice when the channels are one ascending contiguous run, else an index tensor."""
    idx = torch.as_tensor(channels, dtype=torch.long)
    if idx.numel() == 0:
        return slice(0, 0)
    start = int(idx[0])
    if torch.equal(idx, torch.arange(start, start + idx.numel())):
        return slice(start, start + idx.numel())
    return idx


def selection_size(sel: Selection) -> int:
    if isinstance(sel, slice):
        return sel.stop - sel.start
    return int(sel.numel())


def selection_tensor(sel: Selection) -> torch.Tensor:
    if isinstance(sel, slice):
        return torch.arange(sel.start, sel.stop)
    return sel


PATTERNS: dict[str, type[Pattern]] = {
    "leftmost": Leftmost,
    "cafenet": LocallyFree,
    "bcnet": Bilateral,
}


def get_pattern(pattern: str | Pattern) -> Pattern:
    """Resolve a pattern name ("leftmost" | "cafenet" | "bcnet") or pass a Pattern through."""
    if isinstance(pattern, Pattern):
        return pattern
    try:
        return PATTERNS[pattern]()
    except KeyError:
        raise WidthSearchError(
            f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)} "
            "or pass a pattern object such as patterns.LocallyFree(r=1)"
        ) from None
