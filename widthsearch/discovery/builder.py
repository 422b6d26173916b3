"""The union-find over channel spaces that rules report to.

`_Builder` creates a space per produced channel axis, merges the spaces an op couples, cuts
segment lists into equal pieces (exact or by position), and collects what the rules record
(bindings, layer and op records, fixed channels and why). The tracer drives it; rules reach
it through `RuleContext.builder`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import torch
import torch.fx as fx

from .records import GroupLayout, Layout, Mix, Part
from .rules import RuleTable, Traced

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
        self.fixed_macs: list[tuple[str, float, Layout | None]] = []
        # ops whose measured MACs a rule declared linear in one layout's entries: name -> it
        self.width_macs: dict[str, Layout] = {}
        self.parameters: dict[str, tuple[int, Layout]] = {}  # name -> (axis, layout)
        self.parameter_uses: dict[str, set[fx.Node]] = {}
        self.constant_views: set[fx.Node] = set()  # size-1 reshapes of a parameter
        self.messages: list[str] = []
        self.limited: dict[str, str] = {}  # ops a rule knows but cannot slim: name -> why
        self.cut_error = ""  # why the last split of channels into equal parts failed
        self.refined: dict[int, tuple[int, ...]] = {}  # root -> the spaces it was cut into

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
        if rb in self.refined:  # the merged set is cut as the refined one was
            moved = self.refined.pop(rb)
            if ra not in self.refined:
                self.refined[ra] = moved
            elif [self.size[self.find(p)] for p in moved] == [
                    self.size[self.find(p)] for p in self.refined[ra]]:
                for x, y in zip(self.refined[ra], moved, strict=True):
                    self.union(x, y)
        for table in (self.producers, self.consumers, self.members):
            table.setdefault(ra, []).extend(table.pop(rb, []))
        if rb in self.fixed:
            self.fixed.setdefault(ra, self.fixed.pop(rb))
        for table in (self.granularity, self.blocks):
            if rb in table:
                g = table.pop(rb)
                table[ra] = math.lcm(table.get(ra, 1), g)

    # segments: a space id, a Part of one, or a Mix of segment lists
    def expand(self, segments: Iterable[Any]) -> tuple:
        """`segments` with every space that was cut into consecutive spaces (`refine`)
        replaced by those spaces."""
        out: list[Any] = []
        for seg in segments:
            if isinstance(seg, Mix):
                out.append(Mix(tuple(self.expand(p) for p in seg.parts)))
            elif not isinstance(seg, Part) and self.find(seg) in self.refined:
                out.extend(self.expand(self.refined[self.find(seg)]))
            else:
                out.append(seg)
        return tuple(out)

    def expand_layout(self, layout: Layout | None) -> Layout | None:
        if layout is None or not self.refined:
            return layout
        return Layout(layout.dim, self.expand(layout.segments), layout.inner, layout.by)

    def refine(self, space: int, sizes: list[int], where: str) -> bool:
        """Cut one space into consecutive spaces of `sizes` (a conv's output added to a
        concatenation: each of its output channels is a row of its own, so the rows that
        meet one concatenated piece can follow that piece's width). Not for a space already
        cut into blocks, held in whole units or shuffled."""
        r = self.find(space)
        if (sum(sizes) != self.size[r] or len(sizes) < 2 or r in self.blocks
                or r in self.granularity or r in self.refined or self._shuffled(r)):
            return False
        parts = []
        for size in sizes:
            sid = self.new_space(size, where)
            for table in (self.producers, self.consumers, self.members):
                table[sid] = list(table.get(r, []))
            if r in self.fixed:
                self.fixed[sid] = self.fixed[r]
            parts.append(sid)
        self.refined[r] = tuple(parts)
        return True

    def _shuffled(self, root: int) -> bool:
        """Whether a channel shuffle (a Mix) holds a space of this set."""
        def walk(v: Any) -> bool:
            if isinstance(v, Traced):
                return v.layout is not None and any(
                    isinstance(seg, Mix) and root in {self.find(x) for x in self.leaves((seg,))}
                    for seg in v.layout.segments)
            if isinstance(v, (list, tuple)):
                return any(walk(x) for x in v)
            return False
        return any(walk(v) for v in self.values.values())

    def leaves(self, segments: Iterable[Any]) -> list[int]:
        """The space ids a segment list refers to."""
        out: list[int] = []
        for seg in self.expand(segments) if self.refined else segments:
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
                self._refine_to_match(first.segments, other.segments, where)
                self._refine_to_match(other.segments, first.segments, where)
                found = self._pairs(self.expand(first.segments), self.expand(other.segments))
            if found is None:
                for lay in layouts:
                    self.fix(lay, f"{where}: {why} joins channels that do not line up")
                return first
            pairs += found
        for a, b in pairs:
            self.union(a, b)
        return first

    def _refine_to_match(self, one: tuple, many: tuple, where: str) -> None:
        """A single space meeting a concatenation of whole spaces is cut to match it."""
        one, many = self.expand(one), self.expand(many)
        if (len(one) == 1 and not isinstance(one[0], (Part, Mix)) and len(many) > 1
                and not any(isinstance(seg, (Part, Mix)) for seg in many)
                and self.find(one[0]) not in {self.find(seg) for seg in many}):
            self.refine(one[0], [self.seg_size(seg) for seg in many], where)

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

    def note_buffers(self, inputs: list[Traced], pairs: list[tuple[Traced, torch.Tensor]]
                     ) -> None:
        """Give an op's outputs (`pairs` of described and real values) storage ids: an
        output whose storage is an input's (a view, an in-place result) shares that input's
        id, any other gets a new one. Only the op's own inputs are compared, so a freed
        pointer reused later is no alias."""
        ids = [self.buffer_of.get(id(t)) for t in inputs]
        by_ptr = {self.buffer_ptr[i]: i for i in ids if i is not None and self.buffer_ptr[i]}
        for t, value in pairs:
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
            value = self.values.get(arg)
            if self.refined and isinstance(value, Traced) and value.layout is not None:
                return dataclasses.replace(value, layout=self.expand_layout(value.layout))
            return value
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
        return GroupLayout(self._named(self.expand(layout.segments), names), layout.inner)

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
