"""Dynamic versions of the layers that own channel-sized tensors.

A dynamic module shares its Parameters and buffers with the module it replaces (so state
dicts, optimizers and checkpoints keep the original names) and runs on the active channel
indices the Supernet sets on it: narrowed views when the indices are contiguous,
index_select otherwise. `materialize()` returns a module of the original class with
physically smaller tensors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .patterns import Selection, selection_size


def take(t: torch.Tensor, dim: int, sel: Selection) -> torch.Tensor:
    """The entries `sel` of `t` along `dim`: a view for a slice, a gather otherwise."""
    if isinstance(sel, slice):
        if sel.start == 0 and sel.stop == t.shape[dim]:
            return t
        return t.narrow(dim, sel.start, sel.stop - sel.start)
    return t.index_select(dim, sel)


def _maybe(t: torch.Tensor | None, dim: int, sel: Selection) -> torch.Tensor | None:
    return None if t is None else take(t, dim, sel)


def rebuild(template: nn.Module, attrs: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A module of `template`'s class with new attributes and freshly owned tensors."""
    new = copy.copy(template)
    new._parameters = {}
    new._buffers = {}
    new._modules = dict(template._modules)
    new._non_persistent_buffers_set = set(template._non_persistent_buffers_set)
    for key, value in attrs.items():
        setattr(new, key, value)
    for name, param in template._parameters.items():
        if param is None:
            new._parameters[name] = None
        else:
            value = tensors[name].detach().clone()
            new._parameters[name] = nn.Parameter(value, requires_grad=param.requires_grad)
    for name, buf in template._buffers.items():
        new._buffers[name] = None if buf is None else tensors.get(name, buf).detach().clone()
    return new


class DynamicModule(nn.Module):
    """Base class: shares the template's tensors and holds the active selections."""

    kind = "dynamic"

    def __init__(self, template: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "template", template)  # kept outside the module tree
        for name, param in template._parameters.items():
            self.register_parameter(name, param)
        for name, buf in template._buffers.items():
            persistent = name not in template._non_persistent_buffers_set
            self.register_buffer(name, buf, persistent=persistent)
        self.in_sel: Selection = slice(0, 0)
        self.out_sel: Selection = slice(0, 0)

    def set_selection(self, in_sel: Selection, out_sel: Selection) -> None:
        self.in_sel, self.out_sel = in_sel, out_sel

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**{k: v for k, v in self._parameters.items() if v is not None},
                **{k: v for k, v in self._buffers.items() if v is not None}}

    def materialize(self) -> nn.Module:  # pragma: no cover - every subclass overrides
        raise TypeError(f"{type(self).__name__} cannot be materialized")

    def shape_spec(self) -> dict[str, Any]:
        """The constructor-level attributes that differ from the template, for rebuilding."""
        return {}

    def extra_repr(self) -> str:
        return f"{type(self.template).__name__}, in={selection_size(self.in_sel)}, " \
               f"out={selection_size(self.out_sel)}"


class DynamicConv2d(DynamicModule):
    """A Conv2d whose in/out channels are the active selections.

    - dense (groups = 1): slices both axes of the weight;
    - `depthwise` (in = out, any groups): in and out share one selection of whole conv groups,
      so k kept groups of `per_group` channels run as a conv with groups = k (depthwise:
      per_group = 1);
    - `groupwise` (grouped, in != out): every conv group is kept and the same channels are
      taken inside each, so groups stays and the weight's input axis takes the offsets the
      selection has inside the first group.
    """

    kind = "conv"

    def __init__(self, template: nn.Conv2d, depthwise: bool = False,
                 groupwise: bool = False) -> None:
        super().__init__(template)
        self.depthwise = depthwise
        self.groupwise = groupwise
        self.per_group = template.in_channels // template.groups

    def _in_offsets(self) -> Selection:
        """The input channels the active selection takes inside one conv group."""
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        n = selection_size(self.in_sel) // conv.groups
        if isinstance(self.in_sel, slice):
            return slice(self.in_sel.start, self.in_sel.start + n)
        return self.in_sel[:n]

    def _weight(self) -> torch.Tensor:
        weight = take(self.weight, 0, self.out_sel)
        if self.groupwise:
            return take(weight, 1, self._in_offsets())
        if not self.depthwise:
            return take(weight, 1, self.in_sel)
        return weight

    def _groups(self) -> int:
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        if self.depthwise:
            return selection_size(self.out_sel) // self.per_group
        return conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv2d = self.template  # type: ignore[assignment]
        weight, groups = self._weight(), self._groups()
        bias = _maybe(self.bias, 0, self.out_sel)
        if conv.padding_mode != "zeros":
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, groups)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)

    def shape_spec(self) -> dict[str, Any]:
        out = selection_size(self.out_sel)
        spec = {"in_channels": out if self.depthwise else selection_size(self.in_sel),
                "out_channels": out}
        if self.depthwise:
            spec["groups"] = self._groups()
        return spec

    def materialize(self) -> nn.Module:
        tensors = {"weight": self._weight()}
        if self.bias is not None:
            tensors["bias"] = take(self.bias, 0, self.out_sel)
        return rebuild(self.template, self.shape_spec(), tensors)


