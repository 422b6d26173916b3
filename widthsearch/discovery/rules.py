"""The rule table and the API a rule is written against.

A rule receives a `RuleContext` (its node's inputs as `Traced` values, the builder) and
returns the layout of the op's output. `RULES` is the default table the rule modules in
`discovery.ops` register into; the helpers here (`_channel_input`, `_bind`, `_fixed_in_out`,
`_limited` ...) are what several rule families and the tracer share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import WidthSearchError
from .records import Layout, Mix

if TYPE_CHECKING:
    from .builder import _Builder


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

FALLBACK_LEAVES: list[Callable[[], tuple[type, ...]]] = []
"""Module classes a library declares untraceable by torch.fx (timm's notrace modules): a
model whose trace fails is traced again with them kept whole (their channels are then
fixed unless they have a rule)."""

DEFERRED_FAMILIES: list[Callable[[RuleTable], object]] = []
"""Rule families for an optional library (timm): each installer is called with `RULES` at
every discovery and registers its rules once that library has been imported, so importing
widthsearch never imports it."""


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
    return Layout(dim, b.expand(out.segments))


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


class _Dim(int):
    """A size read off a tensor's channel axis (`x.shape[1]`, `x.size(1)`): a reshape that
    uses it takes that axis' width, whatever the width is."""

    layout: Layout

    def __new__(cls, value: int, layout: Layout) -> _Dim:
        obj = super().__new__(cls, value)
        obj.layout = layout
        return obj


def _limited(ctx: RuleContext, inputs: list[Traced], why: str) -> Layout | None:
    """An op a rule knows but cannot slim: fix its channels and name it in the warning."""
    ctx.builder.limited.setdefault(ctx.name, why)
    for t in inputs:
        ctx.builder.fix(t.layout, f"{ctx.name}: {why}", main=True)
    return ctx.fixed_output(why, _output_axis(ctx, inputs))


_SPLIT_AWARE: set[Rule] = set()
"""Rules that follow a channel axis split in two; any other op fixes such channels. The rule
modules add theirs when they register them."""
