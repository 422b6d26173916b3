"""Dynamic layers: a layer keeps its own class and its own `forward`, and its channel-sized
attributes resolve to the active channels.

A sliced module's class is swapped (in place) for a subclass of its own class whose
`weight`, `bias`, running statistics, `out_channels`, `num_features`, `groups`... are
properties that return the active slices and sizes. The layer's own forward runs unchanged,
so a subclass with a forward of its own (an activation fused into a BatchNorm, a
weight-standardized conv, "same" padding) computes what it computes at full width, on
fewer channels. The Parameters and buffers stay where they are: state dicts, optimizers and
checkpoints keep the original names and tensors.

What a layer class slices is one registration in `LAYERS` (a `LayerSpec`): which tensors
follow the input or output channels along which axes, and which constructor sizes follow
them. The cost model reads the same spec, so a new layer type is one `register_layer` call.
A per-channel tensor of a subclass that no spec names (a gain of the output channels) follows
the output channels when its first axis has their size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .errors import WidthSearchError
from .patterns import Selection, selection_size

Role = str | None
"""What an axis of a sliced tensor follows: "out", "in", "in_group" (the input channels
inside one conv group) or None (unchanged)."""

Cut = tuple[tuple[int, Selection], ...]
"""The selections a tensor takes, as (axis, selection) pairs."""


def take(t: torch.Tensor, dim: int, sel: Selection) -> torch.Tensor:
    """The entries `sel` of `t` along `dim`: a view for a slice, a gather otherwise."""
    if isinstance(sel, slice):
        if sel.start == 0 and sel.stop == t.shape[dim]:
            return t
        return t.narrow(dim, sel.start, sel.stop - sel.start)
    return t.index_select(dim, sel)


def cut(t: torch.Tensor, cuts: Cut) -> torch.Tensor:
    for axis, sel in cuts:
        t = take(t, axis, sel)
    return t


# -- the layer table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """How one layer class is sliced.

    tensors: (module, mode) -> {tensor name: role of each axis}; `mode` is the binding kind
        discovery gave the layer ("conv", "depthwise", "grouped", "groupwise", ...).
    sizes: (module, mode, active inputs, active outputs) -> {attribute: active value}.
    size_names: every attribute `sizes` may set (an export's sidecar may set only these).
    macs_tensor: MACs = output positions x active entries of this tensor (None: no MACs).
    """

    tensors: Callable[[nn.Module, str], dict[str, tuple[Role, ...]]]
    sizes: Callable[[nn.Module, str, int, int], dict[str, Any]]
    size_names: tuple[str, ...]
    macs_tensor: str | None = None


@dataclass
class LayerTable:
    """Layer class -> LayerSpec, looked up along the MRO (a subclass inherits its base's)."""

    specs: dict[type, LayerSpec] = field(default_factory=dict)

    def register(self, cls: type, spec: LayerSpec) -> None:
        self.specs[cls] = spec

    def lookup(self, module: nn.Module | type) -> LayerSpec | None:
        cls = module if isinstance(module, type) else type(module)
        base = getattr(cls, "_widthsearch_base", None)  # a swapped class: its original
        for c in (base or cls).__mro__:
            if c in self.specs:
                return self.specs[c]
        return None

    def copy(self) -> LayerTable:
        return LayerTable(dict(self.specs))


def _conv_tensors(m: nn.Module, mode: str) -> dict[str, tuple[Role, ...]]:
    rest = (None,) * (m.weight.dim() - 2)
    inputs = {"depthwise": None, "grouped": None, "groupwise": "in_group"}.get(mode, "in")
    return {"weight": ("out", inputs, *rest), "bias": ("out",)}


def _conv_sizes(m: nn.Module, mode: str, n_in: int, n_out: int) -> dict[str, Any]:
    if mode in ("depthwise", "grouped"):  # in = out: k whole conv groups are kept
        per_group = m.__dict__["in_channels"] // m.__dict__["groups"]
        return {"in_channels": n_out, "out_channels": n_out, "groups": n_out // per_group}
    return {"in_channels": n_in, "out_channels": n_out}


def _per_channel(*names: str) -> Callable[[nn.Module, str], dict[str, tuple[Role, ...]]]:
    return lambda m, mode: {n: ("out",) for n in names}


def _group_norm_sizes(m: nn.Module, mode: str, n_in: int, n_out: int) -> dict[str, Any]:
    per_group = m.__dict__["num_channels"] // m.__dict__["num_groups"]
    return {"num_channels": n_out, "num_groups": n_out // per_group}


CONV = LayerSpec(_conv_tensors, _conv_sizes, ("in_channels", "out_channels", "groups"),
                 macs_tensor="weight")
LINEAR = LayerSpec(lambda m, mode: {"weight": ("out", "in"), "bias": ("out",)},
                   lambda m, mode, i, o: {"in_features": i, "out_features": o},
                   ("in_features", "out_features"), macs_tensor="weight")
BATCHNORM = LayerSpec(_per_channel("weight", "bias", "running_mean", "running_var"),
                      lambda m, mode, i, o: {"num_features": o}, ("num_features",))
GROUPNORM = LayerSpec(_per_channel("weight", "bias"), _group_norm_sizes,
                      ("num_channels", "num_groups"))
LAYERNORM = LayerSpec(_per_channel("weight", "bias"),
                      lambda m, mode, i, o: {"normalized_shape": (o,)}, ("normalized_shape",))


def default_layers() -> LayerTable:
    """The shipped specs: convolutions (1-3 d), linear, batch / group / layer norms."""
    table = LayerTable()
    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        table.register(cls, CONV)
    table.register(nn.Linear, LINEAR)
    table.register(nn.modules.batchnorm._BatchNorm, BATCHNORM)
    table.register(nn.GroupNorm, GROUPNORM)
    table.register(nn.LayerNorm, LAYERNORM)
    return table


LAYERS = default_layers()


def register_layer(cls: type, spec: LayerSpec, *, rule: Callable[..., Any] | None = None,
                   layers: LayerTable | None = None, rules: Any = None) -> None:
    """Support a new layer class: how it slices and (optionally) its discovery rule.

    `rule` is registered in the discovery rule table (`rules`, default the shared one); a
    subclass of a supported layer needs neither: it inherits its base's spec and rule.
    """
    (layers or LAYERS).register(cls, spec)
    if rule is not None:
        from .discovery import RULES

        (rules or RULES).register(cls)(rule)


# -- the slicing state of one module ---------------------------------------------------------------
class Slices:
    """The active cuts and sizes of one module (kept in the module's `__dict__`).

    During a forward that gathers (a non-contiguous selection), each sliced tensor is cut
    once and reused; gathered buffers (running statistics) are written back afterwards, so
    a BatchNorm's update of the active channels is kept.
    """

    def __init__(self) -> None:
        self.layer: tuple[LayerSpec, str] | None = None  # (spec, mode) of a bound layer
        self.layer_axes: dict[str, tuple[Role, ...]] = {}  # layer tensor -> role per axis
        self.param_axes: dict[str, int] = {}               # bound per-channel tensor -> axis
        self.cuts: dict[str, Cut] = {}
        self.sizes: dict[str, Any] = {}
        self.gathers = False
        self.open: dict[str, torch.Tensor] | None = None

    def set_layer(self, module: nn.Module, in_sel: Selection, out_sel: Selection) -> None:
        assert self.layer is not None
        spec, mode = self.layer
        by_role: dict[str, Selection] = {"out": out_sel, "in": in_sel}
        if any("in_group" in roles for roles in self.layer_axes.values()):
            by_role["in_group"] = _first_group(in_sel, module.__dict__["groups"])
        for name, roles in self.layer_axes.items():
            self.cuts[name] = tuple((axis, by_role[r]) for axis, r in enumerate(roles)
                                    if r is not None)
        self.sizes = spec.sizes(module, mode, selection_size(in_sel), selection_size(out_sel))
        self._refresh()

    def set_tensor(self, name: str, sel: Selection) -> None:
        self.cuts[name] = ((self.param_axes[name], sel),)
        self._refresh()

    def _refresh(self) -> None:
        self.gathers = any(not isinstance(s, slice) for c in self.cuts.values() for _, s in c)


def _first_group(sel: Selection, groups: int) -> Selection:
    """The input channels a block-major selection takes inside the first conv group."""
    n = selection_size(sel) // groups
    if isinstance(sel, slice):
        return slice(sel.start, sel.start + n)
    return sel[:n]


def _full(module: nn.Module, name: str) -> torch.Tensor | None:
    if name in module._parameters:
        return module._parameters[name]
    return module._buffers.get(name)


def _extras(module: nn.Module, spec: LayerSpec, mode: str) -> dict[str, tuple[Role, ...]]:
    """Per-channel tensors of a subclass no spec names: they follow the output channels
    when their first axis has that size (a weight-standardized conv's gain)."""
    named = spec.tensors(module, mode)
    out_size = _out_size(module, spec, mode)
    extras = {}
    for name, t in [*module._parameters.items(), *module._buffers.items()]:
        if name in named or t is None or t.dim() == 0:
            continue
        if t.shape[0] == out_size:
            extras[name] = ("out", *(None,) * (t.dim() - 1))
    return extras


def layer_axes(module: nn.Module, spec: LayerSpec, mode: str) -> dict[str, tuple[Role, ...]]:
    """Every tensor of a bound layer that follows its channels, with the role of each axis."""
    axes = {**spec.tensors(module, mode), **_extras(module, spec, mode)}
    return {n: r for n, r in axes.items() if _full(module, n) is not None}


def full_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """Parameter or buffer `name` at full size (the attribute may return the active slice)."""
    return _full(module, name)


def _out_size(module: nn.Module, spec: LayerSpec, mode: str) -> int:
    for name, roles in spec.tensors(module, mode).items():
        t = _full(module, name)
        if t is not None and "out" in roles:
            return t.shape[roles.index("out")]
    return -1


class _SlicedForward:
    """The first base of a swapped class: runs the layer's own forward around the cuts."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        slices: Slices = self.__dict__["_widthsearch_slices"]
        if not slices.gathers or slices.open is not None:
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        slices.open = {}
        try:
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        finally:
            opened, slices.open = slices.open, None
            _write_back(self, slices, opened)  # type: ignore[arg-type]


def _write_back(module: nn.Module, slices: Slices, opened: dict[str, torch.Tensor]) -> None:
    """Copy gathered buffers (updated in place by the forward) into the full tensors."""
    with torch.no_grad():
        for name, value in opened.items():
            full = module._buffers.get(name)
            cuts = slices.cuts.get(name, ())
            if full is None or len(cuts) != 1 or isinstance(cuts[0][1], slice):
                continue
            axis, sel = cuts[0]
            full.index_copy_(axis, sel, value)


def _tensor_property(name: str) -> property:
    def get(module: nn.Module) -> torch.Tensor | None:
        full = _full(module, name)
        slices: Slices = module.__dict__["_widthsearch_slices"]
        cuts = slices.cuts.get(name)
        if full is None or not cuts:
            return full
        if slices.open is None:
            return cut(full, cuts)
        value = slices.open.get(name)
        if value is None:
            value = slices.open[name] = cut(full, cuts)
        return value

    return property(get)


def _size_property(name: str) -> property:
    def get(module: nn.Module) -> Any:
        sizes = module.__dict__["_widthsearch_slices"].sizes
        return sizes[name] if name in sizes else module.__dict__[name]

    return property(get)


class SlicedClasses:
    """The swapped classes one supernet made, one per (class, sliced attributes)."""

    def __init__(self) -> None:
        self._classes: dict[tuple[type, frozenset[str], frozenset[str]], type] = {}

    def of(self, base: type, tensors: frozenset[str], sizes: frozenset[str]) -> type:
        key = (base, tensors, sizes)
        if key not in self._classes:
            attrs: dict[str, Any] = {n: _tensor_property(n) for n in tensors}
            attrs.update({n: _size_property(n) for n in sizes})
            attrs.update(_widthsearch_base=base, __module__=__name__,
                         __qualname__=f"Dynamic{base.__qualname__}")
            self._classes[key] = type(f"Dynamic{base.__name__}", (_SlicedForward, base), attrs)
        return self._classes[key]


def slices_of(module: nn.Module) -> Slices | None:
    return module.__dict__.get("_widthsearch_slices")


def original_class(module: nn.Module) -> type:
    return type(module).__dict__.get("_widthsearch_base", type(module))


def make_sliced(module: nn.Module, classes: SlicedClasses, *,
                layer: tuple[LayerSpec, str] | None = None,
                tensors: Mapping[str, int] | None = None) -> Slices:
    """Swap `module`'s class so that the layer tensors of `layer` (a spec and the binding
    mode) and the per-channel `tensors` ({name: axis}) resolve to their active slices."""
    slices = slices_of(module) or Slices()
    base = original_class(module)
    for name, axis in (tensors or {}).items():
        t = _full(module, name)
        assert t is not None
        slices.param_axes[name] = axis
        slices.cuts[name] = ((axis, slice(0, t.shape[axis])),)
    if layer is not None:
        spec, mode = layer
        for name in spec.size_names:
            if name not in module.__dict__:
                raise WidthSearchError(f"{base.__name__} has no attribute {name!r} to slice")
        slices.layer = layer
        slices.layer_axes = {n: r for n, r in layer_axes(module, spec, mode).items()
                             if n not in slices.param_axes}
    size_names = frozenset(slices.layer[0].size_names) if slices.layer else frozenset()
    module.__dict__["_widthsearch_slices"] = slices
    names = frozenset(slices.layer_axes) | frozenset(slices.param_axes)
    module.__class__ = classes.of(base, names, size_names)
    return slices


# -- export ------------------------------------------------------------------------------------
def materialize(module: nn.Module) -> dict[str, Any]:
    """Turn a sliced module (of a copied model) into its original class at its active sizes,
    in place; returns what `resize` needs to rebuild it ({"attrs", "tensors"})."""
    slices = slices_of(module)
    assert slices is not None
    tensors: dict[str, list[int]] = {}
    for name, cuts in slices.cuts.items():
        full = _full(module, name)
        if full is None:
            continue
        value = cut(full, cuts).detach().clone()
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(value, requires_grad=full.requires_grad)
        else:
            module._buffers[name] = value
        tensors[name] = list(value.shape)
    for name, value in slices.sizes.items():
        module.__dict__[name] = value
    module.__class__ = original_class(module)
    del module.__dict__["_widthsearch_slices"]
    return {"attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in slices.sizes.items()},
            "tensors": tensors}


def sliced_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if slices_of(m) is not None:
            yield name, m


def resize(module: nn.Module, spec: Mapping[str, Any], layers: LayerTable | None = None, *,
           where: str = "") -> None:
    """Give `module` the sizes and (uninitialized) tensor shapes an export recorded, in place.

    Used to rebuild an exported model from its JSON sidecar before loading its weights; only
    the sizes its layer spec declares may be set.
    """
    attrs = dict(spec.get("attrs", {}))
    if attrs:
        layer = (layers or LAYERS).lookup(module)
        allowed = set(layer.size_names) if layer else set()
        unknown = set(attrs) - allowed
        if unknown:
            raise WidthSearchError(
                f"cannot set {sorted(unknown)} on {type(module).__name__}: not a size its "
                "layer spec declares")
    for name, value in attrs.items():
        if not (isinstance(value, int) or (isinstance(value, list) and all(
                isinstance(v, int) for v in value))):
            raise WidthSearchError(f"size {name}={value!r} is not an integer or a list of them")
        module.__dict__[name] = tuple(value) if isinstance(value, list) else value
    layer = (layers or LAYERS).lookup(module)
    roles = layer.tensors(module, "") if layer else {}
    for name, shape in spec.get("tensors", {}).items():
        keep = [a for a, r in enumerate(roles.get(name, ())) if r is None]
        resize_tensor(module, name, shape, keep, where=where)


def resize_tensor(module: nn.Module, name: str, shape: list[int], keep: Sequence[int] = (),
                  *, where: str = "") -> None:
    """Replace parameter or buffer `name` of `module` by an uninitialized one of `shape`.

    A slimmed tensor only shrinks, and keeps the axes in `keep` (a kernel's) as they are: a
    full-size model that does not match the export is refused, not silently reshaped.
    """
    old = _full(module, name)
    if old is None:
        raise WidthSearchError(f"{type(module).__name__} has no tensor {name!r} to resize")
    fits = isinstance(shape, list) and len(shape) == old.dim() and all(
        isinstance(n, int) and 0 <= n <= full and (a not in keep or n == full)
        for a, (n, full) in enumerate(zip(shape, old.shape, strict=True)))
    if not fits:
        raise WidthSearchError(
            f"the export does not fit the model: {where}.{name} ({type(module).__name__}) has "
            f"shape {list(old.shape)}, the export {shape}; pass the full-size model the "
            "subnet was exported from")
    new = torch.empty(shape, dtype=old.dtype)
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = new
