"""Dynamic layers: they compute what the smaller plain layer computes, and share state."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import build_supernet, randomize_norms

from widthsearch.dynamic import (
    DynamicBatchNorm,
    DynamicConv2d,
    DynamicGroupNorm,
    DynamicLayerNorm,
    DynamicLinear,
    make_dynamic,
    shrink,
    take,
)
from widthsearch.patterns import selection_tensor

NON_CONTIGUOUS = torch.tensor([0, 2, 3, 7])
SELECTIONS = [slice(0, 8), slice(2, 6), NON_CONTIGUOUS]


def _idx(sel) -> torch.Tensor:
    return selection_tensor(sel)


def test_take_views_slices_and_gathers_indices() -> None:
    t = torch.arange(24.0).reshape(4, 6)
    assert take(t, 1, slice(0, 6)) is t
    view = take(t, 1, slice(1, 3))
    assert view.data_ptr() == t[:, 1:].data_ptr()  # a view, no copy
    assert take(t, 0, torch.tensor([3, 0])).tolist() == [t[3].tolist(), t[0].tolist()]


@pytest.mark.parametrize("in_sel", SELECTIONS)
@pytest.mark.parametrize("out_sel", [slice(0, 4), slice(1, 5), torch.tensor([0, 3, 5])])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_dynamic_conv_equals_the_sliced_conv(in_sel, out_sel, padding_mode: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1, padding_mode=padding_mode)
    dyn = DynamicConv2d(conv)
    dyn.set_selection(in_sel, out_sel)
    x = torch.randn(2, len(_idx(in_sel)), 5, 5)
    small = dyn.materialize()
    assert type(small) is nn.Conv2d
    assert small.weight.shape == (len(_idx(out_sel)), len(_idx(in_sel)), 3, 3)
    assert small.padding_mode == padding_mode
    reference = nn.Conv2d(8, 6, 3, padding=1, padding_mode=padding_mode)
    with torch.no_grad():
        reference.weight.copy_(conv.weight)
        reference.bias.copy_(conv.bias)
        full_x = torch.zeros(2, 8, 5, 5)
        full_x[:, _idx(in_sel)] = x
        expected = reference(full_x)[:, _idx(out_sel)]
        torch.testing.assert_close(dyn(x), expected)
        torch.testing.assert_close(small(x), expected)
    assert small.weight.data_ptr() != conv.weight.data_ptr()  # materialize copies


def test_dynamic_depthwise_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    dyn = make_dynamic("depthwise", conv)
    dyn.set_selection(NON_CONTIGUOUS, NON_CONTIGUOUS)
    x = torch.randn(2, 4, 5, 5)
    small = dyn.materialize()
    assert (small.in_channels, small.out_channels, small.groups) == (4, 4, 4)
    assert small.bias is None
    with torch.no_grad():
        full_x = torch.zeros(2, 8, 5, 5)
        full_x[:, NON_CONTIGUOUS] = x
        expected = conv(full_x)[:, NON_CONTIGUOUS]
        torch.testing.assert_close(dyn(x), expected)
        torch.testing.assert_close(small(x), expected)


def test_dynamic_linear_with_flattened_channels() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    dyn = DynamicLinear(lin)
    features = torch.tensor([0, 1, 6, 7])  # channels 0 and 3 of a flatten with 2 entries each
    dyn.set_selection(features, slice(0, 5))
    x = torch.randn(3, 4)
    with torch.no_grad():
        full_x = torch.zeros(3, 12)
        full_x[:, features] = x
        torch.testing.assert_close(dyn(x), lin(full_x))
        torch.testing.assert_close(dyn.materialize()(x), lin(full_x))
    assert dyn.shape_spec() == {"in_features": 4, "out_features": 5}


def test_dynamic_layers_share_the_templates_parameters() -> None:
    conv = nn.Conv2d(4, 4, 1)
    dyn = DynamicConv2d(conv)
    assert dyn.weight is conv.weight and dyn.bias is conv.bias
    bn = nn.BatchNorm2d(4)
    dbn = DynamicBatchNorm(bn)
    assert dbn.running_mean is bn.running_mean
    assert set(dbn.state_dict()) == set(bn.state_dict())


@pytest.mark.parametrize("sel", SELECTIONS[1:])
def test_dynamic_batchnorm_updates_only_the_active_statistics(sel) -> None:
    torch.manual_seed(0)
    bn = randomize_norms(nn.BatchNorm2d(8))
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    dyn = DynamicBatchNorm(bn)
    dyn.set_selection(sel, sel)
    idx = _idx(sel)
    x = torch.randn(4, len(idx), 3, 3) * 2 + 1
    reference = copy.deepcopy(bn)
    out = dyn.train()(x)
    # the statistics of a plain BN over those channels, updated the same way
    ref_bn = nn.BatchNorm2d(len(idx))
    with torch.no_grad():
        ref_bn.weight.copy_(reference.weight[idx])
        ref_bn.bias.copy_(reference.bias[idx])
        ref_bn.running_mean.copy_(reference.running_mean[idx])
        ref_bn.running_var.copy_(reference.running_var[idx])
    torch.testing.assert_close(out, ref_bn.train()(x))
    torch.testing.assert_close(bn.running_mean[idx], ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var[idx], ref_bn.running_var)
    rest = torch.ones(8, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(bn.running_mean[rest], before_mean[rest])
    assert torch.equal(bn.running_var[rest], before_var[rest])
    assert not torch.allclose(bn.running_mean[idx], before_mean[idx])
    assert int(bn.num_batches_tracked) == 1
    # eval mode uses, and does not change, the stored statistics
    stored = bn.running_mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(dyn.eval()(x), ref_bn.eval()(x))
    assert torch.equal(bn.running_mean, stored)


def test_dynamic_batchnorm_without_running_stats_or_affine() -> None:
    x = torch.randn(4, 4, 3, 3)
    for bn in (nn.BatchNorm2d(8, affine=False), nn.BatchNorm2d(8, track_running_stats=False),
               nn.BatchNorm2d(8, momentum=None)):
        dyn = DynamicBatchNorm(bn)
        dyn.set_selection(NON_CONTIGUOUS, NON_CONTIGUOUS)
        ref = nn.BatchNorm2d(4, affine=bn.affine, track_running_stats=bn.track_running_stats,
                             momentum=bn.momentum)
        torch.testing.assert_close(dyn.train()(x), ref.train()(x))
        small = dyn.materialize()
        assert small.num_features == 4
        if bn.track_running_stats:
            torch.testing.assert_close(small.running_mean, ref.running_mean)
            torch.testing.assert_close(small.running_var, ref.running_var)


def test_dynamic_group_and_layer_norm() -> None:
    torch.manual_seed(0)
    gn = randomize_norms(nn.GroupNorm(4, 8))  # 2 channels per group
    dyn = DynamicGroupNorm(gn)
    sel = torch.tensor([2, 3, 6, 7])  # whole groups 1 and 3
    dyn.set_selection(sel, sel)
    x = torch.randn(2, 4, 3, 3)
    ref = nn.GroupNorm(2, 4)
    with torch.no_grad():
        ref.weight.copy_(gn.weight[sel])
        ref.bias.copy_(gn.bias[sel])
    torch.testing.assert_close(dyn(x), ref(x))
    small = dyn.materialize()
    assert (small.num_groups, small.num_channels) == (2, 4)
    torch.testing.assert_close(small(x), ref(x))

    ln = randomize_norms(nn.LayerNorm(8))
    dln = DynamicLayerNorm(ln)
    dln.set_selection(slice(0, 8), slice(1, 6))
    y = torch.randn(2, 3, 5)
    ref_ln = nn.LayerNorm(5)
    with torch.no_grad():
        ref_ln.weight.copy_(ln.weight[1:6])
        ref_ln.bias.copy_(ln.bias[1:6])
    torch.testing.assert_close(dln(y), ref_ln(y))
    assert dln.materialize().normalized_shape == (5,)


def test_shrink_rebuilds_empty_layers_of_the_right_shape() -> None:
    conv = shrink(nn.Conv2d(8, 6, 3, groups=1), {"in_channels": 4, "out_channels": 3})
    assert conv.weight.shape == (3, 4, 3, 3) and conv.bias.shape == (3,)
    dw = shrink(nn.Conv2d(8, 8, 3, groups=8), {"in_channels": 5, "out_channels": 5, "groups": 5})
    assert dw.weight.shape == (5, 1, 3, 3)
    ln = shrink(nn.LayerNorm(8), {"normalized_shape": [5]})
    assert ln.normalized_shape == (5,) and ln.weight.shape == (5,)
    gn = shrink(nn.GroupNorm(4, 8), {"num_channels": 4, "num_groups": 2})
    assert gn.weight.shape == (4,) and gn.num_groups == 2
    bn = shrink(nn.BatchNorm2d(8), {"num_features": 3})
    assert bn.running_var.shape == (3,) and bn.num_batches_tracked.shape == ()


# --------------------------------------------------------------------------- in a supernet


def _non_contiguous_choice(net, cfg) -> dict[str, int]:
    """A choice per group whose channels are not one contiguous run."""
    choice = {}
    for g in net.space.searchable:
        options = net.pattern.choices(g.size, cfg[g.name], g.step)
        for k, channels in enumerate(options):
            if channels != tuple(range(channels[0], channels[0] + len(channels))):
                choice[g.name] = k
                break
    return choice


def test_supernet_batchnorm_state_with_cafenet_channels() -> None:
    net, x = build_supernet("resnet20", "cafenet")
    bns = {name: dyn for name, dyn in net._dynamic.items() if isinstance(dyn, DynamicBatchNorm)}
    before = {name: (bn.running_mean.clone(), bn.running_var.clone()) for name, bn in bns.items()}
    cfg = net.space.uniform(0.5)
    choice = _non_contiguous_choice(net, cfg)
    assert len(choice) == len(net.space.searchable)
    net.activate(cfg, choice)
    assert any(isinstance(bn.out_sel, torch.Tensor) for bn in bns.values())  # index_select path
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    for name, bn in bns.items():
        group = net.graph.bindings[name].out_layout.segments[0]
        g = net.space[group]
        active = torch.tensor(net.pattern.choices(g.size, cfg[group], g.step)[choice[group]])
        rest = torch.ones(g.size, dtype=torch.bool)
        rest[active] = False
        mean, var = before[name]
        assert torch.equal(bn.running_mean[rest], mean[rest]), name
        assert torch.equal(bn.running_var[rest], var[rest]), name
        assert (bn.running_mean[active] != mean[active]).all(), name
        assert (bn.running_var[active] != var[active]).all(), name
    net.eval()
    sub = net.export(cfg, choice)
    for name, bn in bns.items():
        exported = sub.get_submodule(name)
        idx = selection_tensor(bn.out_sel)
        assert torch.equal(exported.running_mean, bn.running_mean[idx])
        assert torch.equal(exported.running_var, bn.running_var[idx])
        assert torch.equal(exported.weight, bn.weight[idx])
        assert int(exported.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    with torch.no_grad():
        torch.testing.assert_close(sub.eval()(x), net(x), rtol=1e-6, atol=1e-5)


def test_gradients_reach_only_the_active_channels(generator: torch.Generator) -> None:
    net, x = build_supernet("resnet20", "cafenet")
    cfg = net.space.min()
    choice = _non_contiguous_choice(net, cfg)
    net.activate(cfg, choice)
    net.train()
    F.cross_entropy(net(x), torch.tensor([1, 2])).backward()
    conv = net.model.get_submodule("layer1.0.conv1")
    grad = conv.weight.grad
    assert grad is not None
    out_idx, in_idx = selection_tensor(conv.out_sel), selection_tensor(conv.in_sel)
    active = torch.zeros_like(grad, dtype=torch.bool)
    active[out_idx[:, None], in_idx[None, :]] = True
    assert grad[~active].abs().sum() == 0
    assert grad[active].abs().sum() > 0
    assert len(out_idx) < conv.weight.shape[0]
