"""Rules for the ops every CNN is made of.

Convolutions, linear layers, norms, elementwise and spatial ops, broadcasting arithmetic,
concatenation, reshapes / permutes / transposes / expands, reductions, indexing, shape
queries and softmax. Importing the module registers them into `RULES`.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..records import Layout, Mix, Part
from ..rules import (
    _SPLIT_AWARE,
    Rule,
    RuleContext,
    Traced,
    _bind,
    _channel_input,
    _constant_input,
    _Dim,
    _fixed_in_out,
    _flatten,
    _has_mix,
    _module_output,
    _on_axis,
    register_rule,
)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_rule(ctx: RuleContext) -> Layout | None:
    """Convolutions of 1, 2 or 3 spatial dims (channels on axis 1)."""
    conv: nn.Conv2d = ctx.module  # type: ignore[assignment]
    x = _channel_input(ctx)
    out_shape = ctx.out_shape
    assert out_shape is not None
    positions = math.prod(out_shape[2:])
    kernel = math.prod(conv.kernel_size)
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


_SPLIT_AWARE.update({reshape_rule, permute_rule, transpose_rule, passthrough_rule, expand_rule,
                     shape_query_rule})

conv2d_rule = conv_rule  # the name this rule had when it covered Conv2d alone
