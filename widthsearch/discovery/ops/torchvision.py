"""Rules for torchvision's own modules and functions.

Stochastic depth, ConvNeXt's LayerNorm2d, and Swin's window attention, relative position
bias and patch merging. Each target is looked up in torchvision when this module is
imported and registered into `RULES`; a missing one is skipped.
"""

from __future__ import annotations

from typing import Any

from ..records import Layout
from ..rules import RuleContext, _channel_input, _fixed_in_out, register_rule
from .core import _norm_rule, passthrough_rule


def _torchvision(module: str, *names: str) -> list[Any]:
    """Objects of torchvision that rules are registered for (none if it is missing)."""
    try:
        mod = __import__(f"torchvision.{module}", fromlist=list(names))
    except ImportError:  # torchvision is a dependency, but keep discovery independent of it
        return []
    return [getattr(mod, n) for n in names if hasattr(mod, n)]


register_rule(*_torchvision("models.convnext", "LayerNorm2d"))(
    _norm_rule("layernorm2d", channel_dim_last=False))


def _stochastic_depth_targets() -> list[Any]:
    try:
        from torchvision.ops import stochastic_depth
        from torchvision.ops.stochastic_depth import StochasticDepth
    except ImportError:  # torchvision is a dependency, but keep discovery independent of it
        return []
    return [stochastic_depth, StochasticDepth]


register_rule(*_stochastic_depth_targets())(passthrough_rule)


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
