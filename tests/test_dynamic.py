"""Dynamic layers: a layer keeps its class and forward and computes what the smaller plain
layer computes, on tensors it shares with the model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import build_supernet, randomize_norms

from widthsearch.dynamic import (
    CONV,
    LAYERS,
    LayerTable,
    SlicedClasses,
    full_tensor,
    make_sliced,
    materialize,
    original_class,
    resize,
    take,
)
from widthsearch.errors import WidthSearchError
from widthsearch.patterns import selection_tensor

NON_CONTIGUOUS = torch.tensor([0, 2, 3, 7])
SELECTIONS = [slice(0, 8), slice(2, 6), NON_CONTIGUOUS]


def _idx(sel) -> torch.Tensor:
    return selection_tensor(sel)


def _sliced(module: nn.Module, in_sel, out_sel, mode: str = "conv",
            layers: LayerTable = LAYERS) -> nn.Module:
    """`module` made dynamic in place, at the given selections."""
    spec = layers.lookup(module)
    assert spec is not None
    slices = make_sliced(module, SlicedClasses(), layer=(spec, mode))
    slices.set_layer(module, in_sel, out_sel)
    return module


def _materialized(module: nn.Module) -> nn.Module:
    plain = copy.deepcopy(module)
    materialize(plain)
    return plain


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
    reference = copy.deepcopy(conv)
    dyn = _sliced(conv, in_sel, out_sel)
    assert isinstance(dyn, nn.Conv2d) and original_class(dyn) is nn.Conv2d
    x = torch.randn(2, len(_idx(in_sel)), 5, 5)
    small = _materialized(dyn)
    assert type(small) is nn.Conv2d
    assert small.weight.shape == (len(_idx(out_sel)), len(_idx(in_sel)), 3, 3)
    assert small.padding_mode == padding_mode
    with torch.no_grad():
        full_x = torch.zeros(2, 8, 5, 5)
        full_x[:, _idx(in_sel)] = x
        expected = reference(full_x)[:, _idx(out_sel)]
        torch.testing.assert_close(dyn(x), expected)
        torch.testing.assert_close(small(x), expected)
    assert small.weight.data_ptr() != full_tensor(conv, "weight").data_ptr()  # a copy


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_and_conv3d_equal_the_sliced_conv(dims: int) -> None:
    torch.manual_seed(0)
    cls = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    conv = cls(8, 6, 3, padding=1)
    reference = copy.deepcopy(conv)
    dyn = _sliced(conv, NON_CONTIGUOUS, slice(1, 4))
    x = torch.randn(2, 4, *(5,) * dims)
    with torch.no_grad():
        full_x = torch.zeros(2, 8, *(5,) * dims)
        full_x[:, NON_CONTIGUOUS] = x
        expected = reference(full_x)[:, 1:4]
        torch.testing.assert_close(dyn(x), expected)
        small = _materialized(dyn)
        assert type(small) is cls and small.weight.shape == (3, 4, *(3,) * dims)
        torch.testing.assert_close(small(x), expected)


def test_dynamic_depthwise_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    reference = copy.deepcopy(conv)
    dyn = _sliced(conv, NON_CONTIGUOUS, NON_CONTIGUOUS, mode="depthwise")
    x = torch.randn(2, 4, 5, 5)
    small = _materialized(dyn)
    assert (small.in_channels, small.out_channels, small.groups) == (4, 4, 4)
    assert small.bias is None
    with torch.no_grad():
        full_x = torch.zeros(2, 8, 5, 5)
        full_x[:, NON_CONTIGUOUS] = x
        expected = reference(full_x)[:, NON_CONTIGUOUS]
        torch.testing.assert_close(dyn(x), expected)
        torch.testing.assert_close(small(x), expected)


def test_dynamic_linear_with_flattened_channels() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    reference = copy.deepcopy(lin)
    features = torch.tensor([0, 1, 6, 7])  # channels 0 and 3 of a flatten with 2 entries each
    dyn = _sliced(lin, features, slice(0, 5), mode="linear")
    x = torch.randn(3, 4)
    with torch.no_grad():
        full_x = torch.zeros(3, 12)
        full_x[:, features] = x
        torch.testing.assert_close(dyn(x), reference(full_x))
        torch.testing.assert_close(_materialized(dyn)(x), reference(full_x))
    assert (dyn.in_features, dyn.out_features) == (4, 5)
    assert materialize(copy.deepcopy(dyn))["attrs"] == {"in_features": 4, "out_features": 5}


def test_dynamic_layers_keep_their_tensors_and_state_dict() -> None:
    conv = nn.Conv2d(4, 4, 1)
    weight, keys = conv.weight, set(conv.state_dict())
    _sliced(conv, slice(0, 2), slice(0, 3))
    assert full_tensor(conv, "weight") is weight and next(conv.parameters()) is weight
    assert conv.weight.shape == (3, 2, 1, 1) and conv.out_channels == 3
    assert set(conv.state_dict()) == keys and conv.state_dict()["weight"].shape == (4, 4, 1, 1)
    bn = nn.BatchNorm2d(4)
    mean = bn.running_mean
    _sliced(bn, NON_CONTIGUOUS[:2], NON_CONTIGUOUS[:2], mode="batchnorm")
    assert full_tensor(bn, "running_mean") is mean and bn.num_features == 2


@pytest.mark.parametrize("sel", SELECTIONS[1:])
def test_dynamic_batchnorm_updates_only_the_active_statistics(sel) -> None:
    torch.manual_seed(0)
    bn = randomize_norms(nn.BatchNorm2d(8))
    reference = copy.deepcopy(bn)
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    dyn = _sliced(bn, sel, sel, mode="batchnorm")
    idx = _idx(sel)
    x = torch.randn(4, len(idx), 3, 3) * 2 + 1
    out = dyn.train()(x)
    # the statistics of a plain BN over those channels, updated the same way
    ref_bn = nn.BatchNorm2d(len(idx))
    with torch.no_grad():
        ref_bn.weight.copy_(reference.weight[idx])
        ref_bn.bias.copy_(reference.bias[idx])
        ref_bn.running_mean.copy_(reference.running_mean[idx])
        ref_bn.running_var.copy_(reference.running_var[idx])
    torch.testing.assert_close(out, ref_bn.train()(x))
    mean, var = full_tensor(bn, "running_mean"), full_tensor(bn, "running_var")
    torch.testing.assert_close(mean[idx], ref_bn.running_mean)
    torch.testing.assert_close(var[idx], ref_bn.running_var)
    rest = torch.ones(8, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(mean[rest], before_mean[rest])
    assert torch.equal(var[rest], before_var[rest])
    assert not torch.allclose(mean[idx], before_mean[idx])
    assert int(bn.num_batches_tracked) == 1
    # eval mode uses, and does not change, the stored statistics
    stored = mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(dyn.eval()(x), ref_bn.eval()(x))
    assert torch.equal(mean, stored)


def test_dynamic_batchnorm_without_running_stats_or_affine() -> None:
    x = torch.randn(4, 4, 3, 3)
    for bn in (nn.BatchNorm2d(8, affine=False), nn.BatchNorm2d(8, track_running_stats=False),
               nn.BatchNorm2d(8, momentum=None)):
        dyn = _sliced(bn, NON_CONTIGUOUS, NON_CONTIGUOUS, mode="batchnorm")
        ref = nn.BatchNorm2d(4, affine=bn.affine, track_running_stats=bn.track_running_stats,
                             momentum=bn.momentum)
        torch.testing.assert_close(dyn.train()(x), ref.train()(x))
        small = _materialized(dyn)
        assert small.num_features == 4
        if bn.track_running_stats:
            torch.testing.assert_close(small.running_mean, ref.running_mean)
            torch.testing.assert_close(small.running_var, ref.running_var)


def test_dynamic_group_and_layer_norm() -> None:
    torch.manual_seed(0)
    gn = randomize_norms(nn.GroupNorm(4, 8))  # 2 channels per group
    full_weight, full_bias = gn.weight.detach().clone(), gn.bias.detach().clone()
    sel = torch.tensor([2, 3, 6, 7])  # whole groups 1 and 3
    dyn = _sliced(gn, sel, sel, mode="groupnorm")
    x = torch.randn(2, 4, 3, 3)
    ref = nn.GroupNorm(2, 4)
    with torch.no_grad():
        ref.weight.copy_(full_weight[sel])
        ref.bias.copy_(full_bias[sel])
    torch.testing.assert_close(dyn(x), ref(x))
    small = _materialized(dyn)
    assert (small.num_groups, small.num_channels) == (2, 4)
    torch.testing.assert_close(small(x), ref(x))

    ln = randomize_norms(nn.LayerNorm(8))
    full_weight, full_bias = ln.weight.detach().clone(), ln.bias.detach().clone()
    dln = _sliced(ln, slice(0, 8), slice(1, 6), mode="layernorm")
    y = torch.randn(2, 3, 5)
    ref_ln = nn.LayerNorm(5)
    with torch.no_grad():
        ref_ln.weight.copy_(full_weight[1:6])
        ref_ln.bias.copy_(full_bias[1:6])
    torch.testing.assert_close(dln(y), ref_ln(y))
    assert _materialized(dln).normalized_shape == (5,)


# ------------------------------------------------------------- subclasses keep their forward


class _BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm whose forward also applies an activation (as timm's BatchNormAct2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x)) * 2.0


class _StdConv(nn.Conv2d):
    """Weight standardization inside forward (as timm's StdConv2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _ScaledStdConv(nn.Conv2d):
    """A per-output-channel gain of its own (as timm's ScaledStdConv2d)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


def _reference_of(module: nn.Module, in_sel, out_sel) -> nn.Module:
    """The same class built small, holding the selected tensors: what slicing must compute."""
    small = copy.deepcopy(module)
    for name, t in [*small._parameters.items(), *small._buffers.items()]:
        if t is None or t.dim() == 0:
            continue
        value = t.detach().index_select(0, _idx(out_sel))
        if name == "weight" and t.dim() > 1:
            value = value.index_select(1, _idx(in_sel))
        setattr(small, name, nn.Parameter(value) if name in small._parameters else value)
    return small


@pytest.mark.parametrize("cls,mode,in_sel", [
    (_BatchNormAct, "batchnorm", NON_CONTIGUOUS), (_StdConv, "conv", slice(0, 5)),
    (_ScaledStdConv, "conv", NON_CONTIGUOUS)])
def test_a_subclass_runs_its_own_forward_on_the_active_channels(cls, mode, in_sel) -> None:
    torch.manual_seed(0)
    module = cls(8) if mode == "batchnorm" else cls(8, 8, 3, padding=1)
    module = randomize_norms(module).eval()
    out_sel = in_sel if mode == "batchnorm" else torch.tensor([1, 4, 6])
    reference = _reference_of(module, in_sel, out_sel).eval()
    dyn = _sliced(module, in_sel, out_sel, mode=mode)
    assert isinstance(dyn, cls)
    x = torch.randn(2, len(_idx(in_sel)), 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), reference(x))
        small = _materialized(dyn)
        assert type(small) is cls
        torch.testing.assert_close(small(x), reference(x))


def test_a_user_layer_is_one_registration() -> None:
    """A conv that is no nn.Conv2d subclass slices once its class is registered."""

    class MyConv(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.in_channels, self.out_channels, self.groups = cin, cout, 1
            self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
            self.bias = nn.Parameter(torch.randn(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, self.bias, padding=1)

    layers = LAYERS.copy()
    layers.register(MyConv, CONV)
    assert LAYERS.lookup(MyConv) is None  # the copy keeps the registration local
    conv = MyConv(8, 6)
    reference = copy.deepcopy(conv)
    dyn = _sliced(conv, NON_CONTIGUOUS, slice(0, 3), layers=layers)
    x = torch.randn(1, 4, 5, 5)
    full_x = torch.zeros(1, 8, 5, 5)
    full_x[:, NON_CONTIGUOUS] = x
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), reference(full_x)[:, :3])
        torch.testing.assert_close(_materialized(dyn)(x), reference(full_x)[:, :3])


# --------------------------------------------------------------------------- rebuilding exports


def test_resize_rebuilds_empty_layers_of_the_recorded_shape() -> None:
    conv = nn.Conv2d(8, 6, 3)
    resize(conv, {"attrs": {"in_channels": 4, "out_channels": 3},
                  "tensors": {"weight": [3, 4, 3, 3], "bias": [3]}})
    assert conv.weight.shape == (3, 4, 3, 3) and conv.bias.shape == (3,) and conv.in_channels == 4
    ln = nn.LayerNorm(8)
    resize(ln, {"attrs": {"normalized_shape": [5]}, "tensors": {"weight": [5], "bias": [5]}})
    assert ln.normalized_shape == (5,) and ln.weight.shape == (5,)


@pytest.mark.parametrize("spec", [
    {"attrs": {"padding": 7}},                                   # not a size the spec declares
    {"attrs": {"in_channels": "4"}},                             # not an integer
    {"tensors": {"weight": [3, 4, 5, 5]}},                       # a kernel axis changes
    {"tensors": {"weight": [9, 8, 3, 3]}},                       # grows
    {"tensors": {"weight": [3, 4]}},                             # wrong rank
    {"tensors": {"nothing": [3]}},                               # no such tensor
])
def test_resize_refuses_what_an_export_cannot_have_changed(spec) -> None:
    with pytest.raises(WidthSearchError):
        resize(nn.Conv2d(8, 6, 3), spec)


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


def _out_indices(net, name: str) -> torch.Tensor:
    module = net.model.get_submodule(name)
    cuts = module.__dict__["_widthsearch_slices"].cuts["weight"]
    return selection_tensor(dict(cuts)[0])


def test_supernet_batchnorm_state_with_cafenet_channels() -> None:
    net, x = build_supernet("resnet20", "cafenet")
    bns = {name: net.model.get_submodule(name) for name, b in net.graph.bindings.items()
           if b.kind == "batchnorm"}

    def full(bn: nn.Module, name: str) -> torch.Tensor:
        return full_tensor(bn, name)

    before = {n: (full(bn, "running_mean").clone(), full(bn, "running_var").clone())
              for n, bn in bns.items()}
    cfg = net.space.uniform(0.5)
    choice = _non_contiguous_choice(net, cfg)
    assert len(choice) == len(net.space.searchable)
    net.activate(cfg, choice)
    assert any(bn.__dict__["_widthsearch_slices"].gathers for bn in bns.values())  # gathers
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
        assert torch.equal(full(bn, "running_mean")[rest], mean[rest]), name
        assert torch.equal(full(bn, "running_var")[rest], var[rest]), name
        assert (full(bn, "running_mean")[active] != mean[active]).all(), name
        assert (full(bn, "running_var")[active] != var[active]).all(), name
    net.eval()
    sub = net.export(cfg, choice)
    for name, bn in bns.items():
        exported = sub.get_submodule(name)
        idx = _out_indices(net, name)
        assert torch.equal(exported.running_mean, full(bn, "running_mean")[idx])
        assert torch.equal(exported.running_var, full(bn, "running_var")[idx])
        assert torch.equal(exported.weight, full(bn, "weight")[idx])
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
    weight = full_tensor(conv, "weight")
    grad = weight.grad
    assert grad is not None
    cuts = dict(conv.__dict__["_widthsearch_slices"].cuts["weight"])
    out_idx, in_idx = selection_tensor(cuts[0]), selection_tensor(cuts[1])
    active = torch.zeros_like(grad, dtype=torch.bool)
    active[out_idx[:, None], in_idx[None, :]] = True
    assert grad[~active].abs().sum() == 0
    assert grad[active].abs().sum() > 0
    assert len(out_idx) < weight.shape[0]
