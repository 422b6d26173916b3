"""Discovery rules for timm's own layers (registered only once timm has been imported).

timm builds its CNNs from a few dozen layer classes. Subclasses of the core layers
(BatchNormAct2d, StdConv2d, Conv2dSame, GroupNormAct, ...) are found along the MRO; the
rules here cover the rest:

- norms with a per-channel weight whose own forward works at any width (RmsNorm2d,
  SimpleNorm2d, EvoNorm, FilterResponseNorm, GlobalResponseNorm, GroupNorm1): the module
  keeps its class and forward, and its per-channel tensors resolve to the active slices
  (a grouped EvoNorm keeps whole groups);
- LayerNorm2d and its act / fp32 variants: the channels-first layer norm;
- BlurPool2d (a fixed per-channel blur): a depthwise layer; its filter copies and its
  `channels` follow the width (a layer spec registered in `dynamic.LAYERS`);
- ECA gates (a 1-d conv sliding along the channel axis): they run unchanged at any width,
  and their measured MACs are declared linear in it (`_Builder.width_macs`);
- MetaFormer's Scale (`scale.view(shape)` with a stored shape): a layer with its own spec,
  so the scale and the shape follow the width;
- DropPath and DropBlock2d: pass through (their training-mode forward reads the input's
  shape, which torch.fx cannot trace).

A model whose trace fails is traced again with the modules timm itself registers as fx
leaves (`timm.layers.get_notrace_modules()`, e.g. VGG's ConvMlp); those without a rule keep
their channels and are named.

`install` is a deferred family (`rules.DEFERRED_FAMILIES`): discovery calls it with `RULES`
and it registers once timm has been imported, so importing widthsearch never imports timm.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import torch
from torch import nn

from ..records import Layout
from ..rules import (
    DEFERRED_FAMILIES,
    FALLBACK_LEAVES,
    RuleContext,
    RuleTable,
    Traced,
    _bind,
    _channel_input,
    _fixed_in_out,
    _on_axis,
)
from .core import _norm_rule, passthrough_rule

__all__ = ["install", "own_forward_rule", "blur_pool_rule", "channel_gate_rule"]

_INSTALLED = "_widthsearch_timm_rules"


def _per_channel_tensors(module: nn.Module, channels: int
                         ) -> list[tuple[str, torch.Tensor]] | str:
    """The module's own tensors with one entry per channel, or why it has others."""
    found = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.numel() <= 1:
            continue
        if "." in name or t.numel() != channels:
            return f"{type(module).__name__} holds the tensor {name!r} of shape {tuple(t.shape)}"
        found.append((name, t))
    return found


