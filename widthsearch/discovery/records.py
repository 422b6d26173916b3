"""The records discovery produces: channel layouts, group descriptions and what the cost
model and the supernet read.

A `Layout` names the channel spaces along one tensor's channel axis while tracing; once the
spaces are merged into groups, a `GroupLayout` names the groups instead. `ChannelGraph` is the
result of discovery: the groups, the modules to slice, and the layer, op and parameter records
the cost model needs. This module holds plain data only, so every other part may import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Part:
    """Block `index` of `count` equal blocks of one channel space (a chunk or split of it).

    A space cut into parts takes the same number of channels from each of its blocks, so
    every part keeps its share of the width. `space` is a space id in a `Layout` and a group
    name in a `GroupLayout`.
    """

    space: Any
    index: int
    count: int


@dataclass(frozen=True)
class Mix:
    """Segment lists of equal width interleaved entry by entry (a channel shuffle).

    Entry i * len(parts) + j of the mix is entry i of parts[j]. In a `Layout` with `by` set
    the parts are not interleaved yet: axis `by` picks the part that lies along `dim`.
    """

    parts: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Layout:
    """The channel axis of one tensor: `dim`, the spaces along it, entries per channel.

    A segment is a space id, a `Part` of a space or a `Mix` of segment lists. `by` is set
    only between the two reshapes of a channel shuffle: the channels were split into
    (parts, channels) and axis `by` indexes the parts of the single `Mix` segment.
    """

    dim: int
    segments: tuple[Any, ...]
    inner: int = 1
    by: int | None = None


@dataclass(frozen=True)
class GroupLayout:
    """A Layout resolved to group names, as the supernet and cost model use it.

    Segments are group names, `Part`s and `Mix`es of group names.
    """

    segments: tuple[Any, ...]
    inner: int = 1


@dataclass(frozen=True)
class TensorInfo:
    """What the trace recorded of a tensor: its shape (batch first) and its layout."""

    shape: tuple[int, ...]
    layout: GroupLayout | None

    @property
    def per_sample(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1


@dataclass(frozen=True)
class Binding:
    """A module whose tensors the supernet slices: its kind and its in/out channel layouts."""

    name: str
    kind: str
    in_layout: GroupLayout
    out_layout: GroupLayout


@dataclass(frozen=True)
class LayerRecord:
    """A conv or linear call, for the cost model: MACs = positions * kernel * out * in/groups.

    kind: "conv" | "depthwise" | "linear" (sliced) or "fixed-conv" | "fixed-linear".
    """

    name: str
    kind: str
    inputs: TensorInfo
    output: TensorInfo
    positions: int
    kernel: int
    groups: int


@dataclass(frozen=True)
class OpRecord:
    """Any op on tensors, for peak activation memory: the tensors it reads and writes."""

    name: str
    tensors: tuple[TensorInfo, ...]
    # per tensor, the storage it lives in (views and in-place results share their base's;
    # None for constants): the cost model derives tensor lifetimes from these
    buffers: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class GroupInfo:
    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    members: tuple[str, ...]
    fixed: str | None
    granularity: int
    blocks: int = 1  # widths take the same number of channels from each of `blocks` blocks


@dataclass(frozen=True)
class ParamBinding:
    """A parameter the model multiplies or adds per channel (a layer scale): sliced on `axis`."""

    name: str
    axis: int
    layout: GroupLayout


@dataclass(frozen=True)
class MacRecord:
    """An op whose MACs discovery measured at full width. Without a layout (attention,
    matmul) its channels are fixed and the MACs a constant; with one (an ECA gate's 1-d conv
    sliding along the channels) the MACs are linear in that layout's active entries."""

    name: str
    macs: float
    layout: GroupLayout | None = None


@dataclass
class ChannelGraph:
    """The result of discovery: groups, module bindings and what the cost model needs."""

    groups: list[GroupInfo]
    bindings: dict[str, Binding]
    layers: list[LayerRecord]
    ops: list[OpRecord]
    warnings: list[str]
    params_total: int
    parameters: dict[str, ParamBinding] = field(default_factory=dict)
    fixed_macs: list[MacRecord] = field(default_factory=list)
    output_buffers: tuple[int, ...] = ()  # the storages the model returns (alive to the end)


def describe_groups(groups: Iterable[GroupInfo]) -> str:
    return "\n".join(f"{g.name}: {g.size}" + (f" (fixed: {g.fixed})" if g.fixed else "")
                     for g in groups)
