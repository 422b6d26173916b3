"""Channel-group discovery: trace a model with torch.fx and union the coupled channel dims.

Every tensor's channel axis is described by a `Layout`: which channel *spaces* it holds, in
order (a concatenation holds several), and how many entries one channel spans (after a
flatten). Spaces that an op couples are merged by union-find; the merged sets are the
channel groups. Each op type has a rule in a table (`RULES`), so supporting a new op is one
registration; an op without a rule fixes the channels it touches and says so in a warning.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import WidthSearchError


@dataclass(frozen=True)
class Layout:
    """The channel axis of one tensor: `dim`, the spaces along it, entries per channel."""

    dim: int
    segments: tuple[int, ...]
    inner: int = 1


@dataclass(frozen=True)
class GroupLayout:
    """A Layout resolved to group names, as the supernet and cost model use it."""

    segments: tuple[str, ...]
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


@dataclass(frozen=True)
class GroupInfo:
    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    members: tuple[str, ...]
    fixed: str | None
    granularity: int


@dataclass
class ChannelGraph:
    """The result of discovery: groups, module bindings and what the cost model needs."""

    groups: list[GroupInfo]
    bindings: dict[str, Binding]
    layers: list[LayerRecord]
    ops: list[OpRecord]
    warnings: list[str]
    params_total: int


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


class _Builder:
    def __init__(self, gm: fx.GraphModule, rules: RuleTable) -> None:
        self.gm = gm
        self.rules = rules
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: dict[int, str] = {}
        self.granularity: dict[int, int] = {}
        self.producers: dict[int, list[str]] = {}
        self.consumers: dict[int, list[str]] = {}
        self.members: dict[int, list[str]] = {}
        self.values: dict[fx.Node, Any] = {}
        self.module_out: dict[str, Layout] = {}
        self.bindings: dict[str, tuple[str, Layout, Layout]] = {}
        self.layers: list[tuple[str, str, Traced, Traced, int, int, int]] = []
        self.ops: list[tuple[str, list[Traced]]] = []
        self.unknown: dict[str, str] = {}

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
        if rb in self.granularity:
            g = self.granularity.pop(rb)
            self.granularity[ra] = math.lcm(self.granularity.get(ra, 1), g)

    def merge(self, layouts: list[Layout], why: str, where: str) -> Layout:
        """Couple layouts channel by channel; layouts that do not line up are fixed."""
        first = layouts[0]
        sizes = [self.size[self.find(s)] for s in first.segments]
        for other in layouts[1:]:
            other_sizes = [self.size[self.find(s)] for s in other.segments]
            if other_sizes != sizes or other.inner != first.inner:
                for lay in layouts:
                    self.fix(lay, f"{where}: {why} joins channels that do not line up")
                return first
        for other in layouts[1:]:
            for a, b in zip(first.segments, other.segments, strict=True):
                self.union(a, b)
        return first

    def fix(self, layout: Layout | None, why: str) -> None:
        if layout is None:
            return
        for s in layout.segments:
            self.fixed.setdefault(self.find(s), why)

    def add_granularity(self, layout: Layout, granularity: int) -> None:
        for s in layout.segments:
            r = self.find(s)
            self.granularity[r] = math.lcm(self.granularity.get(r, 1), granularity)

    def note(self, table: dict[int, list[str]], layout: Layout, name: str) -> None:
        for s in layout.segments:
            entries = table.setdefault(self.find(s), [])
            if name not in entries:
                entries.append(name)

    def resolve(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.resolve(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.resolve(v) for k, v in arg.items()}
        return arg

    def group_layout(self, layout: Layout | None, names: dict[int, str]) -> GroupLayout | None:
        if layout is None:
            return None
        return GroupLayout(tuple(names[self.find(s)] for s in layout.segments), layout.inner)


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


def trace(model: nn.Module, rules: RuleTable | None = None) -> fx.GraphModule:
    """torch.fx trace of `model` with every rule-covered module kept as a leaf."""
    tracer = _Tracer(rules or RULES)
    was_training = model.training
    model.eval()  # trace the inference path (no aux heads, no stochastic branches)
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
    """Runs the traced graph once and hands every node's value to the builder's rules."""

    def __init__(self, gm: fx.GraphModule, builder: _Builder) -> None:
        super().__init__(gm)
        self.builder = builder

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.builder.values[n] = _apply_rule(self.builder, n, result)
        return result


def _describe(value: Any, layout: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Traced(tuple(value.shape), layout if isinstance(layout, Layout) else None)
    if isinstance(value, (list, tuple)):
        layouts = layout if isinstance(layout, (list, tuple)) else [None] * len(value)
        return type(value)(_describe(v, lay) for v, lay in zip(value, layouts, strict=False))
    if isinstance(value, torch.Size):
        return tuple(value)
    return value


def _apply_rule(b: _Builder, node: fx.Node, result: Any) -> Any:
    if node.op == "placeholder":
        if isinstance(result, torch.Tensor) and result.dim() >= 2:
            sid = b.new_space(result.shape[1], "input", fixed="the model input")
            return Traced(tuple(result.shape), Layout(1, (sid,)))
        return _describe(result, None)
    if node.op == "get_attr":
        if isinstance(result, torch.Tensor):
            return Traced(tuple(result.shape), None, constant=str(node.target))
        return result
    if node.op == "output":
        for t in _flatten(b.resolve(node.args)):
            if isinstance(t, Traced):
                b.fix(t.layout, "the model output")
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

    inputs = ctx.tensor_inputs()
    if rule is None:
        if not inputs and not isinstance(result, torch.Tensor):
            return _describe(result, None)  # shape arithmetic etc.
        layout = _unknown(ctx, inputs, what)
    else:
        layout = rule(ctx)
    traced = _describe(result, layout)
    outputs = [t for t in _flatten(traced) if isinstance(t, Traced)]
    if outputs and (inputs or module is not None):
        b.ops.append((ctx.name, inputs + outputs))
    return traced


def _unknown(ctx: RuleContext, inputs: list[Traced], what: str) -> Layout | None:
    """No rule: fix every channel the op touches, name them, carry on."""
    touched = [t.layout for t in inputs if t.layout is not None]
    if not touched and ctx.out_shape is None:
        return None
    why = f"no rule for {what}"
    ctx.builder.unknown.setdefault(ctx.name, what)
    for lay in touched:
        ctx.fix(lay, why)
    return ctx.fixed_output(why)


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
    if x.layout is None or x.layout.dim != 1 or x.layout.inner != 1:
        out = _fixed_in_out(ctx, x, "convolution over an unfollowed channel axis")
    elif conv.groups == 1:
        out = _module_output(ctx, conv.out_channels, 1)
        ctx.builder.note(ctx.builder.consumers, x.layout, ctx.name)
        _bind(ctx, "conv", x.layout, out)
    elif conv.groups == conv.in_channels == conv.out_channels:
        out = x.layout
        ctx.builder.note(ctx.builder.members, x.layout, ctx.name)
        _bind(ctx, "depthwise", x.layout, out)
    else:
        out = _fixed_in_out(ctx, x, f"grouped convolution (groups={conv.groups})")
    kind = ctx.builder.bindings.get(ctx.name, ("fixed-conv",))[0]
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
    if x.layout is None or x.layout.dim != last:
        out = _fixed_in_out(ctx, x, "linear layer over an unfollowed feature axis", dim=last)
    else:
        out = _module_output(ctx, lin.out_features, last)
        ctx.builder.note(ctx.builder.consumers, x.layout, ctx.name)
        _bind(ctx, "linear", x.layout, out)
    kind = ctx.builder.bindings.get(ctx.name, ("fixed-linear",))[0]
    ctx.builder.layers.append(
        (ctx.name, kind, _on_axis(x, last), Traced(out_shape, out), positions, 1, 1)
    )
    return out


def _norm_rule(kind: str, channel_dim_last: bool) -> Rule:
    def rule(ctx: RuleContext) -> Layout | None:
        x = _channel_input(ctx)
        want = len(x.shape) - 1 if channel_dim_last else 1
        if x.layout is None or x.layout.dim != want or x.layout.inner != 1:
            return _fixed_in_out(ctx, x, f"{kind} over an unfollowed channel axis")
        if kind == "groupnorm":
            gn: nn.GroupNorm = ctx.module  # type: ignore[assignment]
            ctx.builder.add_granularity(x.layout, gn.num_channels // gn.num_groups)
        if kind == "layernorm" and len(ctx.module.normalized_shape) != 1:  # type: ignore[union-attr]
            return _fixed_in_out(ctx, x, "layer norm over more than the channel axis")
        ctx.builder.note(ctx.builder.members, x.layout, ctx.name)
        _bind(ctx, kind, x.layout, x.layout)
        return x.layout

    return rule


register_rule(nn.modules.batchnorm._BatchNorm)(_norm_rule("batchnorm", channel_dim_last=False))
register_rule(nn.GroupNorm)(_norm_rule("groupnorm", channel_dim_last=False))
register_rule(nn.LayerNorm)(_norm_rule("layernorm", channel_dim_last=True))


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
    torch.abs, torch.neg, torch.exp, torch.sqrt, torch.square,
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
        if out_dim - shift >= 0 and c.shape[out_dim - shift] > 1:
            ctx.fix(merged, f"scaled per channel by the parameter {c.constant!r}")
    return Layout(out_dim, merged.segments, merged.inner)


@register_rule(torch.cat, torch.concat, torch.concatenate, "cat")
def cat_rule(ctx: RuleContext) -> Layout | None:
    tensors = [t for t in _flatten(ctx.arg(0, "tensors")) if isinstance(t, Traced)]
    dim = ctx.arg(1, "dim", 0)
    rank = len(tensors[0].shape)
    dim = dim % rank
    layouts = [t.layout for t in tensors]
    if any(lay is None for lay in layouts):
        for lay in layouts:
            ctx.fix(lay, "concatenated with an unfollowed tensor")
        return ctx.fixed_output("concatenated with an unfollowed tensor")
    lays: list[Layout] = layouts  # type: ignore[assignment]
    if all(lay.dim == dim and lay.inner == lays[0].inner for lay in lays):
        segments = tuple(s for lay in lays for s in lay.segments)
        return Layout(dim, segments, lays[0].inner)
    if all(lay.dim == lays[0].dim != dim for lay in lays):
        return ctx.merge(lays, "a concatenation along a non-channel axis")
    for lay in lays:
        ctx.fix(lay, "a concatenation that mixes channel axes")
    return ctx.fixed_output("a concatenation that mixes channel axes")


@register_rule(torch.flatten, nn.Flatten, "flatten", "view", "reshape", torch.reshape)
def reshape_rule(ctx: RuleContext) -> Layout | None:
    """Reshapes that keep the channel axis, or fold everything after it into it (flatten)."""
    x = _channel_input(ctx)
    out = ctx.out_shape
    if x.layout is None or out is None:
        return None
    d, shape = x.layout.dim, x.shape
    if tuple(out) == tuple(shape):
        return x.layout
    if tuple(out[:d]) == tuple(shape[:d]):
        if len(out) == d + 1 and out[d] == math.prod(shape[d:]):
            return Layout(d, x.layout.segments, x.layout.inner * math.prod(shape[d + 1:]))
        if len(out) > d and out[d] == shape[d]:
            return x.layout
    return _fixed_in_out(ctx, x, f"a reshape {tuple(shape)} -> {tuple(out)} splits channels")


@register_rule(torch.permute, "permute")
def permute_rule(ctx: RuleContext) -> Layout | None:
    x = _channel_input(ctx)
    if x.layout is None:
        return None
    dims = [a for a in _flatten(ctx.args[1:]) if isinstance(a, int)]
    dims = [a % len(x.shape) for a in dims]
    return Layout(dims.index(x.layout.dim), x.layout.segments, x.layout.inner)


@register_rule(torch.transpose, "transpose", "swapaxes", torch.swapaxes)
def transpose_rule(ctx: RuleContext) -> Layout | None:
    x = _channel_input(ctx)
    if x.layout is None:
        return None
    rank = len(x.shape)
    a, b = ctx.arg(1, "dim0") % rank, ctx.arg(2, "dim1") % rank
    d = x.layout.dim
    d = b if d == a else a if d == b else d
    return Layout(d, x.layout.segments, x.layout.inner)


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
        return item.layout if isinstance(item, Traced) else None
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


@register_rule("size", "dim", "numel", getattr)
def shape_query_rule(ctx: RuleContext) -> None:
    """Shape queries produce Python values, not tensors."""
    return None


# ---------------------------------------------------------------------------------------------
# Discovery


def discover(
    model: nn.Module, example_input: torch.Tensor | tuple, rules: RuleTable | None = None
) -> ChannelGraph:
    """Trace `model` on `example_input` and find its channel groups.

    Constructs without a rule fix the channels they touch and are named in one warning.
    """
    gm = trace(model, rules)
    builder = _Builder(gm, rules or RULES)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _Recorder(gm, builder).run(*args)
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
    return _finish(builder, model)


def _finish(b: _Builder, model: nn.Module) -> ChannelGraph:
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
    ops = [OpRecord(name, tuple(traced(t) for t in tensors)) for name, tensors in b.ops]
    msgs = []
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
    return ChannelGraph(groups, bindings, layers, ops, msgs, params_total)


def describe_groups(groups: Iterable[GroupInfo]) -> str:
    return "\n".join(f"{g.name}: {g.size}" + (f" (fixed: {g.fixed})" if g.fixed else "")
                     for g in groups)
