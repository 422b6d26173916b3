"""FLOPs-sensitive bins: the rule on a hand-computed model and on the zoo's ResNet-20."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import widthsearch as ws
from widthsearch.bins import (
    apply_bins,
    bin_space,
    flops_sensitive_bins,
    per_channel_macs,
    snap_bin,
)
from widthsearch.errors import WidthSearchError


class TwoConvs(nn.Module):
    """conv a: 1 -> 8, conv b: 8 -> 16 (3x3, 8x8 maps), global pool, linear 16 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_b(self.b(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def tiny() -> ws.Supernet:
    return ws.Supernet(TwoConvs(), torch.randn(1, 1, 8, 8), pattern="cafenet")


@pytest.fixture(scope="module")
def resnet20() -> ws.Supernet:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    return ws.Supernet(model, torch.randn(1, 1, 28, 28), pattern="cafenet")


def test_per_channel_macs_by_hand(tiny: ws.Supernet) -> None:
    f = per_channel_macs(tiny)
    # one channel of a: its own output (64 positions x 9 taps x 1 input channel) plus what
    # conv b reads from it (64 x 9 x 16 outputs)
    assert f["a"] == 64 * 9 * 1 + 64 * 9 * 16 == 9792
    # one channel of b: its output (64 x 9 x 8 inputs) plus fc's input weight row (10)
    assert f["b"] == 64 * 9 * 8 + 10 == 4618
    assert set(f) == {"a", "b"}  # input and classifier output are fixed: no bin


def test_bins_by_hand(tiny: ws.Supernet) -> None:
    # a is the most expensive per channel -> min_bin; b: 2^ceil(log2(9792 / 4618 = 2.12)) = 4
    assert flops_sensitive_bins(tiny) == {"a": 1, "b": 4}
    assert flops_sensitive_bins(tiny, min_bin=2) == {"a": 2, "b": 4}
    assert flops_sensitive_bins(tiny, max_bin=2) == {"a": 1, "b": 2}
    # every group keeps >= min_bins bins: 16 / 8 = 2 caps b
    assert flops_sensitive_bins(tiny, min_bins=8) == {"a": 1, "b": 2}
    with pytest.raises(WidthSearchError):
        flops_sensitive_bins(tiny, min_bin=0)
    with pytest.raises(WidthSearchError):
        flops_sensitive_bins(tiny, min_bin=4, max_bin=2)


def test_snap_bin_divides_and_respects_granularity() -> None:
    assert snap_bin(4, 12, min_bins=1) == 4
    assert snap_bin(4, 12) == 3  # a group of 12 keeps 4 bins: at most 3 channels each
    assert snap_bin(8, 20) == 5  # divisors <= 20 / 4: 1, 2, 4, 5; 5 is nearest to 8
    assert snap_bin(8, 20, min_bins=2) == 10
    assert snap_bin(3, 12, granularity=2, min_bins=1) == 4  # of 2, 4, 6, 12: 4 is nearest
    assert snap_bin(3, 12, granularity=2) == 2  # 12 / 4 caps the bin at 3
    assert snap_bin(6, 8, min_bins=1) == 8
    assert snap_bin(16, 8) == 2  # a group of 8 keeps 4 bins
    assert snap_bin(1, 7) == 1


def _analytic_macs(net: ws.Supernet, widths: dict[str, float]) -> float:
    """MACs straight from the graph's layer records, independently of the cost model."""
    total = 0.0
    for layer in net.graph.layers:
        axis = -1 if layer.kind.endswith("linear") else 1

        def channels(t, full):  # noqa: ANN001, ANN202
            if t.layout is None:
                return full
            return sum(widths[s] for s in t.layout.segments) * t.layout.inner

        out = channels(layer.output, layer.output.shape[axis])
        if layer.kind == "depthwise":
            total += layer.positions * layer.kernel * out
        else:
            inp = channels(layer.inputs, layer.inputs.shape[axis])
            total += layer.positions * layer.kernel * out * inp / layer.groups
    return total


def test_resnet20_bins_follow_the_rule(resnet20: ws.Supernet) -> None:
    net = resnet20
    f = per_channel_macs(net)
    full = {g.name: float(g.size) for g in net.space.groups}
    assert _analytic_macs(net, full) == net.cost_model.full.macs
    for name, value in f.items():
        minus = dict(full, **{name: full[name] - 1})
        assert value == pytest.approx(_analytic_macs(net, full) - _analytic_macs(net, minus))

    bins = flops_sensitive_bins(net)
    assert set(bins) == {g.name for g in net.space.groups if not g.fixed}
    top = max(f, key=f.get)
    assert top == "conv1"  # the stem/residual group of stage 1: the most MACs per channel
    assert bins[top] == 1
    for name, b in bins.items():
        group = net.space[name]
        assert group.size % b == 0 and b % group.granularity == 0
        assert group.size // b >= 4
        want = 2 ** math.ceil(math.log2(f[top] / f[name]) - 1e-9)
        assert b == min(want, group.size // 4)  # power-of-two sizes: no snapping needed
    # cheaper channels -> larger bins, stage by stage
    assert bins["layer1.0.conv1"] < bins["layer2.1.conv1"] < bins["layer3.1.conv1"]
    for g, h in [(g, h) for g in bins for h in bins if f[g] < f[h]]:
        assert bins[g] >= bins[h]


def test_bin_space_and_locally_free_counts_bins(resnet20: ws.Supernet) -> None:
    net = resnet20
    bins = flops_sensitive_bins(net)
    space = bin_space(net, bins, min_ratio=0.25)
    for g in space.groups:
        if g.name not in bins:
            assert g == net.space[g.name]
            continue
        b = bins[g.name]
        assert g.step == b
        assert g.choices == tuple(range(max(b, math.ceil(g.size / 4 / b) * b), g.size + 1, b))
    g = space["layer3.1.conv1"]  # 64 channels, bin 16
    assert (g.size, g.step, g.choices) == (64, 16, (16, 32, 48, 64))
    free = ws.patterns.LocallyFree(r=1).choices(64, 32, 16)
    # width 32 = base [0, 16) + one free bin of the zone [16, 48): two assignments
    assert free == [tuple(range(32)), tuple(range(16)) + tuple(range(32, 48))]
    with pytest.raises(WidthSearchError):
        bin_space(net, {"layer3.1.conv1": 3})
    with pytest.raises(WidthSearchError):
        bin_space(net, {"fc": 1})


def test_apply_bins_runs_and_costs() -> None:
    net = ws.Supernet(TwoConvs(), torch.randn(1, 1, 8, 8), pattern=ws.patterns.LocallyFree(r=1))
    space = apply_bins(net)
    assert net.space is space and net.cost_model.space is space
    assert space["b"].choices == (4, 8, 12, 16) and space["b"].step == 4
    assert net.num_choices({"a": 8, "b": 8}) == {"b": 2}
    x = torch.randn(2, 1, 8, 8)
    net.eval()
    for choice in (0, 1):
        with net.activate({"b": 8}, {"b": choice}):
            out = net(x)
            sub = net.export().eval()  # exported norms copy their template's mode
        assert out.shape == (2, 10)
        assert torch.allclose(sub(x), out, atol=1e-5)
        assert sub.b.out_channels == 8
    # the free bin moves a whole bin: channels [0, 4) + [8, 12) for choice 1
    assert net.pattern.choices(16, 8, 4)[1] == (0, 1, 2, 3, 8, 9, 10, 11)
    cfg = {"a": 4, "b": 12}
    assert net.cost(cfg).macs == _analytic_macs(net, {"input": 1, "a": 4, "b": 12, "fc": 10})
    full = np.array([net.space[n].size for n in net.space.names])
    assert net.cost_model.macs(full)[0] == net.cost(net.space.max()).macs
