"""The Supernet: a model whose channel widths switch at run time, plus its costs and exports.

The model's own Conv2d / Linear / norm modules are swapped for dynamic ones that share their
tensors; `activate(config, choice)` sets the active channel indices on those modules (the
state lives on this object and its modules, never in a global).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from .cost import Cost, CostModel
from .discovery import ChannelGraph, GroupLayout, Mix, Part, RuleTable, counted_attention, discover
from .dynamic import DynamicModule, DynamicParameter, make_dynamic, unslice
from .errors import WidthSearchError
from .patterns import Pattern, Selection, as_selection, get_pattern, selection_tensor
from .space import ChannelGroup, WidthConfig, WidthSpace, default_choices, default_step

Choice = int | Mapping[str, int] | None


class _Activation:
    """Returned by `Supernet.activate`: the new widths stay on, or revert after a `with`."""

    def __init__(self, net: Supernet, previous: tuple[WidthConfig, dict[str, int]]) -> None:
        self.net = net
        self.previous = previous

    def __enter__(self) -> Supernet:
        return self.net

    def __exit__(self, *exc: object) -> None:
        self.net.activate(*self.previous)


class Supernet(nn.Module):
    """Wraps a model so that every width configuration of its channel groups runs.

    Args:
        model: any torch.fx-traceable CNN; modified in place (its layers become dynamic).
        example_input: a tensor (batch first) the model accepts, used to trace shapes.
        pattern: "leftmost" | "cafenet" | "bcnet" or a `patterns.Pattern` object.
        min_ratio: the smallest allowed width as a fraction of each group.
        divisions: a group's width step is about size / divisions channels.
        choices: per-group allowed widths that replace the defaults.
        rules: a rule table for discovery (defaults to `discovery.RULES`).
        verify: run the example input at random widths and fix groups that do not run.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        pattern: str | Pattern = "leftmost",
        *,
        min_ratio: float = 0.25,
        divisions: int = 16,
        choices: Mapping[str, list[int]] | None = None,
        rules: RuleTable | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(model, Supernet):
            raise WidthSearchError("the model is already a Supernet")
        _check_example(model, example_input)
        self.model = model
        self.pattern = get_pattern(pattern)
        self.graph: ChannelGraph = discover(model, example_input, rules)
        self.space = _build_space(self.graph, min_ratio, divisions)
        if choices:
            self.space = self.space.with_choices(choices)
        self._dynamic: dict[str, DynamicModule] = {}
        for name, binding in self.graph.bindings.items():
            dyn = make_dynamic(binding.kind, model.get_submodule(name))
            model.set_submodule(name, dyn)
            self._dynamic[name] = dyn
        self._params: dict[str, DynamicParameter] = {}
        for name, pb in self.graph.parameters.items():
            owner, _, attr = name.rpartition(".")
            self._params[name] = DynamicParameter(
                model.get_submodule(owner) if owner else model, attr, pb.axis)
        self._selections: dict[tuple[str, int, int], Selection] = {}
        self._composed: dict[tuple, Selection] = {}
        self._config = self.space.max()
        self._choice: dict[str, int] = {}
        self.activate(self._config)
        if verify:
            self._verify(example_input)
        self.cost_model = CostModel(self.graph, self.space, model)

    # -- widths ------------------------------------------------------------------------------
    def set_space(self, space: WidthSpace) -> None:
        """Search and train over another space of the same groups (e.g. FLOPs-sensitive bins).

        Cached selections depend on each group's step, so they are dropped; the costs are
        rebuilt over the new space and the full width is activated.
        """
        if space.names != self.space.names:
            raise WidthSearchError("a new width space must have the same groups as the supernet")
        self.space = space
        self._selections.clear()
        self._composed.clear()
        self.cost_model = CostModel(self.graph, space, self.model)
        self.activate(space.max())

    @property
    def config(self) -> WidthConfig:
        """The active width configuration."""
        return self._config

    @property
    def choice(self) -> dict[str, int]:
        """The active assignment index per group (groups at 0 omitted)."""
        return dict(self._choice)

    def activate(self, config: Mapping[str, int] | None = None, choice: Choice = None) -> _Activation:
        """Run at `config` (full width if None) with the pattern assignment `choice`.

        `choice` maps group -> assignment index (0 = leftmost); an int applies to every group
        that has that many assignments (e.g. 1 = the right channels with the bcnet pattern).
        Use as a call or as `with net.activate(cfg): ...` to restore the previous widths.
        """
        previous = (self._config, self._choice)
        cfg = self.space.max() if config is None else self.space.validate(config)
        picks = self._resolve_choice(cfg, choice)
        device = _device_of(self.model)
        for name, dyn in self._dynamic.items():
            binding = self.graph.bindings[name]
            dyn.set_selection(
                self._compose(binding.in_layout, cfg, picks, device),
                self._compose(binding.out_layout, cfg, picks, device),
            )
        for name, param in self._params.items():
            sel = self._compose(self.graph.parameters[name].layout, cfg, picks, device)
            param.set_selection(sel, sel)
        self._config, self._choice = cfg, picks
        return _Activation(self, previous)

    def num_choices(self, config: Mapping[str, int]) -> dict[str, int]:
        """How many pattern assignments each group has at `config` (groups with >1 only)."""
        cfg = self.space.validate(config)
        counts = {g.name: self.pattern.num_choices(*_pattern_args(g, cfg[g.name]))
                  for g in self.space.groups}
        return {k: v for k, v in counts.items() if v > 1}

    def sample_choice(self, config: Mapping[str, int], generator: torch.Generator | None = None
                      ) -> dict[str, int]:
        """A uniformly random assignment for every group that has more than one."""
        counts = self.num_choices(config)
        return {name: int(torch.randint(n, (1,), generator=generator)) for name, n in counts.items()}

    def _resolve_choice(self, cfg: WidthConfig, choice: Choice) -> dict[str, int]:
        if choice is None:
            return {}
        if isinstance(choice, int):
            picks = {}
            for g in self.space.groups:
                if choice < self.pattern.num_choices(*_pattern_args(g, cfg[g.name])):
                    picks[g.name] = choice
            return {k: v for k, v in picks.items() if v}
        picks = {}
        for name, k in choice.items():
            g = self.space[name]
            n = self.pattern.num_choices(*_pattern_args(g, cfg[name]))
            if not 0 <= int(k) < n:
                raise WidthSearchError(
                    f"choice {k} for group {name!r} at width {cfg[name]} is out of range "
                    f"(the {self.pattern.name} pattern has {n})"
                )
            if int(k):
                picks[name] = int(k)
        return picks

    def _group_selection(self, name: str, width: int, k: int) -> Selection:
        key = (name, width, k)
        if key not in self._selections:
            g = self.space[name]
            n, c, step = _pattern_args(g, width)
            sel = self.pattern.indices(n, c, step, k)
            if g.blocks > 1:  # the same channels inside every block
                inside = selection_tensor(sel)
                sel = as_selection(torch.cat([inside + b * n for b in range(g.blocks)]))
            self._selections[key] = sel
        return self._selections[key]

    def _compose(self, layout: GroupLayout, cfg: WidthConfig, picks: dict[str, int],
                 device: torch.device) -> Selection:
        """The active entries of a (possibly concatenated, flattened, shuffled) channel axis."""
        names = _leaf_groups(layout.segments)
        state = tuple((cfg[n], picks.get(n, 0)) for n in names)
        key = (layout, state, device)
        if key in self._composed:
            return self._composed[key]
        first = layout.segments[0] if len(layout.segments) == 1 else None
        if isinstance(first, str) and layout.inner == 1:
            sel = self._group_selection(first, cfg[first], picks.get(first, 0))
        else:
            channels, _ = self._channels(layout.segments, cfg, picks)
            inner = torch.arange(layout.inner)
            sel = as_selection((channels[:, None] * layout.inner + inner).flatten())
        if isinstance(sel, torch.Tensor):
            sel = sel.to(device)
        self._composed[key] = sel
        return sel

    def _channels(self, segments: tuple, cfg: WidthConfig, picks: dict[str, int]
                  ) -> tuple[torch.Tensor, int]:
        """The active channels of a segment list (positions on its axis) and its full size."""
        parts, offset = [], 0
        for seg in segments:
            if isinstance(seg, Mix):  # entry i * g + j is entry i of part j
                subs = [self._channels(p, cfg, picks) for p in seg.parts]
                g = len(subs)
                idx = torch.stack([s * g + j for j, (s, _) in enumerate(subs)], 1).flatten()
                size = subs[0][1] * g
            else:
                name = seg.space if isinstance(seg, Part) else seg
                full = selection_tensor(self._group_selection(name, cfg[name], picks.get(name, 0)))
                size = self.space[name].size
                if isinstance(seg, Part):  # block range `index` of `count`, block-major order
                    width, size = cfg[name] // seg.count, size // seg.count
                    full = full[seg.index * width:(seg.index + 1) * width] - seg.index * size
                idx = full
            parts.append(idx + offset)
            offset += size
        return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)), offset

    def _apply(self, fn: Any, recurse: bool = True) -> Supernet:
        """After .to(device) / .cuda(), re-place the index tensors beside the weights."""
        super()._apply(fn, recurse)
        if hasattr(self, "_dynamic"):
            self._composed.clear()
            self.activate(self._config, self._choice)
        return self

    # -- running -----------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def cost(self, config: Mapping[str, int] | None = None) -> Cost:
        """MACs, params and peak activation memory of `config` (the active one if None)."""
        return self.cost_model.cost(self._config if config is None else config)

    # -- export ------------------------------------------------------------------------------
    def export(self, config: Mapping[str, int] | None = None, choice: Choice = None) -> nn.Module:
        """A plain model of the original classes with physically smaller tensors.

        The result carries `widthsearch_spec` (how to rebuild it) and no widthsearch class.
        """
        if config is None:  # the active widths, and the active assignment unless one is given
            config, choice = self._config, self._choice if choice is None else choice
        with self.activate(config, choice):
            memo: dict[int, Any] = {}
            shapes = {}
            for name, dyn in self._dynamic.items():
                memo[id(dyn)] = dyn.materialize().train(dyn.training)
                shapes[name] = dyn.shape_spec()
            for name, param in self._params.items():
                memo[id(param.full)] = param.materialize()
                shapes[name] = param.shape_spec()
            plain = unslice(copy.deepcopy(self.model, memo))
            spec = dict(getattr(self.model, "widthsearch_spec", {}) or {})
            spec.update(width_config=self._config.to_dict(), choice=dict(self._choice),
                        shapes=shapes)
        plain.widthsearch_spec = spec
        return plain

    # -- verification --------------------------------------------------------------------------
    def _verify(self, example_input: torch.Tensor) -> None:
        """Invariant: every group runs at every width; groups that cannot are fixed, named."""
        failing = self._failing_groups(example_input)
        if not failing:
            return
        groups = tuple(
            replace(g, choices=(g.size,), fixed=f"does not run when slimmed: {failing[g.name]}")
            if g.name in failing else g
            for g in self.space.groups
        )
        self.space = WidthSpace(groups)
        self._config = self.space.max()
        self.activate(self._config)
        warnings.warn(
            "these groups fail to run when slimmed and stay at full width: "
            + "; ".join(f"{k} ({v})" for k, v in failing.items()),
            stacklevel=3,
        )

    def _failing_groups(self, example_input: torch.Tensor) -> dict[str, str]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                full_shape = _output_shape(self.model(example_input))
                generator = torch.Generator().manual_seed(0)
                probes = [self.space.min(), self.space.sample(generator)]
                if all(self._runs(cfg, example_input, full_shape) is None for cfg in probes):
                    return {}
                failing = {}
                for g in self.space.searchable:
                    cfg = dict(self.space.max())
                    cfg[g.name] = g.choices[0]
                    err = self._runs(cfg, example_input, full_shape)
                    if err is not None:
                        failing[g.name] = err
                return failing
        finally:
            self.activate(self.space.max())
            self.train(was_training)

    def _runs(self, cfg: Mapping[str, int], x: torch.Tensor, shape: Any) -> str | None:
        try:
            with self.activate(cfg):
                out = self.model(x)
        except Exception as err:  # a construct no rule covered correctly
            return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if _output_shape(out) != shape:
            return "the output shape changes"
        return None

    def extra_repr(self) -> str:
        return (f"pattern={self.pattern!r}, groups={len(self.space)}, "
                f"searchable={len(self.space.searchable)}")


