"""Rules for ops that cut a tensor into pieces: split, chunk, tensor_split, unbind.

A cut along the channel axis is exact when it falls on the spaces' (or their equal blocks')
boundaries; a `chunk` with no exact cut that keeps its pieces at equal widths takes each
group's share by position (`_Builder.positional_split`). Importing the module registers the
rule into `RULES`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..builder import _Builder
from ..records import Layout
from ..rules import RuleContext, Traced, _channel_input, register_rule


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