def _bind_own(ctx: RuleContext, lay: Layout, tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Slice the module's per-channel tensors along their channel axis with `lay`."""
    b = ctx.builder
    for attr, t in tensors:
        axis = next(i for i, s in enumerate(t.shape) if s > 1)
        pname = f"{ctx.name}.{attr}"
        if pname in b.parameters:
            b.merge([b.parameters[pname][1], Layout(axis, lay.segments)],
                    "a module called twice", ctx.name)
        else:
            b.parameters[pname] = (axis, Layout(axis, lay.segments))


def own_forward_rule(ctx: RuleContext) -> Layout | None:
    """A per-channel module (a norm) that runs its own forward on the active channels.

    Its per-channel parameters and buffers resolve to the active slices (the supernet's
    parameter binding), so whatever the forward computes per channel or across the channel
    axis is what the exported, narrower module computes. A module with a fixed number of
    channel groups (EvoNorm S, GroupNorm) keeps widths in multiples of its groups.
    """
    x = _channel_input(ctx)
    lay = x.layout
    if lay is None:
        return None
    module = ctx.module
    assert module is not None
    if lay.inner != 1 or lay.by is not None:
        return _fixed_in_out(ctx, x, f"{type(module).__name__} over a reshaped channel axis",
                             dim=lay.dim)
    if ctx.out_shape is None or ctx.out_shape != x.shape:
        return _fixed_in_out(ctx, x, f"{type(module).__name__} changes the tensor's shape",
                             dim=lay.dim)
    tensors = _per_channel_tensors(module, x.shape[lay.dim])
    if isinstance(tensors, str):
        return _fixed_in_out(ctx, x, tensors, dim=lay.dim)
    groups = getattr(module, "num_groups", None) or getattr(module, "groups", None) or 1
    if isinstance(groups, int) and groups > 1:
        ctx.builder.add_granularity(lay, groups)
    _bind_own(ctx, lay, tensors)
    ctx.builder.note(ctx.builder.members, lay, ctx.name)
    return lay


def group_norm1_rule(ctx: RuleContext) -> Layout | None:
    """GroupNorm with one group normalizes over every channel at once: its own forward
    (`F.group_norm(x, 1, weight, bias)`) runs at any width."""
    return own_forward_rule(ctx)


def _depthwise_record(ctx: RuleContext, lay: Layout, kernel: int, positions: int) -> None:
    """A MACs record for a depthwise op of the module: kernel x positions per channel."""
    x = _channel_input(ctx)
    out = ctx.out_shape or x.shape
    ctx.builder.layers.append((ctx.name, "depthwise", _on_axis(x, 1), Traced(tuple(out), lay),
                               positions, kernel, x.shape[1]))


def blur_pool_rule(ctx: RuleContext) -> Layout | None:
    """BlurPool2d: the same fixed filter on every channel, a depthwise conv. Built with a
    channel count it holds one filter copy per channel and convolves with
    `groups=channels`: both follow the width (its layer spec); built without one it
    expands one filter to whatever width it sees."""
    x = _channel_input(ctx)
    lay = x.layout
    module = ctx.module
    if lay is None:
        return None
    if lay.dim != 1 or lay.inner != 1 or lay.by is not None:
        return _fixed_in_out(ctx, x, "a blur filter over a reshaped channel axis")
    if getattr(module, "channels", None) is None:
        return _fixed_in_out(ctx, x, "a blur filter expanded to the input's width")
    out = ctx.out_shape
    assert out is not None
    size = int(module.filt_size)  # type: ignore[union-attr]
    _bind(ctx, "depthwise", lay, lay)
    _depthwise_record(ctx, lay, size * size, out[2] * out[3])
    ctx.builder.note(ctx.builder.members, lay, ctx.name)
    return lay


def scale_rule(ctx: RuleContext) -> Layout | None:
    """MetaFormer's Scale: `x * scale.view(shape)`, a layer scale whose view shape is
    stored; the scale and the shape follow the width (its layer spec)."""
    x = _channel_input(ctx)
    lay = x.layout
    module = ctx.module
    if lay is None:
        return None
    shape = tuple(module.__dict__.get("shape", ()))  # type: ignore[union-attr]
    axis = len(x.shape) - len(shape)
    if (lay.dim != axis or lay.inner != 1 or lay.by is not None or ctx.out_shape != x.shape
            or not shape or any(s != 1 for s in shape[1:])):
        return _fixed_in_out(ctx, x, "a layer scale viewed to another shape", dim=lay.dim)
    _bind(ctx, "scale", lay, lay)
    ctx.builder.note(ctx.builder.members, lay, ctx.name)
    return lay


def channel_gate_rule(ctx: RuleContext) -> Layout | None:
    """An ECA-style gate: x * sigmoid(conv1d over the pooled channel axis). The 1-d kernel
    slides along the channels, so the gate runs unchanged at any width and its channels
    are the input's; its measured MACs (one kernel per channel) are linear in that width."""
    x = _channel_input(ctx)
    lay = x.layout
    if lay is None:
        return None
    if lay.dim != 1 or lay.inner != 1 or lay.by is not None or ctx.out_shape != x.shape:
        return _fixed_in_out(ctx, x, "a channel gate over a reshaped channel axis",
                             dim=lay.dim)
    ctx.builder.width_macs[ctx.name] = lay
    ctx.builder.note(ctx.builder.members, lay, ctx.name)
    return lay


def _classes(module: str, *names: str) -> list[type]:
    mod = importlib.import_module(module)
    return [getattr(mod, n) for n in names if hasattr(mod, n)]


def install(rules: RuleTable) -> bool:
    """Register the timm rules in `rules` (once); False when timm is not loaded."""
    if "timm" not in sys.modules:
        return False
    if getattr(rules, _INSTALLED, False):
        return True
    layers = "timm.layers"
    register: dict[Any, list[type]] = {
        own_forward_rule: _classes(
            layers, "RmsNorm2d", "RmsNorm2dFp32", "RmsNormAct2d", "RmsNormAct2dFp32",
            "SimpleNorm2d", "SimpleNorm2dFp32", "EvoNorm2dB0", "EvoNorm2dB1", "EvoNorm2dB2",
            "EvoNorm2dS0", "EvoNorm2dS0a", "EvoNorm2dS1", "EvoNorm2dS1a", "EvoNorm2dS2",
            "EvoNorm2dS2a", "FilterResponseNormAct2d", "FilterResponseNormTlu2d")
        + _classes("timm.layers.grn", "GlobalResponseNorm"),
        group_norm1_rule: _classes(layers, "GroupNorm1", "GroupNorm1Act"),
        _norm_rule("layernorm2d", channel_dim_last=False): _classes(
            layers, "LayerNorm2d", "LayerNorm2dFp32", "LayerNormAct2d", "LayerNormAct2dFp32"),
        blur_pool_rule: _classes(layers, "BlurPool2d"),
        channel_gate_rule: _classes(layers, "EcaModule", "CecaModule"),
        passthrough_rule: _classes(layers, "DropPath", "DropBlock2d"),
    }
    register[scale_rule] = _classes("timm.models.metaformer", "Scale")
    for rule, classes in register.items():
        if classes:
            rules.register(*classes)(rule)
    _install_layers()
    setattr(rules, _INSTALLED, True)
    return True


def _install_layers() -> None:
    """Layer specs for the timm layers whose channel count is a stored size."""
    from widthsearch.dynamic import LAYERS, LayerSpec

    blur = LayerSpec(lambda m, mode: {"filt": ("out", None, None, None)},
                     lambda m, mode, n_in, n_out: {"channels": n_out}, ("channels",),
                     macs_tensor="filt")
    scale = LayerSpec(lambda m, mode: {"scale": ("out",)},
                      lambda m, mode, n_in, n_out: {
                          "shape": (n_out, *tuple(m.__dict__["shape"])[1:])},
                      ("shape",))
    for cls in _classes("timm.layers", "BlurPool2d"):
        LAYERS.register(cls, blur)
    for cls in _classes("timm.models.metaformer", "Scale"):
        LAYERS.register(cls, scale)


def notrace_modules() -> tuple[type, ...]:
    """timm's modules that torch.fx must not trace into (none before timm is imported)."""
    if "timm" not in sys.modules:
        return ()
    return tuple(importlib.import_module("timm.layers").get_notrace_modules())


DEFERRED_FAMILIES.append(install)
FALLBACK_LEAVES.append(notrace_modules)
