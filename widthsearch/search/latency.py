"""Per-layer latency lookup tables measured on a target, as one more cost metric.

A table times every conv / linear call of the discovered graph alone, at every (in, out)
width pair the width space can give it, on one backend (torch on CPU or CUDA, onnxruntime on
CPU); identical layer shapes share their timings. The rest of the forward (norms,
activations, additions, framework overhead) is `constant + per_element * E(w)`, E being the
elements the other ops read and write (an affine form of the widths): fitted to the
end-to-end latency minus the layers' sum at full and at minimum width, so the rest shrinks
with the widths as norms and activations do (`per_element` 0 gives the plain constant of
end-to-end at full width minus the layers). A configuration's latency is the sum of its
layers' entries plus the rest. The table reports its own error against end-to-end
latency measured on exported models at random configurations, and is stored as JSON with a
description of the device it was measured on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils import benchmark

from ..cost import CostModel
from ..discovery import LayerRecord
from ..errors import WidthSearchError
from ..space import WidthConfig, WidthSpace

if TYPE_CHECKING:
    from ..supernet import Supernet

FORMAT = "widthsearch-latency-table/1"
BACKENDS = ("torch", "onnxruntime")
MAX_COMBINATIONS = 20_000  # joint enumeration of a layer's groups above this: sides apart


# ---------------------------------------------------------------------------------------------
# Layer shapes: the key identical layers share, and how to build one at given widths


@dataclass(frozen=True)
class LayerShape:
    """Everything that decides a conv / linear call's time except its two widths.

    `coupled` convs (depthwise, grouped with in = out) keep their channels per conv group,
    so their groups follow the width; other grouped convs keep their groups.
    """

    op: str  # "conv2d" | "linear"
    in_full: int
    out_full: int
    spatial: tuple[int, ...]  # conv: input (H, W); linear: the leading axes between batch and features
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    coupled: bool = False
    bias: bool = True
    padding_mode: str = "zeros"

    def key(self) -> str:
        """A stable JSON key for this shape."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerShape:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def build(self, in_width: int, out_width: int) -> nn.Module:
        """A plain layer at these widths, as the export would make it."""
        if self.op == "linear":
            return nn.Linear(in_width, out_width, bias=self.bias)
        groups = in_width // (self.in_full // self.groups) if self.coupled else self.groups
        return nn.Conv2d(in_width, out_width, self.kernel, self.stride, self.padding,
                         self.dilation, groups, self.bias, self.padding_mode)

    def example(self, in_width: int, batch: int) -> torch.Tensor:
        if self.op == "linear":
            return torch.randn(batch, *self.spatial, in_width)
        return torch.randn(batch, in_width, *self.spatial)


def layer_shape(record: LayerRecord, module: nn.Module) -> LayerShape:
    """The shape key of one recorded layer call. Sizes come from the record (full width):
    a supernet's layer reports its active widths."""
    if isinstance(module, nn.Linear):
        return LayerShape("linear", record.inputs.shape[-1], record.output.shape[-1],
                          tuple(record.inputs.shape[1:-1]), bias=module.bias is not None)
    if isinstance(module, nn.Conv2d):
        coupled = record.groups > 1 and record.inputs.layout == record.output.layout
        padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
        return LayerShape("conv2d", record.inputs.shape[1], record.output.shape[1],
                          tuple(record.inputs.shape[2:]), tuple(module.kernel_size),
                          tuple(module.stride), padding, tuple(module.dilation), record.groups,
                          coupled, module.bias is not None, module.padding_mode)
    raise WidthSearchError(f"no latency model for layer {record.name!r} "
                           f"({type(module).__name__}); conv2d and linear layers are timed")


def width_pairs(space: WidthSpace, forms: tuple[tuple[np.ndarray, float], ...]
                ) -> set[tuple[int, int]]:
    """Every (in, out) width pair the space can give a layer whose widths are `forms`."""
    (a_in, c_in), (a_out, c_out) = forms
    used = [i for i in range(len(space.groups)) if a_in[i] or a_out[i]]
    choices = [space.groups[i].choices for i in used]
    if math.prod(len(c) for c in choices) <= MAX_COMBINATIONS:
        pairs = set()
        for combo in itertools.product(*choices):
            w = np.zeros(len(space.groups))
            w[used] = combo
            pairs.add((_round(w @ a_in + c_in), _round(w @ a_out + c_out)))
        return pairs
    return set(itertools.product(_reachable(space, a_in, c_in), _reachable(space, a_out, c_out)))


