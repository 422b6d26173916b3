"""The analytic cost model: vectorized, exact against counted MACs, monotone in widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import build_supernet
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import widthsearch as ws
from widthsearch.cost import Cost, Metric, PeakOfForms
from widthsearch.errors import WidthSearchError
from widthsearch.supernet import macs_of


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "torchvision:efficientnet_b0"])
def test_vectorized_costs_equal_per_config_costs(name: str, generator: torch.Generator) -> None:
    net, _ = build_supernet(name)
    space = net.space
    widths = space.widths_of_indices(space.sample_indices(100, generator))
    configs = [space.from_vector(row) for row in widths]
    model = net.cost_model
    macs, params, memory = model.macs(widths), model.params(widths), model.memory(widths)
    live = model.evaluate(widths, "memory_live")
    assert macs.shape == params.shape == memory.shape == live.shape == (100,)
    assert macs.dtype == np.int64
    per_config = [net.cost(cfg) for cfg in configs]
    assert macs.tolist() == [c.macs for c in per_config]
    assert params.tolist() == [c.params for c in per_config]
    assert memory.tolist() == [c.memory for c in per_config]
    assert live.tolist() == [c.memory_live for c in per_config]
    assert (live <= memory * 3).all()  # never more than every tensor of the widest op, thrice
    assert model.costs(configs) == per_config
    assert model.evaluate(widths, "params").tolist() == params.tolist()
    assert len(set(macs.tolist())) > 50  # the configurations really differ in cost


def test_costs_match_a_naive_count_of_the_exported_model(generator: torch.Generator) -> None:
    """MACs against FlopCounterMode and params against numel(), on the zoo's MobileNetV2."""
    net, x = build_supernet("mobilenetv2")
    for cfg in (net.space.min(), net.space.sample(generator)):
        sub = net.export(cfg)
        assert net.cost(cfg).macs == macs_of(sub, x)
        assert net.cost(cfg).params == sum(p.numel() for p in sub.parameters())


@pytest.mark.parametrize("name", ["resnet20", "torchvision:mobilenet_v3_small"])
def test_macs_grow_when_one_group_widens(name: str, generator: torch.Generator) -> None:
    net, _ = build_supernet(name)
    space = net.space
    for base in (space.min(), space.sample(generator)):
        for g in space.searchable:
            previous = None
            for w in g.choices:
                cost = net.cost({**base, g.name: w})
                if previous is not None:
                    assert cost.macs > previous.macs, (g.name, w)  # every group feeds a conv
                    assert cost.params > previous.params, (g.name, w)
                    assert cost.memory >= previous.memory, (g.name, w)
                previous = cost


def test_full_and_min_costs(resnet20_net) -> None:
    net, _ = resnet20_net
    full, small = net.cost(net.space.max()), net.cost(net.space.min())
    assert net.cost() == full  # the active config is the full one
    assert net.cost_model.full == full
    assert full.params == sum(p.numel() for p in net.parameters())
    assert 0 < small.macs < full.macs
    assert 0 < small.params < full.params
    assert 0 < small.memory <= full.memory
    # ResNet-20 at 28x28 (1 input channel): about 33M MACs at batch 1
    assert 30e6 < full.macs < 36e6
    ratio = small.ratio(full)
    assert 0 < ratio["macs"] < 0.2 and 0 < ratio["params"] < 0.2
    assert full.ratio(full) == {"macs": 1.0, "params": 1.0, "memory": 1.0, "memory_live": 1.0}
    assert small.get("macs") == small.macs
    with pytest.raises(KeyError):
        small.get("latency")


