"""Channel groups and the space of width configurations over them.

A channel group is a set of channel dimensions the graph forces to keep the same width
(a residual add, a depthwise conv, a broadcast multiply). A width configuration assigns one
allowed width to every group; it is immutable so it can be hashed, cached and logged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .errors import WidthSearchError
from .sampling import CostFn, MetricSource, as_cost_fn, check_target, cost_range, window_of
from .sampling import sample_indices_at as _sample_indices_at


@dataclass(frozen=True)
class ChannelGroup:
    """One channel group: its full size, allowed widths and the modules it connects.

    `producers` write the group's channels (conv / linear outputs), `consumers` read them
    (conv / linear inputs), `members` carry them through (norms). `fixed` names why a group
    must stay at full width (model input, classifier output, an op without a rule).
    Widths are multiples of `granularity`; a group with `blocks` > 1 (a channel shuffle's
    chunks, a grouped conv that keeps its groups) takes the same channels inside each of
    its `blocks` equal blocks.
    """

    name: str
    size: int
    choices: tuple[int, ...]
    step: int = 1
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    fixed: str | None = None
    granularity: int = 1
    blocks: int = 1

    @property
    def slimmable(self) -> bool:
        return len(self.choices) > 1

    def details(self) -> str:
        """A readable multi-line explanation of the group, for `inspect` and debugging."""
        lines = [f"group {self.name!r}: {self.size} channels"]
        if self.fixed:
            lines.append(f"  fixed at full width: {self.fixed}")
        else:
            lines.append(f"  widths: {_compact(self.choices)} (step {self.step})")
            if self.blocks > 1:
                lines.append(f"  the same channels inside each of {self.blocks} equal blocks")
        for label, names in (
            ("produced by", self.producers),
            ("consumed by", self.consumers),
            ("carried by", self.members),
        ):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        return "\n".join(lines)


def _compact(values: Sequence[int]) -> str:
    if len(values) <= 6:
        return ", ".join(map(str, values))
    return f"{values[0]}, {values[1]}, ..., {values[-2]}, {values[-1]} ({len(values)} widths)"


def _is_integral(value: object) -> bool:
    """Whole numbers only: 16.5 is refused rather than cut to 16."""
    if not isinstance(value, numbers.Real):  # "16" is not a width, 16 and np.int64(16) are
        return False
    try:
        return float(value) == int(value)
    except (ValueError, OverflowError):
        return False


def default_choices(size: int, *, min_ratio: float, step: int) -> tuple[int, ...]:
    """Multiples of `step` from `min_ratio * size` up to `size`; `size` itself always allowed."""
    if not 0.0 < min_ratio <= 1.0:
        raise WidthSearchError(f"min_ratio must be in (0, 1], got {min_ratio}")
    if step < 1:
        raise WidthSearchError(f"step must be a positive integer, got {step}")
    low = max(step, math.ceil(min_ratio * size / step) * step)
    widths = set(range(low, size + 1, step))
    widths.add(size)
    return tuple(sorted(w for w in widths if 0 < w <= size))


def default_step(size: int, divisions: int, granularity: int = 1) -> int:
    """A width step that splits a group into about `divisions` equal parts."""
    step = max(1, size // divisions)
    return max(granularity, (step // granularity) * granularity)


class WidthConfig(Mapping[str, int]):
    """An immutable mapping group name -> width; hashable, comparable, JSON-friendly."""

    __slots__ = ("_items", "_lookup")

    def __init__(self, widths: Mapping[str, int]) -> None:
        self._items = tuple((str(k), int(v)) for k, v in widths.items())
        self._lookup = dict(self._items)

    def __getitem__(self, name: str) -> int:
        return self._lookup[name]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._lookup == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"WidthConfig({self._lookup})"

    def to_dict(self) -> dict[str, int]:
        return dict(self._lookup)


@dataclass(frozen=True)
class WidthSpace:
    """Every group's allowed widths; builds, validates and encodes width configurations."""

    groups: tuple[ChannelGroup, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {g.name: i for i, g in enumerate(self.groups)})

    def __getitem__(self, name: str) -> ChannelGroup:
        try:
            return self.groups[self._index[name]]
        except KeyError:
            raise WidthSearchError(
                f"unknown channel group {name!r}; known groups: {', '.join(self.names)}"
            ) from None

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def searchable(self) -> tuple[ChannelGroup, ...]:
        """The groups with more than one allowed width."""
        return tuple(g for g in self.groups if g.slimmable)

    def with_choices(self, choices: Mapping[str, Sequence[int]]) -> WidthSpace:
        """A copy with some groups' allowed widths replaced (validated)."""
        groups = []
        for g in self.groups:
            if g.name in choices:
                widths = tuple(sorted({int(w) for w in choices[g.name]}))
                if g.fixed and widths != (g.size,):
                    raise WidthSearchError(f"group {g.name!r} is fixed: {g.fixed}")
                if not widths or widths[0] < 1 or widths[-1] > g.size:
                    raise WidthSearchError(
                        f"widths for group {g.name!r} must lie in [1, {g.size}], got {widths}"
                    )
                bad = [w for w in widths if w % g.granularity and w != g.size]
                if bad:
                    raise WidthSearchError(
                        f"widths {bad} of group {g.name!r} are not multiples of {g.granularity}"
                    )
                groups.append(replace(g, choices=widths))
            else:
                groups.append(g)
        unknown = set(choices) - set(self.names)
        if unknown:
            self[sorted(unknown)[0]]  # raises with the list of known groups
        return WidthSpace(tuple(groups))

    def max(self) -> WidthConfig:
        return WidthConfig({g.name: g.choices[-1] for g in self.groups})

    def min(self) -> WidthConfig:
        return WidthConfig({g.name: g.choices[0] for g in self.groups})

    def uniform(self, ratio: float) -> WidthConfig:
        """Every group at the allowed width nearest to `ratio` of its size (ties: wider)."""
        if not 0.0 < ratio <= 1.0:
            raise WidthSearchError(f"a width ratio must be in (0, 1], got {ratio}")
        return WidthConfig(
            {g.name: min(g.choices, key=lambda w, g=g: (abs(w - ratio * g.size), -w))
             for g in self.groups}
        )

    def sample(self, generator: torch.Generator | None = None) -> WidthConfig:
        """A configuration with every group's width drawn uniformly from its choices."""
        idx = self.sample_indices(1, generator)[0]
        return self.from_indices(idx)

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> np.ndarray:
        """`n` random configurations as choice indices, shape (n, groups)."""
        counts = torch.tensor([len(g.choices) for g in self.groups], dtype=torch.float64)
        u = torch.rand((n, len(self.groups)), generator=generator, dtype=torch.float64)
        return (u * counts).floor().long().clamp_max(counts.long() - 1).numpy()

    def sample_at(
        self,
        cost: CostFn | MetricSource,
        target: float,
        tol: float = 0.02,
        generator: torch.Generator | None = None,
        *,
        metric: str | None = None,
        low: float | None = None,
        high: float | None = None,
        n: int | None = None,
        strict: bool = True,
    ) -> WidthConfig | list[WidthConfig]:
        """A random configuration whose cost lies within `tol` (relative) of `target`.

        `cost` maps an (n, groups) width array to n costs, or is a cost model priced with
        `metric` (`space.sample_at(net.cost_model, 2e6, metric="macs")`). `low` / `high`
        replace the symmetric window by [low * target, high * target] (CafeNet keeps
        candidates within 0.8-1.0 of the budget: low=0.8, high=1.0). No rejection loop:
        random per-group proportions, bisection on a common scale, a few one-step fixes
        (see widthsearch.sampling). Deterministic for a generator; `n` draws a list at once.
        """
        idx = self.sample_indices_at(cost, target, tol, generator, metric=metric, low=low,
                                     high=high, n=1 if n is None else n, strict=strict)
        configs = [self.from_indices(row) for row in idx]
        return configs[0] if n is None else configs

    def sample_indices_at(
        self,
        cost: CostFn | MetricSource,
        target: float,
        tol: float = 0.02,
        generator: torch.Generator | None = None,
        *,
        metric: str | None = None,
        low: float | None = None,
        high: float | None = None,
        n: int = 1,
        strict: bool = True,
    ) -> np.ndarray:
        """`sample_at` as choice indices, shape (n, groups), for searchers."""
        if n < 1:
            raise WidthSearchError(f"n must be a positive integer, got {n}")
        fn = as_cost_fn(cost, metric)
        check_target(float(target), cost_range(self, fn))
        window = window_of(float(target), tol, low, high)
        return _sample_indices_at(self, fn, window, n, generator, strict=strict)

    def aligned(self, multiple: int) -> WidthSpace:
        """A copy whose slimmable groups keep only widths that are multiples of `multiple`.

        Hardware kernels run fastest on channel counts that are multiples of 8 or 16. A
        group's full size stays allowed even when it is not a multiple (it is the model's
        own width), so a group with no aligned width below its size becomes fixed in effect.
        """
        if int(multiple) != multiple or multiple < 1:
            raise WidthSearchError(f"an alignment must be a positive integer, got {multiple}")
        m = int(multiple)
        groups = []
        for g in self.groups:
            if g.fixed or not g.slimmable:
                groups.append(g)
                continue
            keep = tuple(w for w in g.choices if w % m == 0 or w == g.size) or g.choices[-1:]
            groups.append(replace(g, choices=keep))
        return WidthSpace(tuple(groups))

    def validate(self, config: Mapping[str, int]) -> WidthConfig:
        """The config as a WidthConfig; missing groups default to full width."""
        for name, width in config.items():
            group = self[name]
            if isinstance(width, bool) or not _is_integral(width):
                raise WidthSearchError(f"width {width!r} for group {name!r} is not a whole "
                                       f"number of channels; allowed: {_compact(group.choices)}")
            if int(width) not in group.choices:
                raise WidthSearchError(
                    f"width {width} is not allowed for group {name!r} "
                    f"(size {group.size}); allowed: {_compact(group.choices)}"
                )
        return WidthConfig({g.name: int(config.get(g.name, g.size)) for g in self.groups})

    def to_vector(self, config: Mapping[str, int]) -> np.ndarray:
        """Widths as an int64 vector in group order."""
        cfg = self.validate(config)
        return np.array([cfg[g.name] for g in self.groups], dtype=np.int64)

    def from_vector(self, vector: Sequence[int] | np.ndarray) -> WidthConfig:
        if len(vector) != len(self.groups):
            raise WidthSearchError(
                f"a width vector needs {len(self.groups)} entries, got {len(vector)}"
            )
        return self.validate({g.name: int(w) for g, w in zip(self.groups, vector, strict=True)})

    def to_indices(self, config: Mapping[str, int]) -> np.ndarray:
        cfg = self.validate(config)
        return np.array([g.choices.index(cfg[g.name]) for g in self.groups], dtype=np.int64)

    def from_indices(self, indices: Sequence[int] | np.ndarray) -> WidthConfig:
        if len(indices) != len(self.groups):
            raise WidthSearchError(
                f"an index vector needs {len(self.groups)} entries, got {len(indices)}"
            )
        widths = {}
        for g, i in zip(self.groups, indices, strict=True):
            if not 0 <= int(i) < len(g.choices):  # a negative index would silently wrap
                raise WidthSearchError(
                    f"choice index {int(i)} is out of range for group {g.name!r} "
                    f"({len(g.choices)} widths)"
                )
            widths[g.name] = g.choices[int(i)]
        return WidthConfig(widths)

    def widths_of_indices(self, indices: np.ndarray) -> np.ndarray:
        """Choice indices (n, groups) to widths (n, groups), vectorized."""
        out = np.empty_like(indices)
        for j, g in enumerate(self.groups):
            out[:, j] = np.asarray(g.choices)[indices[:, j]]
        return out

    def summary(self) -> str:
        return "\n".join(g.details() for g in self.groups)
