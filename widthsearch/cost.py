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
- memory_live: the liveness peak, the largest over ops of the bytes of every tensor alive
  while the op runs (from the op that makes its storage to the last op that reads it; the
  model's outputs to the end), at fp32 and batch 1: what bounds a microcontroller's SRAM.
Each is a sum of products of two affine forms in the width vector (or a max of affine forms),
so a batch of configurations costs two matrix products. Every cost is a `Metric`; a latency
lookup table (search/latency.py) attaches as one more with `attach_latency`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch.nn as nn

from .discovery import ChannelGraph, GroupLayout, LayerRecord, Mix, Part, TensorInfo
from .dynamic import LAYERS, LayerTable, Role, full_tensor, layer_axes
from .errors import WidthSearchError
from .space import WidthSpace

BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class Cost:
    """Absolute costs of one configuration: MACs, parameters, peak activation bytes (largest
    op; liveness), and predicted latency in seconds when a latency table is attached."""

    macs: int
    params: int
    memory: int
    memory_live: int = 0
    latency: float | None = None

    def ratio(self, reference: Cost) -> dict[str, float]:
        """Each cost as a fraction of `reference` (usually the full model)."""
        out = {}
        for metric in COST_METRICS + ("latency",):
            mine, ref = getattr(self, metric), getattr(reference, metric)
            if mine is not None and ref is not None:
                out[metric] = mine / ref if ref else 0.0
        return out

    def get(self, metric: str) -> float:
        value = getattr(self, metric, None) if metric in COST_METRICS + ("latency",) else None
        if value is None:
            raise KeyError(metric)
        return value


COST_METRICS = ("macs", "params", "memory", "memory_live")


@runtime_checkable
class Metric(Protocol):
    """One cost of the cost model: a vectorized function of width vectors.

    `evaluate` takes an (n, groups) array of widths (columns in `space.names` order) and
    returns n values; budgets, searchers and `CostModel.evaluate` only see this.
    """

    name: str

    def evaluate(self, widths: np.ndarray) -> np.ndarray: ...


class LatencySource(Protocol):
    """What `CostModel.attach_latency` accepts: a table that turns itself into a Metric."""

    def as_metric(self, model: CostModel) -> Metric: ...


@dataclass(frozen=True)
class ProductSum:
    """sum_k s_k (w.a_k + a0_k)(w.b_k + b0_k) + const, rounded to integers (MACs, params)."""

    name: str
    a: np.ndarray
    a0: np.ndarray
    b: np.ndarray
    b0: np.ndarray
    s: np.ndarray
    const: float = 0.0

    def evaluate(self, widths: np.ndarray) -> np.ndarray:
        w = _as_matrix(widths)
        value = ((w @ self.a + self.a0) * (w @ self.b + self.b0)) @ self.s + self.const
        return np.rint(value).astype(np.int64)


@dataclass(frozen=True)
class PeakOfForms:
    """max_k (w.m_k + m0_k) * scale, rounded to integers (the two memory peaks, in bytes)."""

    name: str
    m: np.ndarray
    m0: np.ndarray
    scale: float = BYTES_PER_ELEMENT

    def evaluate(self, widths: np.ndarray) -> np.ndarray:
        w = _as_matrix(widths)
        if self.m.shape[1] == 0:
            return np.zeros(len(w), dtype=np.int64)
        return np.rint((w @ self.m + self.m0).max(axis=1) * self.scale).astype(np.int64)


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
        self.graph = graph
        self.metrics: dict[str, Metric] = {}
        self._build_macs(graph, model, layers)
        self._build_params(graph, model, layers)
        self._build_memory(graph)
        self._build_live_memory(graph)
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
        for record in graph.fixed_macs:  # measured MACs: constant, or linear in one layout
            if record.layout is None:
                const += record.macs
                continue
            coef, _ = self._channels(record.layout, 0)
            left.add(coef, 0.0)
            right.add(np.zeros(len(self._size)), 1.0)
            scale.append(record.macs / float(coef @ self._size))
        self.add_metric(ProductSum("macs", *left.matrices(), *right.matrices(),
                                   np.asarray(scale, dtype=np.float64), const))

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
        self.add_metric(ProductSum("params", *left.matrices(), *right.matrices(),
                                   np.asarray(scale, dtype=np.float64),
                                   float(graph.params_total - bound_full)))

    def _build_memory(self, graph: ChannelGraph) -> None:
        forms = _Forms(len(self._size))
        for op in graph.ops:
            coef, const = np.zeros(len(self._size)), 0.0
            for t in op.tensors:
                c, k = self._numel(t)
                coef, const = coef + c, const + k
            forms.add(coef, const)
        self.add_metric(PeakOfForms("memory", *forms.matrices()))

    def _build_live_memory(self, graph: ChannelGraph) -> None:
        """Per op, the sum of the storages alive while it runs, as one affine form each.

        A storage lives from the first op it appears in (the op that writes it, or the first
        reader of the model input) to the last op that reads it (the end for an output);
        views and in-place results share their base's storage, so its size is the base's.
        """
        n_ops, n = len(graph.ops), len(self._size)
        size: dict[int, tuple[np.ndarray, float]] = {}
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i, op in enumerate(graph.ops):
            for t, buffer in zip(op.tensors, op.buffers, strict=False):
                if buffer is None:
                    continue
                if buffer not in size:
                    size[buffer], first[buffer] = self._numel(t), i
                last[buffer] = i
        for buffer in graph.output_buffers:
            if buffer in last:
                last[buffer] = n_ops - 1
        coef, const = np.zeros((n_ops + 1, n)), np.zeros(n_ops + 1)
        for buffer, (c, k) in size.items():  # +size where it starts, -size after it ends
            coef[first[buffer]] += c
            const[first[buffer]] += k
            coef[last[buffer] + 1] -= c
            const[last[buffer] + 1] -= k
        alive = np.cumsum(coef, axis=0)[:n_ops]
        self.add_metric(PeakOfForms("memory_live", alive.T.copy(),
                                    np.cumsum(const)[:n_ops].copy()))

    # -- metrics -----------------------------------------------------------------------------
    def add_metric(self, metric: Metric) -> None:
        """Make `metric` one more cost: `evaluate(widths, metric.name)` and `cost(cfg)`."""
        if not isinstance(metric, Metric):
            raise WidthSearchError(f"{metric!r} is not a cost metric (needs name and evaluate)")
        self.metrics[metric.name] = metric

    def attach_latency(self, table: LatencySource) -> None:
        """Add the metric "latency" (seconds): the additive prediction of a lookup table."""
        metric = table.as_metric(self)
        if metric.name != "latency":
            raise WidthSearchError(f"a latency table gave a metric named {metric.name!r}")
        self.add_metric(metric)
        self.latency_table = table
        self.full = self.cost(self.space.max())

    def layer_forms(self, layer: LayerRecord) -> tuple[tuple[np.ndarray, float],
                                                        tuple[np.ndarray, float]]:
        """A conv / linear call's input and output widths (entries of the channel axis it
        reads; the flatten expansion included) as affine forms of the width vector."""
        axis = -1 if len(layer.output.shape) == 2 or layer.kind.endswith("linear") else 1
        return (self._channels(layer.inputs.layout, layer.inputs.shape[axis]),
                self._channels(layer.output.layout, layer.output.shape[axis]))

    def numel_form(self, t: TensorInfo) -> tuple[np.ndarray, float]:
        """Per-sample elements of a recorded tensor as an affine form of the width vector."""
        return self._numel(t)

    # -- evaluation ------------------------------------------------------------------------
    def macs(self, widths: np.ndarray) -> np.ndarray:
        return self.evaluate(widths, "macs")

    def params(self, widths: np.ndarray) -> np.ndarray:
        return self.evaluate(widths, "params")

    def memory(self, widths: np.ndarray) -> np.ndarray:
        return self.evaluate(widths, "memory")

    def memory_live(self, widths: np.ndarray) -> np.ndarray:
        return self.evaluate(widths, "memory_live")

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray:
        """One metric ("macs" | "params" | "memory" | "memory_live" | "latency" once a table
        is attached | any added one) for an (n, groups) array of widths."""
        found = self.metrics.get(metric)
        if found is None:
            hint = (" (attach a latency table: net.cost_model.attach_latency(table), or "
                    "`widthsearch latency-table` to measure one)" if metric == "latency" else "")
            raise WidthSearchError(f"unknown cost {metric!r}; known: "
                                   f"{', '.join(self.metrics)}{hint}")
        return found.evaluate(_as_matrix(widths))

    def cost(self, config: Mapping[str, int]) -> Cost:
        return self.costs([config])[0]

    def costs(self, configs: Sequence[Mapping[str, int]]) -> list[Cost]:
        w = np.stack([self.space.to_vector(c) for c in configs]).astype(np.float64)
        columns = [self.evaluate(w, m) for m in COST_METRICS]
        latency = self.evaluate(w, "latency") if "latency" in self.metrics else None
        return [
            Cost(*(int(col[i]) for col in columns),
                 latency=None if latency is None else float(latency[i]))
            for i in range(len(w))
        ]


def _own_parameter(model: nn.Module, name: str) -> nn.Parameter | None:
    """The full parameter `name` (a sliced module attribute returns the active slice)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    return module._parameters.get(attr)


def _as_matrix(widths: np.ndarray) -> np.ndarray:
    w = np.asarray(widths, dtype=np.float64)
    return w[None, :] if w.ndim == 1 else w