def _build_space(graph: ChannelGraph, min_ratio: float, divisions: int) -> WidthSpace:
    groups = []
    for info in graph.groups:
        unit = info.granularity * info.blocks  # widths: whole units in every block
        step = default_step(info.size, divisions, unit)
        fixed = info.fixed
        if not fixed and info.size % unit:
            fixed = f"{info.size} channels do not split into blocks of {info.granularity}" \
                if info.blocks == 1 else \
                f"{info.size} channels do not split into {info.blocks} equal blocks" + \
                (f" of whole groups of {info.granularity}" if info.granularity > 1 else "")
        widths = (info.size,) if fixed else default_choices(info.size, min_ratio=min_ratio, step=step)
        if not fixed and len(widths) == 1 and info.size > 1:  # say why it cannot slim
            fixed = f"widths in whole units of {unit} of its {info.size} channels leave " \
                    f"none narrower above min_ratio {min_ratio}"
        groups.append(ChannelGroup(
            name=info.name, size=info.size, choices=widths, step=step,
            producers=info.producers, consumers=info.consumers, members=info.members,
            fixed=fixed, granularity=unit, blocks=info.blocks,
        ))
    return WidthSpace(tuple(groups))


def _pattern_args(g: ChannelGroup, width: int) -> tuple[int, int, int]:
    """(size, width, step) the pattern sees: one block's share when the group has blocks."""
    b = g.blocks
    return g.size // b, width // b, max(1, g.step // b)


