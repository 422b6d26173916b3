"""The Supernet: a model whose channel widths switch at run time, plus its costs and exports.

Each layer a channel group passes through keeps its own class and forward; its class is
swapped for a subclass whose channel-sized attributes resolve to the active slices
(dynamic.py). `activate(config, choice)` sets the active channel indices on those modules
(the state lives on this object and its modules, never in a global). At construction the
supernet checks that at full width it computes what the model computed, that it runs in
training mode, and that a narrower subnet equals its export (invariant 7).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from .cost import Cost, CostModel
from .discovery import (
    ChannelGraph,
    GroupLayout,
    Mix,
    Part,
    RuleTable,
    counted_attention,
    discover,
)
from .dynamic import (
    LAYERS,
    LayerTable,
    SlicedClasses,
    Slices,
    make_sliced,
    materialize,
    original_class,
    sliced_modules,
)
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
        layers: a layer table saying how each layer class slices (defaults to `dynamic.LAYERS`).
        verify: check the conversion (full width equals the model, training mode runs, a
            random subnet equals its export) and fix groups that do not run when slimmed.
        cache_size: how many channel selections to keep (least recently used dropped).
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
        layers: LayerTable | None = None,
        verify: bool = True,
        cache_size: int = 4096,
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
        self.layers = layers or LAYERS
        reference = _Reference(model, example_input) if verify else None
        self._classes = SlicedClasses()
        self._layer_slices: dict[str, tuple[nn.Module, Slices]] = {}
        for name, binding in self.graph.bindings.items():
            module = model.get_submodule(name)
            spec = self.layers.lookup(module)
            if spec is None:
                raise WidthSearchError(
                    f"{name} ({type(module).__name__}) has a discovery rule but no layer spec; "
                    "register one with widthsearch.dynamic.register_layer")
            self._layer_slices[name] = (module, make_sliced(module, self._classes,
                                                            layer=(spec, binding.kind)))
        self._param_slices: dict[str, tuple[Slices, str]] = {}
        for name, pb in self.graph.parameters.items():
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            self._param_slices[name] = (make_sliced(module, self._classes,
                                                    tensors={attr: pb.axis}), attr)
        self._index_layouts()
        self._selections: _LRU = _LRU(cache_size)
        self._composed: _LRU = _LRU(cache_size)
        self._config = self.space.max()
        self._choice: dict[str, int] = {}
        self.activate(self._config)
        if reference is not None:
            reference.check(self, example_input)
            self._verify(example_input)
        self.cost_model = CostModel(self.graph, self.space, model, self.layers)

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
        self.cost_model = CostModel(self.graph, space, self.model, self.layers)
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
        sels = [self._compose(i, cfg, picks, device) for i in range(len(self._layouts))]
        for name, (module, slices) in self._layer_slices.items():
            i, o = self._layer_layouts[name]
            slices.set_layer(module, sels[i], sels[o])
        for name, (slices, attr) in self._param_slices.items():
            slices.set_tensor(attr, sels[self._param_layouts[name]])
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
        sel = self._selections.get(key)
        if sel is None:
            g = self.space[name]
            n, c, step = _pattern_args(g, width)
            sel = self.pattern.indices(n, c, step, k)
            if g.blocks > 1:  # the same channels inside every block
                inside = selection_tensor(sel)
                sel = as_selection(torch.cat([inside + b * n for b in range(g.blocks)]))
            self._selections[key] = sel
        return sel

    def _index_layouts(self) -> None:
        """Number the distinct channel layouts the sliced tensors follow, once: activation
        composes each of them once per configuration."""
        index: dict[GroupLayout, int] = {}
        self._layouts: list[tuple[GroupLayout, tuple[str, ...]]] = []

        def number(layout: GroupLayout) -> int:
            if layout not in index:
                index[layout] = len(self._layouts)
                self._layouts.append((layout, tuple(_leaf_groups(layout.segments))))
            return index[layout]

        self._layer_layouts = {name: (number(b.in_layout), number(b.out_layout))
                               for name, b in self.graph.bindings.items()}
        self._param_layouts = {name: number(p.layout) for name, p in self.graph.parameters.items()}

    def _compose(self, index: int, cfg: WidthConfig, picks: dict[str, int],
                 device: torch.device) -> Selection:
        """The active entries of a (possibly concatenated, flattened, shuffled) channel axis."""
        layout, names = self._layouts[index]
        state = tuple((cfg[n], picks.get(n, 0)) for n in names)
        key = (index, state, device)
        cached = self._composed.get(key)
        if cached is not None:
            return cached
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
        if hasattr(self, "_layer_slices"):
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
            plain = copy.deepcopy(self.model)
            active = {"width_config": self._config.to_dict(), "choice": dict(self._choice)}
        shapes = {name: materialize(m) for name, m in list(sliced_modules(plain))}
        spec = dict(getattr(self.model, "widthsearch_spec", {}) or {})
        spec.update(active, shapes=shapes)
        plain.widthsearch_spec = spec
        return plain

    # -- verification --------------------------------------------------------------------------
    def _verify(self, example_input: torch.Tensor) -> None:
        """Invariants 3 and 7: every group runs when slimmed, and a slimmed subnet computes
        what its export computes; groups that do not are fixed and named in one warning."""
        failing = self._failing_groups(example_input)
        reasons = {k: f"does not run when slimmed: {v}" for k, v in failing.items()}
        unfaithful = self._unfaithful_groups(example_input, exclude=set(failing))
        failing.update(unfaithful)
        reasons.update(unfaithful)
        if not failing:
            return
        self._fix(reasons)
        warnings.warn(
            "these groups fail to run when slimmed, or compute differently from their export, "
            "and stay at full width: "
            + "; ".join(f"{k} ({v})" for k, v in failing.items()),
            stacklevel=3,
        )

    def _fix(self, reasons: Mapping[str, str]) -> None:
        groups = tuple(replace(g, choices=(g.size,), fixed=reasons[g.name])
                       if g.name in reasons else g for g in self.space.groups)
        self.space = WidthSpace(groups)
        self._config = self.space.max()
        self.activate(self._config)

    def _unfaithful_groups(self, example_input: torch.Tensor, exclude: set[str],
                           rounds: int = 3) -> dict[str, str]:
        """Groups through a layer whose own forward does not follow its sliced tensors: the
        supernet at a random subnet differs from the export of that subnet there."""
        found: dict[str, str] = {}
        generator = torch.Generator().manual_seed(1)
        for _ in range(rounds):
            space = self.space
            if found or exclude:
                space = WidthSpace(tuple(replace(g, choices=(g.size,), fixed="checked")
                                         if g.name in found or g.name in exclude else g
                                         for g in space.groups))
            probes = [space.min(), space.sample(generator)]
            layer = None
            for cfg in probes:
                choice = self.sample_choice(cfg, generator)
                layer = self._first_unfaithful(cfg, choice, example_input)
                if layer is not None:
                    break
            if layer is None:
                return found
            binding = self.graph.bindings.get(layer)
            names = set()
            if binding is not None:
                names = set(_leaf_groups(binding.in_layout.segments)) | \
                    set(_leaf_groups(binding.out_layout.segments))
            names = {n for n in names if self.space[n].slimmable} - set(found) - exclude
            if not names:
                raise WidthSearchError(
                    f"the supernet differs from its export at {layer!r}, and no group there "
                    "can be fixed to avoid it")
            for n in names:
                found[n] = f"{layer} ({original_class(self.model.get_submodule(layer)).__name__}) " \
                           "computes differently on sliced tensors than its export"
        raise WidthSearchError(f"the supernet differs from its exports at {sorted(found)}")

    def _first_unfaithful(self, cfg: WidthConfig, choice: dict[str, int],
                          x: torch.Tensor) -> str | None:
        """The first module whose output at (cfg, choice) differs from the export's, or None."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.activate(cfg, choice):
                got = _fingerprints(self.model, x)
                plain = self.export(cfg, choice).eval()
                want = _fingerprints(plain, x)
        finally:
            self.train(was_training)
        if _close(got.output, want.output):
            return None
        return got.first_difference(want) or "the model output"

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