def test_memory_is_the_largest_op_at_full_width() -> None:
    """A chain of convs: the peak is the op with the largest input + output (fp32, batch 1)."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 4),
    )
    net = ws.Supernet(model, torch.randn(1, 3, 8, 8))
    per_map = 8 * 8
    conv2 = (16 + 8) * per_map  # the first conv reads 3 and writes 16 maps: smaller
    relu = (16 + 16) * per_map  # reads 16 maps, writes 16: the peak
    assert net.cost().memory == max(conv2, relu) * 4
    half = net.cost({"0": 8, "2": 4})
    assert half.memory == max((8 + 4) * per_map, (8 + 8) * per_map, (3 + 8) * per_map) * 4
    assert net.cost().macs == per_map * 9 * (3 * 16 + 16 * 8) + 8 * per_map * 4
    assert half.macs == per_map * 9 * (3 * 8 + 8 * 4) + 4 * per_map * 4
    assert half.params == (3 * 9 * 8 + 8) + (8 * 9 * 4 + 4) + (4 * per_map * 4 + 4)


def test_cost_dataclass() -> None:
    c = Cost(macs=10, params=5, memory=0)
    assert c.ratio(Cost(20, 10, 0)) == {"macs": 0.5, "params": 0.5, "memory": 0.0,
                                        "memory_live": 0.0}
    timed = Cost(10, 5, 0, 4, latency=0.002)
    assert timed.ratio(Cost(20, 10, 0, 8, latency=0.004))["latency"] == 0.5
    assert timed.get("latency") == 0.002 and timed.get("memory_live") == 4


class _Storages(TorchDispatchMode):
    """Records, per aten op, the storages it reads and writes (data pointer, bytes).

    Every storage seen is held until the end, so no pointer is reused by a later tensor and
    a pointer names one storage for the whole forward.
    """

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.weights = weights
        self.ops: list[list[tuple[int, int]]] = []
        self.held: list[torch.UntypedStorage] = []

    def _storages(self, tree: object) -> list[tuple[int, int]]:
        found = []
        for t in tree_leaves(tree):
            if isinstance(t, torch.Tensor) and t.numel():
                storage = t.untyped_storage()
                self.held.append(storage)
                if storage.data_ptr() not in self.weights:
                    found.append((storage.data_ptr(), storage.nbytes()))
        return found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.ops.append(self._storages((args, kwargs)) + self._storages(out))
        return out


def measured_live_peak(model: nn.Module, x: torch.Tensor) -> int:
    """The liveness peak of docs/architecture.md ("Costs"), measured on a plain model.

    At the aten level: a storage is alive from the first op that touches it (writes it, or
    reads the model input) to the last op that reads it (the end for the output); weights
    are excluded; the peak is the largest sum over ops of the bytes alive.
    """
    weights = {t.untyped_storage().data_ptr()
               for t in [*model.parameters(), *model.buffers()]}
    with torch.no_grad(), _Storages(weights) as mode:
        y = model(x)
    size, first, last = {}, {}, {}
    for i, storages in enumerate(mode.ops):
        for ptr, nbytes in storages:
            size.setdefault(ptr, nbytes)
            first.setdefault(ptr, i)
            last[ptr] = i
    for t in tree_leaves(y):
        last[t.untyped_storage().data_ptr()] = len(mode.ops) - 1
    delta = np.zeros(len(mode.ops) + 1, dtype=np.int64)
    for ptr, nbytes in size.items():
        delta[first[ptr]] += nbytes
        delta[last[ptr] + 1] -= nbytes
    return int(np.cumsum(delta)[:-1].max())


LIVE_MODELS = ("resnet20", "mobilenetv2", "torchvision:resnet18",
               "torchvision:mobilenet_v3_small", "torchvision:shufflenet_v2_x0_5")


@pytest.mark.parametrize("name", LIVE_MODELS)
def test_live_memory_equals_the_measured_liveness_peak(name: str,
                                                       generator: torch.Generator) -> None:
    net, x = build_supernet(name)
    one = x[:1].clone()  # its own storage: a slice of the batch would count the whole batch
    configs = [net.space.max(), net.space.min()] + [net.space.sample(generator) for _ in range(3)]
    for cfg in configs:
        assert net.cost(cfg).memory_live == measured_live_peak(net.export(cfg).eval(), one), cfg


def test_live_memory_of_a_chain_and_a_skip_connection() -> None:
    """By hand: a tensor stays alive across the ops between its producer and its last use."""

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.b = nn.Conv2d(16, 16, 1)
            self.c = nn.Conv2d(16, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            y = torch.relu(self.b(h))  # h is alive while b and relu run
            return self.c(y + h).flatten(1)  # flatten is a view: no new storage

    net = ws.Supernet(Skip(), torch.randn(1, 3, 4, 4))
    per_map = 4 * 4 * 4  # bytes of one 4x4 fp32 channel
    # b: x is dead; h (16), b's output (16); relu: h, b's output, relu's (16); add: h, y, sum
    assert net.cost().memory_live == 3 * 16 * per_map
    width = net.space["a"].choices[0]
    assert net.cost({"a": width, "c": 8}).memory_live == 3 * width * per_map
    # the largest op alone reads 32 and writes 16 maps: the same peak as three live tensors
    assert net.cost().memory == (16 + 16 + 16) * per_map


def test_metrics_are_one_protocol(resnet20_net, generator: torch.Generator) -> None:
    net, _ = resnet20_net
    model = net.cost_model
    assert set(model.metrics) == {"macs", "params", "memory", "memory_live"}
    assert all(isinstance(m, Metric) for m in model.metrics.values())
    widths = net.space.widths_of_indices(net.space.sample_indices(5, generator))
    doubled = model.metrics["memory"]
    model.add_metric(PeakOfForms("memory_fp64", doubled.m, doubled.m0, scale=8))
    assert (model.evaluate(widths, "memory_fp64") == 2 * model.evaluate(widths, "memory")).all()
    with pytest.raises(WidthSearchError, match="latency table"):
        model.evaluate(widths, "latency")
    with pytest.raises(WidthSearchError, match="unknown cost"):
        model.evaluate(widths, "flops")
    with pytest.raises(WidthSearchError, match="not a cost metric"):
        model.add_metric(object())  # type: ignore[arg-type]