def _leaf_groups(segments: tuple) -> list[str]:
    out: list[str] = []
    for seg in segments:
        if isinstance(seg, Mix):
            for part in seg.parts:
                out.extend(_leaf_groups(part))
        else:
            out.append(seg.space if isinstance(seg, Part) else seg)
    return out


def _check_example(model: nn.Module, example_input: Any) -> None:
    if not isinstance(example_input, torch.Tensor):
        raise WidthSearchError(
            f"example_input must be a tensor with a batch axis, got {type(example_input).__name__}"
        )
    if example_input.dim() < 2:
        raise WidthSearchError(
            f"example_input needs a batch axis and channels, got shape {tuple(example_input.shape)}"
        )
    if not isinstance(model, nn.Module):
        raise WidthSearchError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _output_shape(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return tuple(_output_shape(o) for o in out)
    if isinstance(out, dict):
        return {k: _output_shape(v) for k, v in out.items()}
    return None


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def macs_of(module: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one forward at batch 1 as torch's FlopCounterMode counts them (FLOPs / 2).

    Attention runs unfused (`discovery.counted_attention`): FlopCounterMode cannot see the fused
    nn.MultiheadAttention inference kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counted_attention(), counter:
        module(example_input[:1])
    return math.ceil(counter.get_total_flops() / 2)
