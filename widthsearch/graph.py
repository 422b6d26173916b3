"""Channel-group discovery: trace a model with torch.fx and union the coupled channel dims.

Every tensor's channel axis is described by a `Layout`: which channel *spaces* it holds, in
order (a concatenation holds several), and how many entries one channel spans (after a
flatten). Spaces that an op couples are merged by union-find; the merged sets are the
channel groups. Each op type has a rule in a table (`RULES`), so supporting a new op is one
registration; an op without a rule fixes the channels it touches and says so in a warning.
"""

from __future__ import annotations

import contextlib
import math
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import WidthSearchError


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
    """An op whose MACs discovery measured (attention, matmul): its channels are fixed."""

    name: str
    macs: float


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


# ---------------------------------------------------------------------------------------------
# The rule table


Rule = Callable[["RuleContext"], Any]


@dataclass
class RuleTable:
    """Rules keyed by module type (looked up along the MRO), function object or method name."""

    modules: dict[type, Rule] = field(default_factory=dict)
    functions: dict[Any, Rule] = field(default_factory=dict)
    methods: dict[str, Rule] = field(default_factory=dict)

    def register(self, *targets: type | Callable | str) -> Callable[[Rule], Rule]:
        """Decorator: `@RULES.register(nn.Conv2d)`, `@RULES.register(torch.cat, "cat")`."""

        def decorate(rule: Rule) -> Rule:
            for target in targets:
                if isinstance(target, str):
                    self.methods[target] = rule
                elif isinstance(target, type):
                    self.modules[target] = rule
                else:
                    self.functions[target] = rule
            return rule

        return decorate

    def module_rule(self, module: nn.Module) -> Rule | None:
        for cls in type(module).__mro__:
            if cls in self.modules:
                return self.modules[cls]
        return None

    def copy(self) -> RuleTable:
        return RuleTable(dict(self.modules), dict(self.functions), dict(self.methods))


RULES = RuleTable()
"""The default rule table; register a rule here to teach discovery a new op."""

register_rule = RULES.register


class RuleContext:
    """What a rule sees of one node: its inputs' layouts and shapes, and the builder."""

    def __init__(
        self, builder: _Builder, node: fx.Node, module: nn.Module | None, result: Any
    ) -> None:
        self.builder = builder
        self.node = node
        self.module = module
        self.result = result
        self.name = str(node.target) if node.op == "call_module" else node.name

    def value(self, arg: Any) -> Any:
        """A node argument's traced value; tensors come back as (shape, layout) pairs."""
        return self.builder.resolve(arg)

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.value(a) for a in self.node.args)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: self.value(v) for k, v in self.node.kwargs.items()}

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if index < len(self.node.args):
            return self.value(self.node.args[index])
        if name in self.node.kwargs:
            return self.value(self.node.kwargs[name])
        return default

    def tensor_inputs(self) -> list[Traced]:
        return [v for v in _flatten(self.args) + _flatten(list(self.kwargs.values()))
                if isinstance(v, Traced)]

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return tuple(self.result.shape) if isinstance(self.result, torch.Tensor) else None

    # builder shortcuts used by rules
    def new_space(self, size: int, *, fixed: str | None = None) -> int:
        return self.builder.new_space(size, self.name, fixed=fixed)

    def merge(self, layouts: list[Layout], why: str) -> Layout:
        return self.builder.merge(layouts, why, self.name)

    def fix(self, layout: Layout | None, why: str) -> None:
        self.builder.fix(layout, f"{self.name}: {why}")

    def fixed_output(self, why: str, dim: int = 1) -> Layout | None:
        """The output's axis `dim` as fresh fixed channels (for ops we cannot follow)."""
        shape = self.out_shape
        if shape is None or len(shape) < 2:
            return None
        return Layout(dim, (self.new_space(shape[dim], fixed=f"{self.name}: {why}"),))


@dataclass(frozen=True)
class Traced:
    """A traced tensor: its recorded shape and its channel layout (None if not followed)."""

    shape: tuple[int, ...]
    layout: Layout | None
    constant: str | None = None  # the parameter/buffer name for get_attr tensors


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        return [x for v in values for x in _flatten(v)]
    if isinstance(values, dict):
        return [x for v in values.values() for x in _flatten(v)]
    return [values]


# ---------------------------------------------------------------------------------------------
# The builder: union-find over spaces plus what rules report

INHERENT_REASONS = ("the model input", "the model output")