class DynamicLinear(DynamicModule):
    """A Linear over the active input features (channels x spatial after a flatten)."""

    kind = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = take(take(self.weight, 0, self.out_sel), 1, self.in_sel)
        return F.linear(x, weight, _maybe(self.bias, 0, self.out_sel))

    def shape_spec(self) -> dict[str, Any]:
        return {"in_features": selection_size(self.in_sel),
                "out_features": selection_size(self.out_sel)}

    def materialize(self) -> nn.Module:
        tensors = {"weight": take(take(self.weight, 0, self.out_sel), 1, self.in_sel)}
        if self.bias is not None:
            tensors["bias"] = take(self.bias, 0, self.out_sel)
        return rebuild(self.template, self.shape_spec(), tensors)


class _DynamicNorm(DynamicModule):
    """Shared slicing of per-channel affine parameters and statistics."""

    def _sliced(self) -> dict[str, torch.Tensor]:
        return {k: (v if v.dim() == 0 else take(v, 0, self.out_sel))
                for k, v in self._tensors().items()}


class DynamicBatchNorm(_DynamicNorm):
    """BatchNorm on the active channels; running statistics of those channels are updated."""

    kind = "batchnorm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self.template  # type: ignore[assignment]
        sel = self.out_sel
        factor = 0.0 if bn.momentum is None else bn.momentum
        if self.training and bn.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch_stats = self.training or self.running_mean is None
        mean = _maybe(self.running_mean, 0, sel)
        var = _maybe(self.running_var, 0, sel)
        track = not self.training or bn.track_running_stats
        out = F.batch_norm(
            x, mean if track else None, var if track else None,
            _maybe(self.weight, 0, sel), _maybe(self.bias, 0, sel),
            use_batch_stats, factor, bn.eps,
        )
        if use_batch_stats and track and mean is not None and not isinstance(sel, slice):
            with torch.no_grad():  # index_select copied the stats: write the update back
                self.running_mean.index_copy_(0, sel, mean)
                self.running_var.index_copy_(0, sel, var)
        return out

    def shape_spec(self) -> dict[str, Any]:
        return {"num_features": selection_size(self.out_sel)}

    def materialize(self) -> nn.Module:
        return rebuild(self.template, self.shape_spec(), self._sliced())


class DynamicGroupNorm(_DynamicNorm):
    """GroupNorm over whole groups of the active channels (widths keep the group size)."""

    kind = "groupnorm"

    def _groups(self) -> int:
        gn: nn.GroupNorm = self.template  # type: ignore[assignment]
        return selection_size(self.out_sel) // (gn.num_channels // gn.num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn: nn.GroupNorm = self.template  # type: ignore[assignment]
        return F.group_norm(x, self._groups(), _maybe(self.weight, 0, self.out_sel),
                            _maybe(self.bias, 0, self.out_sel), gn.eps)

    def shape_spec(self) -> dict[str, Any]:
        return {"num_channels": selection_size(self.out_sel), "num_groups": self._groups()}

    def materialize(self) -> nn.Module:
        return rebuild(self.template, self.shape_spec(), self._sliced())


class DynamicLayerNorm(_DynamicNorm):
    """LayerNorm over the last (channel) axis at its active width; `channels_first` for a
    LayerNorm subclass that normalizes axis 1 of an NCHW tensor (ConvNeXt's LayerNorm2d)."""

    kind = "layernorm"

    def __init__(self, template: nn.LayerNorm, channels_first: bool = False) -> None:
        super().__init__(template)
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln: nn.LayerNorm = self.template  # type: ignore[assignment]
        if self.channels_first:
            x = x.movedim(1, -1)
        y = F.layer_norm(x, (selection_size(self.out_sel),),
                         _maybe(self.weight, 0, self.out_sel),
                         _maybe(self.bias, 0, self.out_sel), ln.eps)
        return y.movedim(-1, 1) if self.channels_first else y

    def shape_spec(self) -> dict[str, Any]:
        return {"normalized_shape": (selection_size(self.out_sel),)}

    def materialize(self) -> nn.Module:
        return rebuild(self.template, self.shape_spec(), self._sliced())


def make_dynamic(kind: str, module: nn.Module) -> DynamicModule:
    """The dynamic replacement for a discovered binding kind."""
    if kind == "conv":
        return DynamicConv2d(module)  # type: ignore[arg-type]
    if kind in ("depthwise", "grouped"):
        return DynamicConv2d(module, depthwise=True)  # type: ignore[arg-type]
    if kind == "groupwise":
        return DynamicConv2d(module, groupwise=True)  # type: ignore[arg-type]
    if kind == "layernorm2d":
        return DynamicLayerNorm(module, channels_first=True)  # type: ignore[arg-type]
    builders = {"linear": DynamicLinear, "batchnorm": DynamicBatchNorm,
                "groupnorm": DynamicGroupNorm, "layernorm": DynamicLayerNorm}
    return builders[kind](module)


