"""Analytic MACs, parameter count and peak activation memory, vectorized over configs.

Every cost is a function of the groups' widths that discovery recorded at trace time:
- MACs: sum over conv / linear calls of output positions * the active entries of the layer's
  weight (its layer spec says which axes follow which channels: out * in / groups * kernel
  for a conv, out * channels per conv group * kernel for a depthwise one), plus the MACs
  discovery measured for ops no layer record models (attention, matmul; their channels are
  fixed). Norms, activations, pooling and additions are not
  counted, as torch.utils.flop_counter does not count them.
- params: every parameter of the model; the tensors a layer spec slices follow their widths.
- memory: the peak activation memory, the largest over ops of the bytes an op reads plus the
  bytes it writes, at fp32 and batch 1 (weights excluded).
Each is a sum of products of two affine forms in the width vector (or a max of affine forms),
so a batch of configurations costs two matrix products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch.nn as nn

from .discovery import ChannelGraph, GroupLayout, Mix, Part, TensorInfo
from .dynamic import LAYERS, LayerTable, Role, full_tensor, layer_axes
from .space import WidthSpace

BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class Cost:
    """Absolute costs of one configuration: MACs, parameters, peak activation bytes."""

    macs: int
    params: int
    memory: int

    def ratio(self, reference: Cost) -> dict[str, float]:
        """Each cost as a fraction of `reference` (usually the full model)."""
        return {
            "macs": self.macs / reference.macs if reference.macs else 0.0,
            "params": self.params / reference.params if reference.params else 0.0,
            "memory": self.memory / reference.memory if reference.memory else 0.0,
        }

    def get(self, metric: str) -> int:
        if metric not in COST_METRICS:
            raise KeyError(metric)
        return int(getattr(self, metric))


COST_METRICS = ("macs", "params", "memory")


class _Forms:
    """Affine forms a.w + c over the width vector, stacked as columns."""

    def __init__(self, n_groups: int) -> None:
        self.coef: list[np.ndarray] = []
        self.const: list[float] = []
        self.n = n_groups

    def add(self, coef: np.ndarray, const: float) -> None:
        self.coef.append(coef)
        self.const.append(const)

    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.coef:
            return np.zeros((self.n, 0)), np.zeros(0)
        return np.stack(self.coef, axis=1), np.asarray(self.const, dtype=np.float64)


class CostModel:
    """Costs of width configurations; `evaluate(widths)` takes an (n, groups) array."""

    def __init__(self, graph: ChannelGraph, space: WidthSpace, model: nn.Module,
                 layers: LayerTable | None = None) -> None:
        self.space = space
        self._index = {name: i for i, name in enumerate(space.names)}
        self._size = np.array([g.size for g in space.groups], dtype=np.float64)
        layers = layers or LAYERS
        self._build_macs(graph, model, layers)
        self._build_params(graph, model, layers)
        self._build_memory(graph)
        self.full = self.cost(space.max())

    # -- forms ---------------------------------------------------------------------------
    def _channels(self, layout: GroupLayout | None, full: int) -> tuple[np.ndarray, float]:
        """The active channel entries of a layout as an affine form (constant if unfollowed)."""
        coef = np.zeros(len(self._size))
        if layout is None:
            return coef, float(full)
        self._add_segments(coef, layout.segments, float(layout.inner))
        return coef, 0.0

    def _add_segments(self, coef: np.ndarray, segments: tuple, weight: float) -> None:
        for seg in segments:
            if isinstance(seg, Mix):
                for part in seg.parts:
                    self._add_segments(coef, part, weight)
            elif isinstance(seg, Part):  # a part holds 1/count of its group's width
                coef[self._index[seg.space]] += weight / seg.count
            else:
                coef[self._index[seg]] += weight

    def _numel(self, t: TensorInfo) -> tuple[np.ndarray, float]:
        """Per-sample elements of a traced tensor as an affine form of the widths."""
        if t.layout is None:
            return np.zeros(len(self._size)), float(t.per_sample)
        coef, _ = self._channels(t.layout, 0)
        full_entries = float(coef @ self._size)
        return coef * (t.per_sample / full_entries), 0.0

    def _product(self, roles: tuple[Role, ...], shape: tuple[int, ...],
                 in_layout: GroupLayout | None, out_layout: GroupLayout | None,
                 groups: int) -> tuple[tuple[np.ndarray, float], tuple[np.ndarray, float], float]:
        """A sliced tensor's active entries as (left form) * (right form) * scale."""
        forms, scale = [], 1.0
        for axis, role in enumerate(roles):
            n = shape[axis]
            if role is None:
                scale *= n
            elif role == "out":
                forms.append(self._channels(out_layout, n))
            elif role == "in":
                forms.append(self._channels(in_layout, n))
            else:  # "in_group": the input channels of one conv group
                coef, const = self._channels(in_layout, n * groups)
                forms.append((coef / groups, const / groups))
        if len(forms) > 2:
            raise ValueError(f"a tensor following {len(forms)} channel axes is not supported")
        one = (np.zeros(len(self._size)), 1.0)
        forms += [one] * (2 - len(forms))
        return forms[0], forms[1], scale

    def _build_macs(self, graph: ChannelGraph, model: nn.Module, layers: LayerTable) -> None:
        left, right, scale = _Forms(len(self._size)), _Forms(len(self._size)), []
        const = 0.0
        for layer in graph.layers:
            module = model.get_submodule(layer.name)
            spec, binding = layers.lookup(module), graph.bindings.get(layer.name)
            weight = full_tensor(module, spec.macs_tensor) if spec and spec.macs_tensor else None
            if weight is None:
                raise ValueError(f"{layer.name}: a layer record needs a layer spec with a "
                                 "MACs tensor")
            if binding is None:  # a fixed layer
                const += layer.positions * weight.numel()
                continue
            roles = spec.tensors(module, binding.kind)[spec.macs_tensor]
            a, b, s = self._product(roles, tuple(weight.shape), layer.inputs.layout,
                                    layer.output.layout, layer.groups)
            left.add(*a)
            right.add(*b)
            scale.append(layer.positions * s)
        self._macs = (*left.matrices(), *right.matrices(), np.asarray(scale, dtype=np.float64))
        self._macs_const = const + float(sum(r.macs for r in graph.fixed_macs))

    def _build_params(self, graph: ChannelGraph, model: nn.Module, layers: LayerTable) -> None:
        left, right, scale = _Forms(len(self._size)), _Forms(len(self._size)), []
        bound_full = 0
        one = (np.zeros(len(self._size)), 1.0)
        per_channel = set(graph.parameters)
        for b in graph.bindings.values():
            module = model.get_submodule(b.name)
            spec = layers.lookup(module)
            assert spec is not None
            groups = module.__dict__.get("groups", 1)
            for name, roles in layer_axes(module, spec, b.kind).items():
                tensor = module._parameters.get(name)
                if tensor is None or f"{b.name}.{name}" in per_channel:
                    continue
                lf, rf, s = self._product(roles, tuple(tensor.shape), b.in_layout,
                                          b.out_layout, groups)
                left.add(*lf)
                right.add(*rf)
                scale.append(s)
                bound_full += tensor.numel()
        for pb in graph.parameters.values():  # per-channel parameters (layer scales)
            tensor = _own_parameter(model, pb.name)
            if tensor is None:  # a buffer: not a parameter
                continue
            full = tensor.shape[pb.axis]
            left.add(*self._channels(pb.layout, 0))
            right.add(*one)
            scale.append(tensor.numel() / full)
            bound_full += tensor.numel()
        self._params = (*left.matrices(), *right.matrices(), np.asarray(scale, dtype=np.float64))
        self._params_const = float(graph.params_total - bound_full)

    def _build_memory(self, graph: ChannelGraph) -> None:
        forms = _Forms(len(self._size))
        for op in graph.ops:
            coef, const = np.zeros(len(self._size)), 0.0
            for t in op.tensors:
                c, k = self._numel(t)
                coef, const = coef + c, const + k
            forms.add(coef, const)
        self._memory = forms.matrices()

    # -- evaluation ------------------------------------------------------------------------
    @staticmethod
    def _products(widths: np.ndarray, terms: tuple[np.ndarray, ...]) -> np.ndarray:
        a, a0, b, b0, s = terms
        return ((widths @ a + a0) * (widths @ b + b0)) @ s

    def macs(self, widths: np.ndarray) -> np.ndarray:
        macs = self._products(_as_matrix(widths), self._macs) + self._macs_const
        return np.rint(macs).astype(np.int64)

    def params(self, widths: np.ndarray) -> np.ndarray:
        w = _as_matrix(widths)
        return np.rint(self._products(w, self._params) + self._params_const).astype(np.int64)

    def memory(self, widths: np.ndarray) -> np.ndarray:
        w = _as_matrix(widths)
        m, m0 = self._memory
        if m.shape[1] == 0:
            return np.zeros(len(w), dtype=np.int64)
        return np.rint((w @ m + m0).max(axis=1) * BYTES_PER_ELEMENT).astype(np.int64)

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray:
        """One metric ("macs" | "params" | "memory") for an (n, groups) array of widths."""
        return {"macs": self.macs, "params": self.params, "memory": self.memory}[metric](widths)

    def cost(self, config: Mapping[str, int]) -> Cost:
        w = self.space.to_vector(config)[None, :]
        return Cost(int(self.macs(w)[0]), int(self.params(w)[0]), int(self.memory(w)[0]))

    def costs(self, configs: Sequence[Mapping[str, int]]) -> list[Cost]:
        w = np.stack([self.space.to_vector(c) for c in configs])
        macs, params, memory = self.macs(w), self.params(w), self.memory(w)
        return [Cost(int(a), int(b), int(c)) for a, b, c in zip(macs, params, memory, strict=True)]


def _own_parameter(model: nn.Module, name: str) -> nn.Parameter | None:
    """The full parameter `name` (a sliced module attribute returns the active slice)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    return module._parameters.get(attr)


def _as_matrix(widths: np.ndarray) -> np.ndarray:
    w = np.asarray(widths, dtype=np.float64)
    return w[None, :] if w.ndim == 1 else w