def _reachable(space: WidthSpace, coef: np.ndarray, const: float) -> set[int]:
    """The values an affine form of the widths takes (a sumset over its groups)."""
    values = {const}
    for i, g in enumerate(space.groups):
        if coef[i]:
            values = {v + coef[i] * c for v in values for c in g.choices}
    return {_round(v) for v in values}


def _round(x: float) -> int:
    return int(round(float(x)))


# ---------------------------------------------------------------------------------------------
# Timing backends


@dataclass(frozen=True)
class Target:
    """Where and how timings are taken."""

    backend: str = "torch"  # "torch" | "onnxruntime"
    device: str = "cpu"  # torch only: "cpu" | "cuda"
    threads: int = 1
    batch_size: int = 1
    min_run_time: float = 0.03  # seconds of timed runs per measurement
    warmup: int = 3

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise WidthSearchError(f"unknown latency backend {self.backend!r}; "
                                   f"choose one of {', '.join(BACKENDS)}")
        if self.device not in ("cpu", "cuda"):
            raise WidthSearchError(f"device must be cpu or cuda, not {self.device!r}")
        if self.device == "cuda" and self.backend != "torch":
            raise WidthSearchError("CUDA timings use the torch backend")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise WidthSearchError("--device cuda, but torch sees no CUDA device")
        if self.threads < 1 or self.batch_size < 1:
            raise WidthSearchError("threads and batch size must be at least 1")

    def describe(self) -> dict[str, Any]:
        """The device description stored with a table."""
        info: dict[str, Any] = {
            "backend": self.backend, "device": self.device, "threads": self.threads,
            "batch_size": self.batch_size, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__,
        }
        if self.backend == "onnxruntime":
            import onnxruntime

            info["onnxruntime"] = onnxruntime.__version__
        if self.device == "cuda":
            info["cuda_device"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
        return info

    def timer(self, module: nn.Module, x: torch.Tensor) -> Callable[[], float]:
        """A function that measures one median latency (seconds) of `module` on `x`."""
        module = module.eval()
        if self.backend == "onnxruntime":
            run = _onnx_runner(module, x, self.threads)
        else:
            device = torch.device(self.device)
            module, x = module.to(device), x.to(device)

            def run() -> Any:
                with torch.no_grad():
                    return module(x)

        for _ in range(self.warmup):
            run()
        timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=self.threads)

        def measure() -> float:
            return float(timer.blocked_autorange(min_run_time=self.min_run_time).median)

        return measure


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    with contextlib.suppress(OSError):  # not Linux: fall back to what platform knows
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _onnx_runner(module: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    """An onnxruntime CPU session of `module`: a single conv / linear layer is written as
    one ONNX node directly (fast, and what the exporter writes), anything else goes through
    the legacy exporter."""
    import onnxruntime

    model = _layer_onnx(module, x)
    if model is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, on purpose
                torch.onnx.export(module, (x,), str(path), input_names=["input"],
                                  output_names=["output"], dynamo=False)
            model = path.read_bytes()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # no NCHWc layout rewrite: it adds reorders around a lone conv that a whole model pays
    # once, so layers timed alone would not add up to the model
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def _layer_onnx(module: nn.Module, x: torch.Tensor) -> bytes | None:
    """One Conv or Gemm node with the layer's weights, or None for other modules."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    inits = [numpy_helper.from_array(weight.detach().numpy(), "W")]
    if module.bias is not None:
        inits.append(numpy_helper.from_array(module.bias.detach().numpy(), "B"))
    names = ["input", *(t.name for t in inits)]
    if type(module) is nn.Conv2d and module.padding_mode == "zeros":
        attrs: dict[str, Any] = {"kernel_shape": list(module.kernel_size),
                                 "strides": list(module.stride),
                                 "dilations": list(module.dilation), "group": module.groups}
        if module.padding == "same":
            attrs["auto_pad"] = "SAME_UPPER"
        elif module.padding == "valid":
            attrs["pads"] = [0, 0, 0, 0]
        else:
            attrs["pads"] = [*module.padding, *module.padding]
        node = helper.make_node("Conv", names, ["output"], **attrs)
    elif type(module) is nn.Linear and x.dim() == 2:
        node = helper.make_node("Gemm", names, ["output"], transB=1)
    else:
        return None
    with torch.no_grad():
        out_shape = list(module(x).shape)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                        list(x.shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class LatencyTable:
    """Per-layer timings (seconds) at every width pair, a constant for the rest, the device.

    `layers` maps each recorded layer call (in graph order) to its shape key; `times` maps a
    shape key to {(in, out): seconds}. `error` holds the check against exported models.
    """

    device: dict[str, Any]
    layers: list[tuple[str, str]]
    shapes: dict[str, LayerShape]
    times: dict[str, dict[tuple[int, int], float]]
    constant: float
    full_latency: float
    groups: dict[str, list[int]]
    per_element: float = 0.0  # seconds per element the other ops read and write
    reference: float = 0.0  # the full model's latency at the load every timing is scaled to
    error: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0

    # -- prediction ------------------------------------------------------------------------
    def as_metric(self, model: CostModel) -> LatencyMetric:
        """The metric "latency" over `model`'s width vectors (checks the table fits)."""
        records = model.graph.layers
        names = [r.name for r in records]
        if names != [name for name, _ in self.layers]:
            raise WidthSearchError("the latency table was measured on another model (its "
                                   f"layers {_few([n for n, _ in self.layers])} differ from "
                                   f"{_few(names)})")
        space_groups = {g.name: list(g.choices) for g in model.space.groups}
        missing = [g for g, ch in space_groups.items() if not set(ch) <= set(self.groups.get(g, ()))]
        if missing:
            raise WidthSearchError(f"the latency table has no timings for the widths of groups "
                                   f"{_few(missing)}: measure a table for this width space")
        forms = [model.layer_forms(r) for r in records]
        grids = [_Grid(self.times[key]) for _, key in self.layers]
        batch = int(self.device.get("batch_size", 1))
        coef, const = other_elements(model)
        return LatencyMetric(forms, grids, self.constant, names,
                             (coef * batch * self.per_element, const * batch * self.per_element))

    def predict(self, model: CostModel, widths: np.ndarray) -> np.ndarray:
        return self.as_metric(model).evaluate(widths)

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "device": self.device,
            "constant": self.constant,
            "per_element": self.per_element,
            "reference": self.reference,
            "full_latency": self.full_latency,
            "build_seconds": self.build_seconds,
            "groups": self.groups,
            "layers": [{"name": n, "shape": k} for n, k in self.layers],
            "shapes": {k: {"spec": s.to_json(),
                           "times": [[i, o, t] for (i, o), t in sorted(self.times[k].items())]}
                       for k, s in self.shapes.items()},
            "error": self.error,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        if data.get("format") != FORMAT:
            raise WidthSearchError(f"not a latency table (format {data.get('format')!r}, "
                                   f"expected {FORMAT!r})")
        try:
            shapes = {k: LayerShape.from_json(v["spec"]) for k, v in data["shapes"].items()}
            times = {k: {(int(i), int(o)): float(t) for i, o, t in v["times"]}
                     for k, v in data["shapes"].items()}
            return cls(dict(data["device"]), [(d["name"], d["shape"]) for d in data["layers"]],
                       shapes, times, float(data["constant"]), float(data["full_latency"]),
                       {g: list(c) for g, c in data["groups"].items()},
                       float(data["per_element"]), float(data["reference"]),
                       dict(data["error"]), float(data.get("build_seconds", 0.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise WidthSearchError(f"a damaged latency table: {err!r}") from None

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise WidthSearchError(f"latency table {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise WidthSearchError(f"{path} is not JSON: {err}") from None
        return cls.from_json(data)


def _few(items: Sequence[str]) -> str:
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


class _Grid:
    """One shape's timings as a dense (in, out) grid, for vectorized lookups."""

    def __init__(self, times: dict[tuple[int, int], float]) -> None:
        self.ins = np.array(sorted({i for i, _ in times}))
        self.outs = np.array(sorted({o for _, o in times}))
        self.grid = np.full((len(self.ins), len(self.outs)), np.nan)
        for (i, o), t in times.items():
            self.grid[np.searchsorted(self.ins, i), np.searchsorted(self.outs, o)] = t

    def lookup(self, ins: np.ndarray, outs: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(self.ins, ins), 0, len(self.ins) - 1)
        o = np.clip(np.searchsorted(self.outs, outs), 0, len(self.outs) - 1)
        found = (self.ins[i] == ins) & (self.outs[o] == outs)
        return np.where(found, self.grid[i, o], np.nan)


@dataclass(frozen=True)
class LatencyMetric:
    """latency(w) = sum over layers of table[layer](in(w), out(w)) + constant, in seconds."""

    forms: list[tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]]]
    grids: list[_Grid]
    constant: float
    names: list[str]
    rest: tuple[np.ndarray, float]  # the width-dependent part of the rest, in seconds
    name: str = "latency"

    def evaluate(self, widths: np.ndarray) -> np.ndarray:
        w = np.asarray(widths, dtype=np.float64)
        w = w[None, :] if w.ndim == 1 else w
        total = self.constant + w @ self.rest[0] + self.rest[1]
        for name, ((a_in, c_in), (a_out, c_out)), grid in zip(
                self.names, self.forms, self.grids, strict=True):
            t = grid.lookup(np.rint(w @ a_in + c_in), np.rint(w @ a_out + c_out))
            if np.isnan(t).any():
                raise WidthSearchError(f"the latency table has no timing for layer {name!r} at "
                                       "these widths: measure a table for this width space")
            total += t
        return total


# ---------------------------------------------------------------------------------------------
# Building and checking a table


def measure_table(net: Supernet, target: Target, *, samples: int = 20, rounds: int = 3,
                  seed: int = 0, progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Time every layer of `net` (a Supernet) at every width pair its space allows, then
    check the additive prediction against exported models at `samples` random configs.

    Timings are medians of torch.utils.benchmark runs. On a shared machine the load drifts
    over the minutes a table takes, so a reference (the full exported model) is timed
    between every `REFERENCE_EVERY` timings and in every end-to-end round, and every timing
    is scaled to the reference's median load; the end-to-end checks interleave the
    configurations over `rounds` rounds and keep each one's median.
    """
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    model, cost = net.model, net.cost_model
    records = cost.graph.layers
    layers: list[tuple[str, str]] = []
    shapes: dict[str, LayerShape] = {}
    needed: dict[str, set[tuple[int, int]]] = {}
    for r in records:
        shape = layer_shape(r, model.get_submodule(r.name))
        key = shape.key()
        layers.append((r.name, key))
        shapes[key] = shape
        needed.setdefault(key, set()).update(width_pairs(cost.space, cost.layer_forms(r)))
    total = sum(len(p) for p in needed.values())
    say(f"{len(records)} layers, {len(shapes)} distinct shapes, {total} timings")
    raw: list[tuple[str, tuple[int, int], float, int]] = []  # key, pair, time, load sample
    with _threads(target.threads):
        load = _Load(target.timer(net.export(cost.space.max()), _example(net, target.batch_size)))
        for key, pairs in needed.items():
            shape = shapes[key]
            for i, o in sorted(pairs):
                if len(raw) % REFERENCE_EVERY == 0:
                    load.sample()
                t = target.timer(shape.build(i, o), shape.example(i, target.batch_size))()
                raw.append((key, (i, o), t, len(load.samples) - 1))
            say(f"timed {len(raw)}/{total}")
        gen = torch.Generator().manual_seed(seed)
        checks = [cost.space.sample(gen) for _ in range(samples)]
        say(f"timing the full, the smallest and {samples} random models end to end")
        e2e = end_to_end(net, [cost.space.max(), cost.space.min(), *checks], target, rounds,
                         load=load)
    typical = load.typical()
    e2e = [t * typical for t in e2e]
    times: dict[str, dict[tuple[int, int], float]] = {key: {} for key in needed}
    for key, pair, t, at in raw:
        times[key][pair] = t * typical / load.local(at)
    table = LatencyTable(target.describe(), layers, shapes, times, 0.0, 0.0,
                         {g.name: list(g.choices) for g in cost.space.groups},
                         reference=typical)
    _fit_rest(net, table, target.batch_size, e2e[:2])
    if samples:
        table.error = table_error(net, table, checks, e2e[2:])
        table.error.update(rounds=rounds, seed=seed)
    table.build_seconds = time.perf_counter() - start
    return table


REFERENCE_EVERY = 10
LOAD_WINDOW = 2  # reference samples on each side that make one local load


class _Load:
    """The machine's load, seen through the latency of one fixed reference workload."""

    def __init__(self, measure: Callable[[], float]) -> None:
        self.measure = measure
        self.samples: list[float] = []

    def sample(self) -> int:
        """Time the reference now; returns the sample's index."""
        self.samples.append(self.measure())
        return len(self.samples) - 1

    def local(self, index: int) -> float:
        """The load around sample `index`: the median of it and its neighbours, so one
        reference timing caught in a spike does not rescale the timings near it."""
        lo = max(0, index - LOAD_WINDOW)
        return statistics.median(self.samples[lo:index + LOAD_WINDOW + 1])

    def typical(self) -> float:
        return statistics.median(self.samples)


def other_elements(model: CostModel) -> tuple[np.ndarray, float]:
    """Elements per sample the ops other than conv / linear layers read and write, as an
    affine form of the widths: what the rest of the forward's time grows with."""
    layers = {r.name for r in model.graph.layers}
    coef, const = np.zeros(len(model.space.groups)), 0.0
    for op in model.graph.ops:
        if op.name in layers:
            continue
        for t in op.tensors:
            c, k = model.numel_form(t)
            coef, const = coef + c, const + k
    return coef, const


def end_to_end(net: Supernet, configs: Sequence[WidthConfig], target: Target, rounds: int = 3,
               load: _Load | None = None) -> list[float]:
    """End-to-end latency (seconds) of the exported model of each config: `rounds` rounds
    over all of them in turn, each config's median kept, so the slow spells of a shared
    machine fall on every config alike instead of biasing some. With `load`, each round
    also times the reference and the results are in units of the reference's latency."""
    x = _example(net, target.batch_size)
    with _threads(target.threads):
        timers = [target.timer(net.export(c), x) for c in configs]
        runs, at = [], []
        for _ in range(rounds):
            if load is not None:
                at.append(load.sample())
            runs.append([t() for t in timers])
            if load is not None:
                at.append(load.sample())
    if load is not None:  # each round against the load before and after it
        runs = [[t / load.local(i) for t in r] for r, i in zip(runs, at[::2], strict=True)]
    return [statistics.median(r[i] for r in runs) for i in range(len(configs))]


def _fit_rest(net: Supernet, table: LatencyTable, batch: int, e2e: Sequence[float]) -> None:
    """Fit `constant + per_element * E(w)` to end-to-end minus the layers at the full and
    the smallest config; a negative slope (noise) falls back to the plain constant at full
    width."""
    space = net.cost_model.space
    w = np.stack([space.to_vector(c) for c in (space.max(), space.min())]).astype(np.float64)
    table.per_element, table.constant = 0.0, 0.0
    layers_only = table.predict(net.cost_model, w)
    coef, const = other_elements(net.cost_model)
    elements = (w @ coef + const) * batch
    rest = np.asarray(e2e) - layers_only
    slope = (rest[0] - rest[1]) / (elements[0] - elements[1]) if elements[0] > elements[1] else 0.0
    table.per_element = max(float(slope), 0.0)
    table.constant = float(rest[0] - table.per_element * elements[0])
    table.full_latency = float(e2e[0])


def check_table(net: Supernet, table: LatencyTable, target: Target, *, samples: int,
                rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """The table's error against end-to-end latency measured now on exported models at
    `samples` random configurations (a table from another time). Measurements are scaled
    to the table's reference load, as its timings are."""
    gen = torch.Generator().manual_seed(seed)
    configs = [net.cost_model.space.sample(gen) for _ in range(samples)]
    load = None
    if table.reference:
        load = _Load(target.timer(net.export(net.cost_model.space.max()),
                                  _example(net, target.batch_size)))
    measured = end_to_end(net, configs, target, rounds, load=load)
    if load is not None:
        measured = [t * table.reference for t in measured]
    error = table_error(net, table, configs, measured)
    error.update(rounds=rounds, seed=seed)
    return error


def table_error(net: Supernet, table: LatencyTable, configs: Sequence[WidthConfig],
                measured: Sequence[float]) -> dict[str, Any]:
    """MAPE, share within +-10% and the signed mean of (predicted - measured) / measured."""
    space = net.cost_model.space
    widths = np.stack([space.to_vector(c) for c in configs]).astype(np.float64)
    predicted = table.predict(net.cost_model, widths)
    m = np.asarray(measured, dtype=np.float64)
    rel = (predicted - m) / m
    return {
        "samples": len(configs),
        "mape": float(np.mean(np.abs(rel))),
        "median_ape": float(np.median(np.abs(rel))),  # robust to a config caught in a spike
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "max_abs_error": float(np.max(np.abs(rel))),
        "mean_error": float(np.mean(rel)),
        "measured": m.tolist(), "predicted": predicted.tolist(),
        "macs": net.cost_model.macs(widths).tolist(),
    }


def _example(net: Supernet, batch: int) -> torch.Tensor:
    """An input batch shaped like the one discovery traced (the first op reads it)."""
    if not net.graph.ops:
        raise WidthSearchError("the supernet recorded no ops: nothing to time")
    return torch.randn(batch, *net.graph.ops[0].tensors[0].shape[1:])


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Set torch's intra-op threads for the measurement, restore them after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
