"""Rules for products of activations: matmul-like ops and nn.MultiheadAttention.

Such ops keep their channels at full width (their heads are tied to the embedding width),
are named in the discovery warning, and their MACs are measured rather than modelled.
Importing the module registers the rules into `RULES`.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..records import Layout
from ..rules import RuleContext, Traced, _limited, register_rule

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