class _Builder:
    def __init__(self, gm: fx.GraphModule, rules: RuleTable) -> None:
        self.gm = gm
        self.rules = rules
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: dict[int, str] = {}
        self.granularity: dict[int, int] = {}
        self.blocks: dict[int, int] = {}
        self.producers: dict[int, list[str]] = {}
        self.consumers: dict[int, list[str]] = {}
        self.members: dict[int, list[str]] = {}
        self.values: dict[fx.Node, Any] = {}
        self.module_out: dict[str, Layout] = {}
        self.bindings: dict[str, tuple[str, Layout, Layout]] = {}
        self.layers: list[tuple[str, str, Traced, Traced, int, int, int]] = []
        self.ops: list[tuple[str, list[Traced], tuple[int | None, ...]]] = []
        self.buffer_of: dict[int, int] = {}  # id(Traced) -> storage id, for tensor lifetimes
        self.buffer_ptr: list[int] = []  # storage id -> its data pointer when it was made
        self.output_buffers: tuple[int, ...] | None = None
        self.unknown: dict[str, str] = {}
        self.fixed_macs: list[tuple[str, float]] = []
        self.parameters: dict[str, tuple[int, Layout]] = {}  # name -> (axis, layout)
        self.parameter_uses: dict[str, set[fx.Node]] = {}
        self.messages: list[str] = []
        self.limited: dict[str, str] = {}  # ops a rule knows but cannot slim: name -> why
        self.cut_error = ""  # why the last split of channels into equal parts failed

    # union-find
    def new_space(self, size: int, producer: str, *, fixed: str | None = None) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.size.append(int(size))
        self.producers[sid] = [producer]
        if fixed:
            self.fixed[sid] = fixed
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        for table in (self.producers, self.consumers, self.members):
            table.setdefault(ra, []).extend(table.pop(rb, []))
        if rb in self.fixed:
            self.fixed.setdefault(ra, self.fixed.pop(rb))
        for table in (self.granularity, self.blocks):
            if rb in table:
                g = table.pop(rb)
                table[ra] = math.lcm(table.get(ra, 1), g)

    # segments: a space id, a Part of one, or a Mix of segment lists
    def leaves(self, segments: Iterable[Any]) -> list[int]:
        """The space ids a segment list refers to."""
        out: list[int] = []
        for seg in segments:
            if isinstance(seg, Mix):
                for part in seg.parts:
                    out.extend(self.leaves(part))
            else:
                out.append(seg.space if isinstance(seg, Part) else seg)
        return out

    def seg_size(self, seg: Any) -> int:
        """Channels of one segment at full width."""
        if isinstance(seg, Part):
            return self.size[self.find(seg.space)] // seg.count
        if isinstance(seg, Mix):
            return len(seg.parts) * sum(self.seg_size(s) for s in seg.parts[0])
        return self.size[self.find(seg)]

    def _pairs(self, a: tuple, b: tuple) -> list[tuple[int, int]] | None:
        """The spaces to union so two segment lists match channel by channel (None: they
        cannot)."""
        if len(a) != len(b):
            return None
        pairs: list[tuple[int, int]] = []
        for x, y in zip(a, b, strict=True):
            if isinstance(x, Mix) or isinstance(y, Mix):
                if not (isinstance(x, Mix) and isinstance(y, Mix)) or len(x.parts) != len(y.parts):
                    return None
                for px, py in zip(x.parts, y.parts, strict=True):
                    sub = self._pairs(px, py)
                    if sub is None:
                        return None
                    pairs += sub
                continue
            if isinstance(x, Part) != isinstance(y, Part):
                return None
            if isinstance(x, Part) and (x.index, x.count) != (y.index, y.count):
                return None
            sx, sy = (x.space, y.space) if isinstance(x, Part) else (x, y)
            if self.size[self.find(sx)] != self.size[self.find(sy)]:
                return None
            pairs.append((sx, sy))
        return pairs

    def merge(self, layouts: list[Layout], why: str, where: str) -> Layout:
        """Couple layouts channel by channel; layouts that do not line up are fixed."""
        first = layouts[0]
        pairs: list[tuple[int, int]] = []
        for other in layouts[1:]:
            found = None
            if other.inner == first.inner and other.by == first.by:
                found = self._pairs(first.segments, other.segments)
            if found is None:
                for lay in layouts:
                    self.fix(lay, f"{where}: {why} joins channels that do not line up")
                return first
            pairs += found
        for a, b in pairs:
            self.union(a, b)
        return first

    def split(self, segments: tuple, k: int) -> list[tuple] | None:
        """Cut a segment list into `k` lists of equal full size (a chunk along channels).

        A space cut inside becomes `Part`s of it and takes the same number of channels from
        each part. None when a cut falls unevenly inside a segment.
        """
        total = sum(self.seg_size(seg) for seg in segments)
        if k < 1 or total % k:
            self.cut_error = f"cutting {total} channels into {k} equal pieces"
            return None
        size = total // k
        parts: list[list[Any]] = [[] for _ in range(k)]
        offset = 0
        for seg in segments:
            n = self.seg_size(seg)
            first = offset // size
            if n == 0 or (offset + n - 1) // size == first:
                parts[first].append(seg)
            else:
                if offset % size or n % size:
                    self.cut_error = f"a piece of {size} channels cutting a space of {n}"
                    return None
                pieces = self._cut(seg, n // size)
                if pieces is None:
                    return None
                for j, piece in enumerate(pieces):
                    parts[first + j].extend(piece)
            offset += n
        return [tuple(p) for p in parts]

    def _cut(self, seg: Any, m: int) -> list[tuple] | None:
        """One segment cut into `m` equal pieces, each a segment list."""
        if isinstance(seg, Mix):
            cuts = [self.split(part, m) for part in seg.parts]
            if any(c is None for c in cuts):
                return None
            return [(Mix(tuple(c[j] for c in cuts)),) for j in range(m)]  # type: ignore[index]
        space, index, count = (seg.space, seg.index, seg.count) if isinstance(seg, Part) \
            else (seg, 0, 1)
        if self.size[self.find(space)] % (count * m):
            self.cut_error = (f"cutting {self.size[self.find(space)]} channels into "
                              f"{count * m} equal blocks")
            return None
        self.add_blocks(space, count * m)
        return [(Part(space, index * m + j, count * m),) for j in range(m)]

    def positional_split(self, segments: tuple, k: int) -> list[tuple] | None:
        """Cut a segment list into `k` equal pieces by position (a `chunk` of an axis whose
        blocks it cannot cut evenly, such as a concatenation that went through shuffles).

        Each piece takes 1/k of every group's width; its channels are matched to the
        consumer's weights by position instead of by the channel they were at full width.
        The model's own `chunk` halves the narrow axis the same way, so the supernet and the
        exported model compute the same thing, but a narrow piece may route a channel the
        full width passes on to the branch that transforms it; that costs accuracy, so this
        is only the fallback when no exact cut exists. None when a group's share needs
        blocks its size does not divide into.
        """
        piece: list[Any] = []
        for root, coefficient in self.width_form(segments).items():
            share = coefficient / k  # whole copies of the group, then Parts of `blocks`
            copies, rest = divmod(share.numerator, share.denominator)
            piece += [root] * copies
            if rest:
                blocks = share.denominator
                if self.size[root] % blocks:
                    self.cut_error = (f"{self.size[root]} channels do not split into the "
                                      f"{blocks} blocks a 1/{k} share by position needs")
                    return None
                self.add_blocks(root, blocks)
                piece += [Part(root, i, blocks) for i in range(rest)]
        return [tuple(piece) for _ in range(k)]

    def width_form(self, segments: Iterable[Any]) -> dict[int, Fraction]:
        """The active width of a segment list as coefficients of its spaces' widths."""
        form: dict[int, Fraction] = {}
        for seg in segments:
            if isinstance(seg, Mix):
                subs = [self.width_form(part) for part in seg.parts]
            elif isinstance(seg, Part):
                subs = [{self.find(seg.space): Fraction(1, seg.count)}]
            else:
                subs = [{self.find(seg): Fraction(1)}]
            for sub in subs:
                for r, c in sub.items():
                    form[r] = form.get(r, Fraction(0)) + c
        return form

    def same_widths(self, parts: list[tuple]) -> bool:
        """Make segment lists keep equal active widths (what a shuffle needs): true when
        they already do, or when each is one space and they can be coupled."""
        forms = [self.width_form(p) for p in parts]
        if all(f == forms[0] for f in forms):
            return True
        if all(len(f) == 1 for f in forms):
            (r0, c0), = forms[0].items()
            if all(next(iter(f.values())) == c0 and self.size[next(iter(f))] == self.size[r0]
                   for f in forms):
                for f in forms[1:]:
                    self.union(r0, next(iter(f)))
                return True
        return False

    def fix(self, layout: Layout | None, why: str, *, main: bool = False) -> None:
        """Keep a layout's channels full; the first reason is kept unless `main` names the
        construct that is the real limit (an attention's heads)."""
        if layout is None:
            return
        for s in self.leaves(layout.segments):
            r = self.find(s)
            if main and not self.fixed.get(r, "").endswith(INHERENT_REASONS):
                self.fixed[r] = why
            else:
                self.fixed.setdefault(r, why)

    def add_granularity(self, layout: Layout, granularity: int) -> None:
        for s in self.leaves(layout.segments):
            r = self.find(s)
            self.granularity[r] = math.lcm(self.granularity.get(r, 1), granularity)

    def add_blocks(self, space: int, blocks: int) -> None:
        r = self.find(space)
        self.blocks[r] = math.lcm(self.blocks.get(r, 1), blocks)

    def note(self, table: dict[int, list[str]], layout: Layout, name: str) -> None:
        for s in self.leaves(layout.segments):
            entries = table.setdefault(self.find(s), [])
            if name not in entries:
                entries.append(name)

    def note_buffers(self, inputs: list[Traced], traced: Any, result: Any) -> None:
        """Give an op's outputs storage ids: an output whose storage is an input's (a view,
        an in-place result) shares that input's id, any other gets a new one. Only the op's
        own inputs are compared, so a freed pointer reused later is no alias."""
        ids = [self.buffer_of.get(id(t)) for t in inputs]
        by_ptr = {self.buffer_ptr[i]: i for i in ids if i is not None and self.buffer_ptr[i]}
        for t, value in _paired(traced, result):
            ptr = value.untyped_storage().data_ptr() if value.numel() else 0
            bid = by_ptr.get(ptr) if ptr else None
            if bid is None:
                bid = len(self.buffer_ptr)
                self.buffer_ptr.append(ptr)
                if ptr:
                    by_ptr[ptr] = bid
            self.buffer_of[id(t)] = bid

    def resolve(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values.get(arg)
        if isinstance(arg, tuple) and hasattr(arg, "_fields"):  # a namedtuple
            return type(arg)(*(self.resolve(a) for a in arg))
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.resolve(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.resolve(v) for k, v in arg.items()}
        return arg

    def group_layout(self, layout: Layout | None, names: dict[int, str]) -> GroupLayout | None:
        if layout is None:
            return None
        return GroupLayout(self._named(layout.segments, names), layout.inner)

    def _named(self, segments: tuple, names: dict[int, str]) -> tuple:
        out: list[Any] = []
        for seg in segments:
            if isinstance(seg, Mix):
                out.append(Mix(tuple(self._named(p, names) for p in seg.parts)))
            elif isinstance(seg, Part):
                out.append(Part(names[self.find(seg.space)], seg.index, seg.count))
            else:
                out.append(names[self.find(seg)])
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# Tracing


class _Tracer(fx.Tracer):
    """Keeps every module that has a rule as one node, so rules see whole modules."""

    def __init__(self, rules: RuleTable) -> None:
        super().__init__()
        self.rules = rules

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.rules.module_rule(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, rules: RuleTable | None = None, *, training: bool = False
          ) -> fx.GraphModule:
    """torch.fx trace of `model` with every rule-covered module kept as a leaf.

    The inference path by default; `training=True` traces the training path (auxiliary
    heads such as Inception's run only there).
    """
    tracer = _Tracer(rules or RULES)
    was_training = model.training
    model.train(training)
    try:
        graph = tracer.trace(model)
    except Exception as err:
        raise WidthSearchError(
            f"torch.fx cannot trace {type(model).__name__}: {err}. widthsearch needs a "
            "forward without data-dependent Python control flow."
        ) from err
    finally:
        model.train(was_training)
    return fx.GraphModule(tracer.root, graph)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and hands every node's value to the builder's rules.

    With a FlopCounterMode active, the MACs of every op that is not a conv / linear layer
    (attention, matmul, einsum) are measured; such an op keeps its channels at full width,
    so its MACs are a constant the cost model adds.
    """

    def __init__(self, gm: fx.GraphModule, builder: _Builder, counter: Any = None) -> None:
        super().__init__(gm)
        self.builder = builder
        self.counter = counter

    def run_node(self, n: fx.Node) -> Any:
        b = self.builder
        before = self.counter.get_total_flops() if self.counter is not None else 0
        result = super().run_node(n)
        flops = self.counter.get_total_flops() - before if self.counter is not None else 0
        layers = len(b.layers)
        b.values[n] = _apply_rule(b, n, result)
        if flops and len(b.layers) == layers:  # MACs no layer record models
            name = str(n.target) if n.op == "call_module" else n.name
            b.fixed_macs.append((name, flops / 2))
            tensors = _flatten([b.resolve(n.args), b.resolve(n.kwargs), b.values[n]])
            for t in tensors:
                if isinstance(t, Traced):
                    b.fix(t.layout, f"{name}: an op whose MACs widthsearch measures, not models")
        return result


def _paired(traced: Any, value: Any) -> list[tuple[Traced, torch.Tensor]]:
    """(Traced, tensor) pairs of a node's described result and its real value."""
    if isinstance(traced, Traced) and isinstance(value, torch.Tensor):
        return [(traced, value)]
    if isinstance(traced, (list, tuple)) and isinstance(value, (list, tuple)):
        return [p for t, v in zip(traced, value, strict=False) for p in _paired(t, v)]
    return []


def _describe(value: Any, layout: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Traced(tuple(value.shape), layout if isinstance(layout, Layout) else None)
    if isinstance(value, torch.Size):
        layouts = layout if isinstance(layout, (list, tuple)) else [None] * len(value)
        return tuple(_Dim(v, lay) if isinstance(lay, Layout) else v
                     for v, lay in zip(value, layouts, strict=False))
    if isinstance(value, (list, tuple)):
        layouts = layout if isinstance(layout, (list, tuple)) else [None] * len(value)
        items = [_describe(v, lay) for v, lay in zip(value, layouts, strict=False)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(layout, Layout):
        return _Dim(value, layout)
    return value


def _apply_rule(b: _Builder, node: fx.Node, result: Any) -> Any:
    if node.op == "placeholder":
        if isinstance(result, torch.Tensor) and result.dim() >= 2:
            sid = b.new_space(result.shape[1], "input", fixed="the model input")
            traced = Traced(tuple(result.shape), Layout(1, (sid,)))
        else:
            traced = _describe(result, None)
        b.note_buffers([], traced, result)
        return traced
    if node.op == "get_attr":
        if isinstance(result, torch.Tensor):
            return Traced(tuple(result.shape), None, constant=str(node.target))
        return result
    if node.op == "output":
        returned = [t for t in _flatten(b.resolve(node.args)) if isinstance(t, Traced)]
        for t in returned:
            b.fix(t.layout, "the model output")
        if b.output_buffers is None:  # the inference graph's (recorded first)
            b.output_buffers = tuple(b.buffer_of[id(t)] for t in returned if id(t) in b.buffer_of)
        return None

    module = b.gm.get_submodule(node.target) if node.op == "call_module" else None
    ctx = RuleContext(b, node, module, result)
    if module is not None:
        rule = b.rules.module_rule(module)
        what = type(module).__name__
    elif node.op == "call_method":
        rule = b.rules.methods.get(node.target)
        what = f"Tensor.{node.target}"
    else:
        rule = b.rules.functions.get(node.target)
        what = getattr(node.target, "__name__", str(node.target))
        if rule is None and isinstance(node.target, type) and issubclass(node.target, tuple):
            rule = container_rule  # a namedtuple of outputs (InceptionOutputs)

    inputs = ctx.tensor_inputs()
    split = [t for t in inputs if t.layout is not None and t.layout.by is not None]
    if rule is None:
        if not inputs and not isinstance(result, torch.Tensor):
            return _describe(result, None)  # shape arithmetic etc.
        layout = _unknown(ctx, inputs, what)
    elif split and rule not in _SPLIT_AWARE:
        why = "channels split in two (heads or shuffle parts) used by more than a reshape"
        layout = _limited(ctx, inputs, why)
    else:
        layout = rule(ctx)
    traced = _describe(result, layout)
    outputs = [t for t in _flatten(traced) if isinstance(t, Traced)]
    b.note_buffers(inputs, traced, result)
    if outputs and (inputs or module is not None):
        tensors = inputs + outputs
        b.ops.append((ctx.name, tensors, tuple(b.buffer_of.get(id(t)) for t in tensors)))
    return traced


def _unknown(ctx: RuleContext, inputs: list[Traced], what: str) -> Layout | None:
    """No rule: fix every channel the op touches, name them, carry on."""
    touched = [t.layout for t in inputs if t.layout is not None]
    if not touched:
        return None  # computed from constants only: nothing to slim
    why = f"no rule for {what}"
    ctx.builder.unknown.setdefault(ctx.name, what)
    for lay in touched:
        ctx.fix(lay, why)
    return ctx.fixed_output(why, _output_axis(ctx, inputs))


def container_rule(ctx: RuleContext) -> tuple:
    """A tuple type built from tensors: each field keeps its tensor's layout."""
    fields = getattr(ctx.node.target, "_fields", ())
    values = list(ctx.args) + [ctx.kwargs[f] for f in fields[len(ctx.args):] if f in ctx.kwargs]
    return tuple(v.layout if isinstance(v, Traced) else None for v in values)


def _output_axis(ctx: RuleContext, inputs: list[Traced]) -> int:
    """Where an unfollowed op's output most likely keeps its channels: where an input of the
    same shape had them, else axis 1."""
    out = ctx.out_shape
    if out is not None:
        for t in inputs:
            if t.layout is not None and tuple(t.shape) == tuple(out):
                return t.layout.dim
        for t in inputs:
            if t.layout is not None and len(t.shape) == len(out) and t.layout.dim < len(out):
                return t.layout.dim
    return 1


# ---------------------------------------------------------------------------------------------
# Rules


def _channel_input(ctx: RuleContext) -> Traced:
    x = ctx.value(ctx.node.args[0])
    if not isinstance(x, Traced):
        raise WidthSearchError(f"{ctx.name}: expected a tensor input")
    return x


def _bind(ctx: RuleContext, kind: str, in_layout: Layout, out_layout: Layout) -> None:
    b = ctx.builder
    if ctx.name in b.bindings:
        _, prev_in, prev_out = b.bindings[ctx.name]
        b.merge([prev_in, in_layout], "a module called twice", ctx.name)
        b.merge([prev_out, out_layout], "a module called twice", ctx.name)
        return
    b.bindings[ctx.name] = (kind, in_layout, out_layout)


def _module_output(ctx: RuleContext, size: int, dim: int) -> Layout:
    """A module's output space; a module called twice produces the same space."""
    b = ctx.builder
    if ctx.name not in b.module_out:
        b.module_out[ctx.name] = Layout(dim, (ctx.new_space(size),))
    out = b.module_out[ctx.name]
    return Layout(dim, out.segments)


def _constant_input(ctx: RuleContext, x: Traced, dim: int) -> Layout:
    """A layer input that no width changes (a buffer, a table): fixed channels of its own."""
    return Layout(dim, (ctx.new_space(x.shape[dim], fixed=f"{ctx.name}: a constant input"),))


def _has_mix(segments: tuple) -> bool:
    return any(isinstance(seg, Mix) for seg in segments)


def _fixed_in_out(ctx: RuleContext, x: Traced, why: str, dim: int = 1) -> Layout | None:
    ctx.fix(x.layout, why)
    return ctx.fixed_output(why, dim)


def _on_axis(x: Traced, dim: int) -> Traced:
    """`x` as a layer reads it: channels on another axis are not the layer's input width."""
    if x.layout is None or x.layout.dim == dim:
        return x
    return Traced(x.shape, None, x.constant)


@register_rule(nn.Conv2d)
def conv2d_rule(ctx: RuleContext) -> Layout | None:
    conv: nn.Conv2d = ctx.module  # type: ignore[assignment]
    x = _channel_input(ctx)
    out_shape = ctx.out_shape
    assert out_shape is not None
    positions = out_shape[2] * out_shape[3]
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    b = ctx.builder
    lay = x.layout if x.layout is not None else _constant_input(ctx, x, 1)
    if lay.dim != 1 or lay.inner != 1 or lay.by is not None:
        out = _fixed_in_out(ctx, x, "convolution over an unfollowed channel axis")
    elif conv.groups == 1:
        out = _module_output(ctx, conv.out_channels, 1)
        b.note(b.consumers, lay, ctx.name)
        _bind(ctx, "conv", lay, out)
    elif conv.in_channels == conv.out_channels and (
            conv.groups == conv.in_channels or not _has_mix(lay.segments)):
        # depthwise, or grouped with equal widths: keep whole conv groups of in and out
        per_group = conv.in_channels // conv.groups
        if per_group > 1:
            b.add_granularity(lay, per_group)
        out = lay
        b.note(b.members, lay, ctx.name)
        _bind(ctx, "depthwise" if per_group == 1 else "grouped", lay, out)
    elif len(lay.segments) == 1 and not isinstance(lay.segments[0], Mix):
        # widths differ: keep every conv group and the same channels inside each
        seg = lay.segments[0]
        space, count = (seg.space, seg.count) if isinstance(seg, Part) else (seg, 1)
        b.add_blocks(space, count * conv.groups)
        out = _module_output(ctx, conv.out_channels, 1)
        b.add_blocks(out.segments[0], conv.groups)
        b.note(b.consumers, lay, ctx.name)
        _bind(ctx, "groupwise", lay, out)
    else:
        out = _fixed_in_out(ctx, x, f"grouped convolution (groups={conv.groups}) over a "
                                    "concatenation of unequal widths")
    kind = b.bindings.get(ctx.name, ("fixed-conv",))[0]
    ctx.builder.layers.append(
        (ctx.name, kind, _on_axis(x, 1), Traced(out_shape, out), positions, kernel, conv.groups)
    )
    return out


@register_rule(nn.Linear)
def linear_rule(ctx: RuleContext) -> Layout | None:
    lin: nn.Linear = ctx.module  # type: ignore[assignment]
    x = _channel_input(ctx)
    out_shape = ctx.out_shape
    assert out_shape is not None
    last = len(x.shape) - 1
    positions = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
    lay = x.layout if x.layout is not None else _constant_input(ctx, x, last)
    if lay.dim != last:
        out = _fixed_in_out(ctx, x, "linear layer over an unfollowed feature axis", dim=last)
    else:
        out = _module_output(ctx, lin.out_features, last)
        ctx.builder.note(ctx.builder.consumers, lay, ctx.name)
        _bind(ctx, "linear", lay, out)
    kind = ctx.builder.bindings.get(ctx.name, ("fixed-linear",))[0]
    ctx.builder.layers.append(
        (ctx.name, kind, _on_axis(x, last), Traced(out_shape, out), positions, 1, 1)
    )
    return out


def _norm_rule(kind: str, channel_dim_last: bool) -> Rule:
    """A norm with a weight per channel: "batchnorm", "groupnorm", "layernorm" (channels
    last) or "layernorm2d" (a LayerNorm subclass over axis 1 of an NCHW tensor)."""

    def rule(ctx: RuleContext) -> Layout | None:
        x = _channel_input(ctx)
        want = len(x.shape) - 1 if channel_dim_last else 1
        if x.layout is None or x.layout.dim != want or x.layout.inner != 1:
            return _fixed_in_out(ctx, x, f"{kind} over an unfollowed channel axis",
                                 dim=want)
        if kind == "groupnorm":
            if _has_mix(x.layout.segments):
                return _fixed_in_out(ctx, x, "group norm over shuffled channels")
            gn: nn.GroupNorm = ctx.module  # type: ignore[assignment]
            ctx.builder.add_granularity(x.layout, gn.num_channels // gn.num_groups)
        if kind.startswith("layernorm") and len(ctx.module.normalized_shape) != 1:  # type: ignore[union-attr]
            return _fixed_in_out(ctx, x, "layer norm over more than the channel axis",
                                 dim=want)
        ctx.builder.note(ctx.builder.members, x.layout, ctx.name)
        _bind(ctx, kind, x.layout, x.layout)
        return x.layout

    return rule


register_rule(nn.modules.batchnorm._BatchNorm)(_norm_rule("batchnorm", channel_dim_last=False))
register_rule(nn.GroupNorm)(_norm_rule("groupnorm", channel_dim_last=False))
register_rule(nn.LayerNorm)(_norm_rule("layernorm", channel_dim_last=True))
norm_rule = _norm_rule


def _torchvision(module: str, *names: str) -> list[Any]:
    """Objects of torchvision that rules are registered for (none if it is missing)."""
    try:
        mod = __import__(f"torchvision.{module}", fromlist=list(names))
    except ImportError:  # torchvision is a dependency, but keep discovery independent of it
        return []
    return [getattr(mod, n) for n in names if hasattr(mod, n)]


register_rule(*_torchvision("models.convnext", "LayerNorm2d"))(
    _norm_rule("layernorm2d", channel_dim_last=False))


PASSTHROUGH_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
PASSTHROUGH_FUNCTIONS: tuple[Any, ...] = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout,
    F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.interpolate, torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip,
    torch.abs, torch.neg, torch.exp, torch.sqrt, torch.square, F.pad,
)
PASSTHROUGH_METHODS: tuple[str, ...] = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip", "contiguous",
    "clone", "detach", "float", "half", "to", "type_as", "abs", "neg", "exp", "sqrt", "square",
)


@register_rule(*PASSTHROUGH_MODULES, *PASSTHROUGH_FUNCTIONS, *PASSTHROUGH_METHODS)
def passthrough_rule(ctx: RuleContext) -> Layout | None:
    """Elementwise and spatial ops: the output keeps the input's channels."""
    x = _channel_input(ctx)
    if isinstance(ctx.module, nn.PReLU) and ctx.module.num_parameters > 1:
        return _fixed_in_out(ctx, x, "PReLU with a weight per channel")
    if ctx.out_shape is not None and x.layout is not None:
        d = x.layout.dim
        if len(ctx.out_shape) != len(x.shape) or ctx.out_shape[d] != x.shape[d]:
            return _fixed_in_out(ctx, x, "changes the channel axis")
    return x.layout


def _stochastic_depth_targets() -> list[Any]:
    try:
        from torchvision.ops import stochastic_depth
        from torchvision.ops.stochastic_depth import StochasticDepth
    except ImportError:  # torchvision is a dependency, but keep discovery independent of it
        return []
    return [stochastic_depth, StochasticDepth]


register_rule(*_stochastic_depth_targets())(passthrough_rule)


BINARY_OPS: tuple[Any, ...] = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum, "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
)


@register_rule(*BINARY_OPS)
def binary_rule(ctx: RuleContext) -> Layout | None:
    """Elementwise arithmetic with broadcasting: operands with channels there are coupled."""
    out_shape = ctx.out_shape
    if out_shape is None:
        return None
    out_rank = len(out_shape)
    placed: list[tuple[int, Layout]] = []
    constants: list[Traced] = []
    for t in ctx.tensor_inputs():
        shift = out_rank - len(t.shape)
        if t.layout is None:
            constants.append(t)
        elif t.shape[t.layout.dim] > 1 or out_shape[t.layout.dim + shift] == 1:
            placed.append((t.layout.dim + shift, t.layout))
    if not placed:
        return None if not constants else ctx.fixed_output("arithmetic on constant tensors")
    dims = {d for d, _ in placed}
    layouts = [lay for _, lay in placed]
    if len(dims) > 1:
        for lay in layouts:
            ctx.fix(lay, "arithmetic across different channel axes")
        return ctx.fixed_output("arithmetic across different channel axes")
    out_dim = dims.pop()
    merged = ctx.merge(layouts, "an elementwise op")
    for c in constants:
        shift = out_rank - len(c.shape)
        axis = out_dim - shift
        if axis >= 0 and c.shape[axis] > 1 and not _bind_parameter(ctx, c, axis, merged):
            ctx.fix(merged, f"scaled per channel by the parameter {c.constant!r}")
    return Layout(out_dim, merged.segments, merged.inner)


def _bind_parameter(ctx: RuleContext, c: Traced, axis: int, layout: Layout) -> bool:
    """A parameter or buffer the features are scaled or shifted by per channel (a layer
    scale, a position embedding): the supernet slices it along `axis` with the channels."""
    b = ctx.builder
    if c.constant is None or layout.inner != 1 or layout.by is not None:
        return False
    if c.shape[axis] != sum(b.seg_size(seg) for seg in layout.segments):
        return False
    owner, _, attr = c.constant.rpartition(".")
    module = b.gm.get_submodule(owner) if owner else b.gm
    if attr not in module._parameters and attr not in module._buffers:
        return False
    if c.constant in b.parameters:
        prev_axis, prev = b.parameters[c.constant]
        if prev_axis != axis:
            return False
        b.merge([prev, Layout(axis, layout.segments)], "a parameter used twice", ctx.name)
    else:
        b.parameters[c.constant] = (axis, Layout(axis, layout.segments))
    b.parameter_uses.setdefault(c.constant, set()).add(ctx.node)
    return True


@register_rule(torch.cat, torch.concat, torch.concatenate, "cat")
def cat_rule(ctx: RuleContext) -> Layout | None:
    tensors = [t for t in _flatten(ctx.arg(0, "tensors")) if isinstance(t, Traced)]
    dim = ctx.arg(1, "dim", 0)
    rank = len(tensors[0].shape)
    dim = dim % rank
    layouts = [t.layout for t in tensors]
    followed = [lay for lay in layouts if lay is not None]
    if not followed:
        return None
    if len(followed) < len(layouts):  # constants (a class token, a padding block)
        first = followed[0]
        if all(lay.dim == dim and lay.inner == first.inner for lay in followed) and all(
                t.shape[dim] % first.inner == 0 for t in tensors):
            why = "concatenated constant channels"
            segments = tuple(
                s for t in tensors for s in (t.layout.segments if t.layout is not None else
                                             (ctx.new_space(t.shape[dim] // first.inner,
                                                            fixed=f"{ctx.name}: {why}"),)))
            return Layout(dim, segments, first.inner)
        why = "concatenated with a constant tensor"
        for lay in followed:
            ctx.fix(lay, why)
        if all(lay.dim == first.dim != dim for lay in followed):
            return ctx.merge(followed, why)
        return ctx.fixed_output(why, first.dim)
    lays: list[Layout] = layouts  # type: ignore[assignment]
    if all(lay.dim == dim and lay.inner == lays[0].inner for lay in lays):
        segments = tuple(s for lay in lays for s in lay.segments)
        return Layout(dim, segments, lays[0].inner)
    if all(lay.dim == lays[0].dim != dim for lay in lays):
        return ctx.merge(lays, "a concatenation along a non-channel axis")
    for lay in lays:
        ctx.fix(lay, "a concatenation that mixes channel axes")
    return ctx.fixed_output("a concatenation that mixes channel axes")


@register_rule(torch.flatten, nn.Flatten, "flatten", "view", "reshape", torch.reshape,
               "view_as", "reshape_as", torch.unflatten, "unflatten", nn.Unflatten,
               torch.squeeze, "squeeze", torch.unsqueeze, "unsqueeze")
def reshape_rule(ctx: RuleContext) -> Layout | None:
    """Reshapes that keep each channel's entries together (merging or splitting the other
    axes, flattening what follows into the channel axis, or unflattening it again), and
    the two reshapes of a channel shuffle: (C) -> (g, C/g), then, after a transpose,
    (C/g, g) -> (C), which interleaves the g parts."""
    x = _channel_input(ctx)
    out = ctx.out_shape
    if x.layout is None or out is None:
        return None
    res = _reshape_layout(ctx, x, tuple(out))
    _tie_sizes(ctx, res)
    return res


def _reshape_layout(ctx: RuleContext, x: Traced, out: tuple[int, ...]) -> Layout | None:
    lay, shape = x.layout, tuple(x.shape)
    assert lay is not None
    if out == shape:
        return lay
    if lay.by is not None:
        return _unsplit(ctx, x, out)
    d = lay.dim
    before = math.prod(shape[:d])
    channels = shape[d] // lay.inner
    kept = [k for k in range(1 if d > 0 else 0, len(out))  # axis 0 stays the batch
            if math.prod(out[:k]) == before and out[k] > 0 and out[k] % channels == 0]
    if kept:  # size-1 axes make several fit: prefer the same width, then the nearest axis
        k = min(kept, key=lambda k: (out[k] != shape[d], abs(k - d)))
        return Layout(k, lay.segments, out[k] // channels)
    for k in range(len(out) - 1):  # the channels split into (parts, channels per part)
        if math.prod(out[:k]) == before and lay.inner == 1 and out[k] * out[k + 1] == shape[d]:
            parts = ctx.builder.split(lay.segments, out[k])
            if parts is not None:
                return Layout(k + 1, (Mix(tuple(parts)),), 1, by=k)
    return _fixed_in_out(ctx, x, "a reshape that splits channels or merges them with another "
                                 "axis", dim=min(d, len(out) - 1))


def _unsplit(ctx: RuleContext, x: Traced, out: tuple[int, ...]) -> Layout | None:
    """Merge the (parts, channels) axes of a split channel axis back into one."""
    lay, shape = x.layout, tuple(x.shape)
    assert lay is not None and lay.by is not None
    lo, hi = sorted((lay.dim, lay.by))
    parts = lay.segments[0].parts
    if hi == lo + 1 and out == shape[:lo] + (shape[lo] * shape[hi],) + shape[hi + 1:]:
        if lay.by == lo:  # (parts, channels): the parts one after the other again
            return Layout(lo, tuple(seg for part in parts for seg in part))
        if ctx.builder.same_widths(list(parts)):  # (channels, parts): interleaved
            return Layout(lo, (Mix(parts),))
        why = "a channel shuffle of parts whose widths are not tied"
    else:
        why = "a reshape of split channels other than merging them back"
    return _fixed_in_out(ctx, x, why, dim=min(lo, len(out) - 1))


@register_rule(torch.permute, "permute")
def permute_rule(ctx: RuleContext) -> Layout | None:
    x = _channel_input(ctx)
    if x.layout is None:
        return None
    dims = [a for a in _flatten(ctx.args[1:]) if isinstance(a, int)]
    dims = [a % len(x.shape) for a in dims]
    by = None if x.layout.by is None else dims.index(x.layout.by)
    return Layout(dims.index(x.layout.dim), x.layout.segments, x.layout.inner, by)


@register_rule(torch.transpose, "transpose", "swapaxes", torch.swapaxes)
def transpose_rule(ctx: RuleContext) -> Layout | None:
    x = _channel_input(ctx)
    if x.layout is None:
        return None
    rank = len(x.shape)
    a, b = ctx.arg(1, "dim0") % rank, ctx.arg(2, "dim1") % rank

    def moved(d: int) -> int:
        return b if d == a else a if d == b else d

    by = None if x.layout.by is None else moved(x.layout.by)
    return Layout(moved(x.layout.dim), x.layout.segments, x.layout.inner, by)


@register_rule("expand", "expand_as")
def expand_rule(ctx: RuleContext) -> Layout | None:
    """Broadcasting copies: the channel axis keeps its channels (new axes come first)."""
    x = _channel_input(ctx)
    out = ctx.out_shape
    if x.layout is None or out is None:
        return None
    shift = len(out) - len(x.shape)
    d = x.layout.dim + shift
    if out[d] != x.shape[x.layout.dim]:
        return _fixed_in_out(ctx, x, "expands the channel axis", dim=d)
    by = None if x.layout.by is None else x.layout.by + shift
    return Layout(d, x.layout.segments, x.layout.inner, by)


@register_rule(torch.chunk, "chunk", torch.split, "split", torch.tensor_split, "tensor_split",
               torch.unbind, "unbind")
def split_rule(ctx: RuleContext) -> tuple[Layout | None, ...] | None:
    """Pieces along another axis keep the layout; pieces along the channel axis are the
    spaces they cover (a space cut inside becomes equal `Part`s of it). A `chunk` or a
    `tensor_split` into n sections with no exact cut that keeps its pieces at equal widths
    (deep in a ShuffleNetV2 stage) takes each group's share by position instead."""
    x = _channel_input(ctx)
    pieces = list(ctx.result) if isinstance(ctx.result, (list, tuple)) else []
    if x.layout is None or not pieces:
        return None
    name = getattr(ctx.node.target, "__name__", ctx.node.target)
    dim = ctx.arg(1 if name == "unbind" else 2, "dim", 0) % len(x.shape)
    lay = x.layout
    if name == "unbind":
        if dim == lay.dim:
            return _fixed_pieces(ctx, x, pieces, "unbinds the channel axis")
        shift = 1 if dim < lay.dim else 0
        return tuple(Layout(lay.dim - shift, lay.segments, lay.inner) for _ in pieces)
    if dim != lay.dim:
        return tuple(lay for _ in pieces)
    sizes = [p.shape[dim] for p in pieces]
    b = ctx.builder
    b.cut_error = ""
    cut = _exact_or_positional_cut(b, lay, sizes, by_position=_pieces_follow_width(ctx, name))
    if cut is None:
        why = f"a split of the channel axis into {len(sizes)} pieces that cuts a space unevenly"
        if b.cut_error:
            why += f" ({b.cut_error})"
        return _fixed_pieces(ctx, x, pieces, why)
    return tuple(Layout(dim, segs, lay.inner) for segs in cut)


def _pieces_follow_width(ctx: RuleContext, name: str) -> bool:
    """True when the op cuts any width into the same number of equal pieces (`chunk`,
    `tensor_split` into n sections), not into pieces of sizes written in the model."""
    if name == "chunk":
        return True
    sections = ctx.arg(1, "sections")
    return name == "tensor_split" and isinstance(sections, int) and not isinstance(sections, bool)


def _exact_or_positional_cut(b: _Builder, lay: Layout, sizes: list[int], *, by_position: bool
                             ) -> list[tuple] | None:
    """The exact cut (the pieces keep their channels); when none exists and the op cuts
    any width into equal pieces, the cut by position (`_Builder.positional_split`).

    An op that cuts any width into equal pieces also needs the pieces to keep equal widths
    at every config: an exact cut whose pieces cannot be tied to one width (a concatenation
    of two groups), or that leaves a group one channel per block (no narrower width), is
    no exact cut for it.
    """
    before = dict(b.blocks)
    exact = _cut_segments(b, lay, sizes)
    equal = by_position and lay.inner == 1 and len(set(sizes)) == 1
    if exact is not None and (not equal or (not _stuck(b, lay, before)
                                            and b.same_widths(exact))):
        return exact
    error = b.cut_error or "its pieces would not keep equal widths"
    b.blocks = before  # a failed cut leaves no block constraints behind
    positional = b.positional_split(lay.segments, len(sizes)) if equal else None
    if positional is None:
        b.blocks, b.cut_error = before, error
    return positional


def _stuck(b: _Builder, lay: Layout, before: dict[int, int]) -> bool:
    """The cut left a group of the layout with as many equal blocks as channels."""
    roots = {b.find(s) for s in b.leaves(lay.segments)}
    return any(before.get(r, 1) < b.blocks.get(r, 1) >= b.size[r] > 1 for r in roots)


def _cut_segments(b: _Builder, lay: Layout, sizes: list[int]) -> list[tuple] | None:
    """The segment lists of consecutive pieces of `sizes` entries, or None."""
    if any(s % lay.inner for s in sizes):
        return None
    counts = [s // lay.inner for s in sizes]
    if len(set(counts)) == 1:
        return b.split(lay.segments, len(counts))
    out: list[tuple] = []
    segs = list(lay.segments)
    for n in counts:  # unequal pieces: each must end where a segment ends
        piece: list[Any] = []
        while n > 0 and segs:
            n -= b.seg_size(segs[0])
            piece.append(segs.pop(0))
        if n != 0:
            return None
        out.append(tuple(piece))
    return out


def _fixed_pieces(ctx: RuleContext, x: Traced, pieces: list[Any], why: str) -> tuple:
    ctx.fix(x.layout, why)
    d = x.layout.dim if x.layout is not None else 1
    out: list[Layout | None] = []
    for p in pieces:
        if isinstance(p, torch.Tensor) and p.dim() > d:
            out.append(Layout(d, (ctx.new_space(p.shape[d], fixed=f"{ctx.name}: {why}"),)))
        else:
            out.append(None)
    return tuple(out)


@register_rule(torch.mean, torch.sum, torch.amax, "mean", "sum", "amax")
def reduce_rule(ctx: RuleContext) -> Layout | None:
    x = _channel_input(ctx)
    if x.layout is None:
        return None
    rank = len(x.shape)
    dims = ctx.arg(1, "dim")
    keepdim = bool(ctx.arg(2, "keepdim", False))
    if dims is None:
        return _fixed_in_out(ctx, x, "a reduction over every axis")
    dims = {a % rank for a in _flatten([dims])}
    d = x.layout.dim
    if d in dims:
        return _fixed_in_out(ctx, x, "a reduction over the channel axis")
    new_d = d if keepdim else d - sum(1 for a in dims if a < d)
    return Layout(new_d, x.layout.segments, x.layout.inner)


@register_rule(operator.getitem)
def getitem_rule(ctx: RuleContext) -> Any:
    source = ctx.value(ctx.node.args[0])
    index = ctx.value(ctx.node.args[1])
    if not isinstance(source, Traced):
        item = source[index] if isinstance(source, (list, tuple)) else None
        return item.layout if isinstance(item, (Traced, _Dim)) else None
    if source.layout is None:
        return None
    return _index_layout(ctx, source, index)


def _index_layout(ctx: RuleContext, x: Traced, index: Any) -> Layout | None:
    """Basic tensor indexing: slices keep axes, ints drop them, None adds one."""
    items = list(index) if isinstance(index, tuple) else [index]
    assert x.layout is not None
    if any(i is Ellipsis for i in items):
        at = items.index(Ellipsis)
        fill = len(x.shape) - (len(items) - 1 - sum(1 for i in items if i is None))
        items = items[:at] + [slice(None)] * fill + items[at + 1:]
    axis, new_axis, d = 0, 0, x.layout.dim
    for item in items:
        if item is None:
            new_axis += 1
            continue
        if axis == d:
            if item != slice(None):
                return _fixed_in_out(ctx, x, "indexing the channel axis")
            return Layout(new_axis, x.layout.segments, x.layout.inner)
        if isinstance(item, slice):
            new_axis += 1
        elif not isinstance(item, int):
            return _fixed_in_out(ctx, x, "advanced indexing")
        axis += 1
    return Layout(new_axis + (d - axis), x.layout.segments, x.layout.inner)


class _Dim(int):
    """A size read off a tensor's channel axis (`x.shape[1]`, `x.size(1)`): a reshape that
    uses it takes that axis' width, whatever the width is."""

    layout: Layout

    def __new__(cls, value: int, layout: Layout) -> _Dim:
        obj = super().__new__(cls, value)
        obj.layout = layout
        return obj


@register_rule("size", "dim", "numel", getattr)
def shape_query_rule(ctx: RuleContext) -> Any:
    """Shape queries produce Python values; a size of a channel axis remembers it."""
    x = ctx.value(ctx.node.args[0])
    target = ctx.node.target
    if not isinstance(x, Traced) or x.layout is None or x.layout.by is not None:
        return None
    if target == "size" or (target is getattr and ctx.node.args[1] == "shape"):
        axis = ctx.arg(1, "dim") if target == "size" else None
        if axis is None:
            return tuple(x.layout if i == x.layout.dim else None for i in range(len(x.shape)))
        return x.layout if axis % len(x.shape) == x.layout.dim else None
    return None


def _tie_sizes(ctx: RuleContext, res: Layout | None) -> None:
    """A view / reshape to sizes read off channel axes: those widths size its output."""
    if ctx.node.target not in ("view", "reshape", torch.reshape):
        return
    sizes = [a for a in _flatten(list(ctx.args[1:]) + list(ctx.kwargs.values()))
             if isinstance(a, int)]
    out = ctx.out_shape
    if out is None or len(sizes) != len(out):
        return
    for k, size in enumerate(sizes):
        if not isinstance(size, _Dim):
            continue
        src = size.layout
        if (res is not None and res.dim == k and res.by is None and res.inner == 1
                and src.inner == 1 and ctx.builder.same_widths([src.segments, res.segments])):
            continue
        why = "a reshape sized by this channel width"
        ctx.fix(src, why)
        ctx.fix(res, why)


MATMUL_OPS: tuple[Any, ...] = (
    torch.matmul, torch.bmm, torch.mm, torch.einsum, torch.baddbmm, torch.addmm,
    operator.matmul, F.scaled_dot_product_attention, F.linear, "matmul", "bmm", "mm",
)


@register_rule(*MATMUL_OPS)
def matmul_rule(ctx: RuleContext) -> Layout | None:
    """Products of activations (attention): their channels stay at full width, named in the
    discovery warning (their MACs are measured, not modelled)."""
    inputs = ctx.tensor_inputs()
    touched = [t for t in inputs if t.layout is not None]
    if not touched:
        return None
    why = "a product of activations (attention) over these channels"
    return _limited(ctx, inputs, why)


def _limited(ctx: RuleContext, inputs: list[Traced], why: str) -> Layout | None:
    """An op a rule knows but cannot slim: fix its channels and name it in the warning."""
    ctx.builder.limited.setdefault(ctx.name, why)
    for t in inputs:
        ctx.builder.fix(t.layout, f"{ctx.name}: {why}", main=True)
    return ctx.fixed_output(why, _output_axis(ctx, inputs))


@register_rule(nn.MultiheadAttention)
def multihead_attention_rule(ctx: RuleContext) -> tuple[Layout | None, None]:
    """nn.MultiheadAttention ties its heads to the embedding width: both stay full."""
    inputs = ctx.tensor_inputs()
    why = "nn.MultiheadAttention ties its heads to the embedding width"
    ctx.builder.limited.setdefault(ctx.name, why)
    for t in inputs:
        ctx.builder.fix(t.layout, f"{ctx.name}: {why}", main=True)
    query = ctx.value(ctx.node.args[0]) if ctx.node.args else ctx.kwargs.get("query")
    out = ctx.result[0] if isinstance(ctx.result, (tuple, list)) else ctx.result
    if isinstance(query, Traced) and query.layout is not None \
            and tuple(query.shape) == tuple(out.shape):
        return query.layout, None
    last = out.dim() - 1
    return Layout(last, (ctx.new_space(out.shape[last], fixed=f"{ctx.name}: {why}"),)), None


@register_rule(*_torchvision("models.swin_transformer", "shifted_window_attention"))
def window_attention_rule(ctx: RuleContext) -> Layout | None:
    """Swin's window attention splits its input width into heads: it stays full."""
    x = _channel_input(ctx)
    why = "Swin window attention splits the embedding width into heads"
    ctx.builder.limited.setdefault(ctx.name, why)
    ctx.builder.fix(x.layout, f"{ctx.name}: {why}", main=True)
    return x.layout


@register_rule(*_torchvision("models.swin_transformer", "_get_relative_position_bias"))
def position_bias_rule(ctx: RuleContext) -> None:
    """A relative position bias per attention head (a constant of the heads)."""
    for t in ctx.tensor_inputs():
        ctx.fix(t.layout, "a relative position bias per attention head")
    return None


@register_rule(*_torchvision("models.swin_transformer", "_patch_merging_pad"))
def patch_merging_rule(ctx: RuleContext) -> Layout | None:
    """Swin's patch merging: the four 2x2 neighbours concatenated along the channels."""
    x = _channel_input(ctx)
    out = ctx.out_shape
    if x.layout is None or out is None:
        return None
    d = x.layout.dim
    if d == len(x.shape) - 1 and len(out) == len(x.shape) and out[d] == 4 * x.shape[d]:
        return Layout(d, x.layout.segments * 4, x.layout.inner)
    return _fixed_in_out(ctx, x, "a patch merging over another axis", dim=d)


@register_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, nn.Softmax,
               nn.LogSoftmax, "softmax", "log_softmax")
def softmax_rule(ctx: RuleContext) -> Layout | None:
    """Softmax over another axis keeps the channels; over the channel axis it couples them."""
    x = _channel_input(ctx)
    if x.layout is None:
        return None
    dim = ctx.module.dim if isinstance(ctx.module, (nn.Softmax, nn.LogSoftmax)) \
        else ctx.arg(1, "dim")
    if dim is None or dim % len(x.shape) == x.layout.dim:
        return _fixed_in_out(ctx, x, "a softmax over the channel axis", dim=x.layout.dim)
    return x.layout


_SPLIT_AWARE: set[Any] = {reshape_rule, permute_rule, transpose_rule, passthrough_rule,
                          expand_rule, shape_query_rule}
"""Rules that follow a channel axis split in two; any other op fixes such channels."""


# ---------------------------------------------------------------------------------------------
# Discovery


def discover(
    model: nn.Module, example_input: torch.Tensor | tuple, rules: RuleTable | None = None
) -> ChannelGraph:
    """Trace `model` on `example_input` and find its channel groups.

    Constructs without a rule fix the channels they touch and are named in one warning.
    The inference graph gives the costs; when the training graph calls more (auxiliary
    heads), it is recorded too, so the modules only training runs are sliced as well.
    """
    from torch.utils.flop_counter import FlopCounterMode

    gm = trace(model, rules)
    builder = _Builder(gm, rules or RULES)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counted_attention(), FlopCounterMode(display=False) as counter:
            _Recorder(gm, builder, counter).run(*args)
    except WidthSearchError:
        raise
    except Exception as err:
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise WidthSearchError(
            f"the example input of shape {shapes} does not run through "
            f"{type(model).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    train_gm = _training_graph(model, rules, gm)
    if train_gm is not None:
        _record_training_graph(builder, train_gm, args, model)
    return _finish(builder, model)


@contextlib.contextmanager
def counted_attention() -> Iterator[None]:
    """Run nn.MultiheadAttention on its unfused path, whose MACs FlopCounterMode sees (its
    fused inference kernel is invisible to it), so measured MACs include attention."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _training_graph(model: nn.Module, rules: RuleTable | None, eval_gm: fx.GraphModule
                    ) -> fx.GraphModule | None:
    """The training-mode graph if it differs from the inference one (auxiliary heads)."""
    try:
        gm = trace(model, rules, training=True)
    except WidthSearchError:
        return None

    def signature(g: fx.GraphModule) -> list[tuple[str, str]]:
        return [(n.op, str(n.target)) for n in g.graph.nodes]

    return None if signature(gm) == signature(eval_gm) else gm


def _record_training_graph(b: _Builder, gm: fx.GraphModule, args: tuple, model: nn.Module
                           ) -> None:
    """Couple channels along the training-only path too; costs stay the inference ones."""
    kept = len(b.layers), len(b.ops), len(b.fixed_macs)
    eval_gm, b.gm = b.gm, gm
    was_training = model.training
    model.eval()  # the training graph's control flow, the modules' inference arithmetic
    try:
        with torch.no_grad():
            _Recorder(gm, b).run(*args)
    except WidthSearchError:
        raise
    except Exception as err:
        msg = (f"the training-mode graph of {type(model).__name__} (auxiliary heads) does not "
               f"run at this example input ({err}); the modules only training uses are not "
               "sliced, so train the supernet in eval-mode graphs or use a larger input")
        b.messages.append(msg)
        warnings.warn(msg, stacklevel=4)
    finally:
        model.train(was_training)
        b.gm = eval_gm
        del b.layers[kept[0]:], b.ops[kept[1]:], b.fixed_macs[kept[2]:]


def _finish(b: _Builder, model: nn.Module) -> ChannelGraph:
    for pname, uses in b.parameter_uses.items():  # slice a parameter only if every use can
        users = {u for node in b.values if node.op == "get_attr" and node.target == pname
                 for u in node.users}
        if not users <= uses:
            axis, layout = b.parameters.pop(pname)
            b.fix(layout, f"the parameter {pname!r} is also used where it cannot be sliced")
    roots = sorted({b.find(s) for s in range(len(b.parent))})
    names: dict[int, str] = {}
    taken: set[str] = set()
    for r in roots:
        base = next((p for p in b.producers.get(r, []) if p), f"group{r}")
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}#{k}"
        taken.add(name)
        names[r] = name
    groups = [
        GroupInfo(
            name=names[r],
            size=b.size[r],
            producers=tuple(p for p in b.producers.get(r, []) if p != "input"),
            consumers=tuple(b.consumers.get(r, [])),
            members=tuple(b.members.get(r, [])),
            fixed=b.fixed.get(r),
            granularity=b.granularity.get(r, 1),
            blocks=b.blocks.get(r, 1),
        )
        for r in roots
    ]
    used = {g.name for g in groups}

    def traced(t: Traced) -> TensorInfo:
        return TensorInfo(t.shape, b.group_layout(t.layout, names))

    bindings = {}
    for name, (kind, lin, lout) in b.bindings.items():
        gin, gout = b.group_layout(lin, names), b.group_layout(lout, names)
        assert gin is not None and gout is not None
        bindings[name] = Binding(name, kind, gin, gout)
    layers = [
        LayerRecord(name, kind, traced(x), traced(y), positions, kernel, groups_)
        for name, kind, x, y, positions, kernel, groups_ in b.layers
    ]
    ops = [OpRecord(name, tuple(traced(t) for t in tensors), buffers)
           for name, tensors, buffers in b.ops]
    parameters = {}
    for pname, (axis, layout) in b.parameters.items():
        glayout = b.group_layout(layout, names)
        assert glayout is not None
        parameters[pname] = ParamBinding(pname, axis, glayout)
    fixed_macs = [MacRecord(name, macs) for name, macs in b.fixed_macs]
    msgs = list(b.messages)
    if b.limited:
        by_reason: dict[str, list[str]] = {}
        for op, why in b.limited.items():
            by_reason.setdefault(why, []).append(op)
        listed = "; ".join(
            f"{why}: {', '.join(ops[:3])}" + (f" and {len(ops) - 3} more" if len(ops) > 3 else "")
            for why, ops in by_reason.items())
        msgs.append(f"widthsearch keeps the channels of these ops at full width ({listed})")
        warnings.warn(msgs[-1], stacklevel=3)
    if b.unknown:
        fixed_groups = sorted({
            names[b.find(s)] for s, why in b.fixed.items()
            if any(op in why for op in b.unknown)
        } & used)
        listed = ", ".join(f"{n} ({w})" for n, w in b.unknown.items())
        msgs.append(
            f"widthsearch has no channel rule for: {listed}; the channels they touch stay at "
            f"full width (groups: {', '.join(fixed_groups) or 'none'}). Register a rule with "
            "widthsearch.graph.register_rule to slim them."
        )
        warnings.warn(msgs[-1], stacklevel=3)
    params_total = sum(p.numel() for p in model.parameters())
    return ChannelGraph(groups, bindings, layers, ops, msgs, params_total, parameters,
                        fixed_macs, b.output_buffers or ())


def describe_groups(groups: Iterable[GroupInfo]) -> str:
    return "\n".join(f"{g.name}: {g.size}" + (f" (fixed: {g.fixed})" if g.fixed else "")
                     for g in groups)