class DynamicParameter:
    """A parameter (or buffer) the model scales or shifts its features by per channel: a
    ConvNeXt layer scale, a position embedding. It stays on its module (state dict keys
    unchanged); the module's class is swapped for a subclass whose attribute of that name
    returns the active slice along `axis`, the way torch.nn.utils.parametrize works.
    """

    kind = "parameter"

    def __init__(self, owner: nn.Module, attr: str, axis: int) -> None:
        self.owner, self.attr, self.axis = owner, attr, axis
        if "_widthsearch_slices" not in owner.__dict__:
            base = type(owner)
            owner.__class__ = type(f"Sliced{base.__name__}", (base,), {"_widthsearch_base": base})
            owner.__dict__["_widthsearch_slices"] = {}

        def active(module: nn.Module, attr: str = attr) -> torch.Tensor:
            tensor = module._parameters.get(attr)
            if tensor is None:
                tensor = module._buffers[attr]
            axis, sel = module.__dict__["_widthsearch_slices"][attr]
            return take(tensor, axis, sel)

        setattr(type(owner), attr, property(active))
        self.set_selection(slice(0, self.full.shape[axis]), slice(0, self.full.shape[axis]))

    @property
    def full(self) -> torch.Tensor:
        t = self.owner._parameters.get(self.attr)
        return t if t is not None else self.owner._buffers[self.attr]

    def set_selection(self, in_sel: Selection, out_sel: Selection) -> None:
        self.owner.__dict__["_widthsearch_slices"][self.attr] = (self.axis, out_sel)

    def materialize(self) -> torch.Tensor:
        """The active slice as a tensor of its own (a Parameter if the original is one)."""
        full = self.full
        _, sel = self.owner.__dict__["_widthsearch_slices"][self.attr]
        value = take(full, self.axis, sel).detach().clone()
        if isinstance(full, nn.Parameter):
            return nn.Parameter(value, requires_grad=full.requires_grad)
        return value

    def shape_spec(self) -> dict[str, Any]:
        _, sel = self.owner.__dict__["_widthsearch_slices"][self.attr]
        shape = list(self.full.shape)
        shape[self.axis] = selection_size(sel)
        return {"shape": shape}


def unslice(module: nn.Module) -> nn.Module:
    """Give every module that DynamicParameter changed its original class back (in place)."""
    for m in module.modules():
        base = type(m).__dict__.get("_widthsearch_base")
        if base is not None:
            m.__class__ = base
            m.__dict__.pop("_widthsearch_slices", None)
    return module


def resize_tensor(model: nn.Module, name: str, shape: list[int]) -> None:
    """Replace parameter or buffer `name` of `model` by an uninitialized one of `shape`."""
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if attr in owner._parameters and owner._parameters[attr] is not None:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(torch.empty(shape, dtype=old.dtype),
                                               requires_grad=old.requires_grad)
    elif attr in owner._buffers and owner._buffers[attr] is not None:
        owner._buffers[attr] = torch.empty(shape, dtype=owner._buffers[attr].dtype)
    else:
        raise AttributeError(name)


def shrink(module: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """A module of the same class at the shapes `spec` gives, with uninitialized tensors.

    Used to rebuild an exported model from its JSON sidecar before loading its weights.
    """
    attrs = dict(spec)
    if "normalized_shape" in attrs:
        attrs["normalized_shape"] = tuple(attrs["normalized_shape"])
    probe = copy.copy(module)
    probe.__dict__ = {**module.__dict__, **attrs}
    tensors = {name: torch.empty(_shape_of(probe, name, t)) for name, t in
               {**module._parameters, **module._buffers}.items() if t is not None}
    return rebuild(module, attrs, tensors)


def _shape_of(m: nn.Module, name: str, t: torch.Tensor) -> tuple[int, ...]:
    if t.dim() == 0:
        return ()
    if isinstance(m, nn.Conv2d) and name == "weight":
        return (m.out_channels, m.in_channels // m.groups, *t.shape[2:])
    if isinstance(m, nn.Conv2d):
        return (m.out_channels,)
    if isinstance(m, nn.Linear) and name == "weight":
        return (m.out_features, m.in_features)
    if isinstance(m, nn.Linear):
        return (m.out_features,)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return (m.num_features,)
    if isinstance(m, nn.GroupNorm):
        return (m.num_channels,)
    if isinstance(m, nn.LayerNorm):
        return tuple(m.normalized_shape)
    raise TypeError(f"cannot resize {type(m).__name__}.{name}")
