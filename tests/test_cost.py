"""The analytic cost model: vectorized, exact against counted MACs, monotone in widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import build_supernet

import widthsearch as ws
from widthsearch.cost import Cost
from widthsearch.supernet import macs_of


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "torchvision:efficientnet_b0"])
def test_vectorized_costs_equal_per_config_costs(name: str, generator: torch.Generator) -> None:
    net, _ = build_supernet(name)
    space = net.space
    widths = space.widths_of_indices(space.sample_indices(100, generator))
    configs = [space.from_vector(row) for row in widths]
    model = net.cost_model
    macs, params, memory = model.macs(widths), model.params(widths), model.memory(widths)
    assert macs.shape == params.shape == memory.shape == (100,)
    assert macs.dtype == np.int64
    per_config = [net.cost(cfg) for cfg in configs]
    assert macs.tolist() == [c.macs for c in per_config]
    assert params.tolist() == [c.params for c in per_config]
    assert memory.tolist() == [c.memory for c in per_config]
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
    assert full.ratio(full) == {"macs": 1.0, "params": 1.0, "memory": 1.0}
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
    assert c.ratio(Cost(20, 10, 0)) == {"macs": 0.5, "params": 0.5, "memory": 0.0}