class _LRU(OrderedDict):
    """A bounded cache: the least recently used entry goes once `size` are held."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise WidthSearchError(f"cache_size must be >= 1, got {size}")
        self.size = size

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _close(a: Any, b: Any, rtol: float = 1e-5) -> bool:
    """Outputs equal to `rtol` relative to the reference's largest magnitude."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape:
            return False
        if x.numel() and not x.is_floating_point():
            if not torch.equal(x, y):
                return False
        elif x.numel():
            scale = float(x.detach().abs().max())
            if float((x - y).detach().abs().max()) > rtol * max(scale, 1e-12) + 1e-7:
                return False
    return True


class _Fingerprints:
    """Every module's output in call order, kept small (shape, sum, sum of magnitudes), and
    the model's output: enough to name the first module where two runs part."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], float, float]] = []
        self.output: Any = None

    def first_difference(self, other: _Fingerprints, rtol: float = 1e-4) -> str | None:
        for (name, shape, s, a), (_, shape2, s2, a2) in zip(self.calls, other.calls,
                                                             strict=False):
            if shape != shape2 or abs(s - s2) > rtol * max(a, a2, 1e-12) or \
                    abs(a - a2) > rtol * max(a, a2, 1e-12):
                return name
        return None


def _fingerprints(model: nn.Module, x: torch.Tensor) -> _Fingerprints:
    record = _Fingerprints()

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: Any, out: Any) -> None:
            tensors = [t for t in _tensors(out) if t.is_floating_point()]
            if tensors:
                t = tensors[0].detach().double()
                record.calls.append((name, tuple(t.shape), float(t.sum()), float(t.abs().sum())))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        record.output = model(x)
    finally:
        for h in handles:
            h.remove()
    return record


class _Reference:
    """What the model computes before conversion (eval mode, and whether a training-mode
    forward runs), to check the supernet against at full width (invariant 7)."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.eval = _fingerprints(model, x)
        finally:
            model.train(was_training)
        self.training_error = _training_error(model, x)

    def check(self, net: Supernet, x: torch.Tensor) -> None:
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                got = _fingerprints(net.model, x)
        finally:
            net.train(was_training)
        if not _close(self.eval.output, got.output):
            where = self.eval.first_difference(got) or "the model output"
            module = net.model.get_submodule(where) if where in dict(net.model.named_modules()) \
                else None
            what = f"{where} ({original_class(module).__name__})" if module is not None \
                else where
            raise WidthSearchError(
                f"the supernet at full width does not compute the model's output: it first "
                f"differs at {what}. A layer rule or layer spec does not fit this layer; "
                "register one (docs/rules.md)")
        if self.training_error is None:
            error = _training_error(net.model, x)
            if error is not None:
                raise WidthSearchError(
                    f"the model runs in training mode but the supernet does not: {error}")


def _training_error(model: nn.Module, x: torch.Tensor) -> str | None:
    """Run one training-mode forward (batch of at least 2) leaving no trace: buffers, modes
    and the random number generators are restored. Returns the error, if any."""
    batch = x if x.shape[0] > 1 else x.repeat(2, *(1,) * (x.dim() - 1))
    buffers = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
               if not isinstance(v, nn.Parameter)}
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.train()
            model(batch)
    except Exception as err:  # the construct that fails is what the message reports
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            current = model.state_dict(keep_vars=True)
            for k, v in buffers.items():
                current[k].copy_(v)
    return None
