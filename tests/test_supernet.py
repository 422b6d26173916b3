"""Supernet: every sampled width runs, activation semantics, independence, clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL_MODELS,
    BATCH,
    PATTERNS,
    TV_HEAVY,
    build_model,
    build_supernet,
    sample_input,
)

import widthsearch as ws
from widthsearch import WidthSearchError


def _n_configs(name: str) -> int:
    return 5 if name in TV_HEAVY else 20


# --------------------------------------------------------------------------- random widths


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_at_random_widths(name: str, pattern: str, generator: torch.Generator) -> None:
    net, x = build_supernet(name, pattern)
    net.train()  # the strictest mode: batch statistics over the active channels only
    with torch.no_grad():
        full = net(x)
        outputs, seen = [], set()
        for _ in range(_n_configs(name)):
            cfg = net.space.sample(generator)
            choice = net.sample_choice(cfg, generator)
            net.activate(cfg, choice)
            y = net(x)
            assert y.shape == full.shape == (BATCH, 10)
            assert torch.isfinite(y).all()
            assert net.config == cfg
            assert net.choice == {k: v for k, v in choice.items() if v}
            outputs.append(y)
            seen.add(cfg)
    assert len(seen) > 1, "sampling never changed the widths"
    # the widths are really applied: a slimmed network computes something else
    assert not any(torch.allclose(y, full) for y in outputs)


@pytest.mark.parametrize("pattern", ["cafenet", "bcnet"])
def test_choice_selects_other_channels(pattern: str) -> None:
    net, x = build_supernet("resnet20", pattern)
    net.eval()
    cfg = net.space.min()
    counts = net.num_choices(cfg)
    assert counts, f"{pattern} offers no alternative channel assignment at the min widths"
    with torch.no_grad():
        net.activate(cfg)
        left = net(x)
        net.activate(cfg, {name: n - 1 for name, n in counts.items()})
        other = net(x)
    assert not torch.allclose(left, other)


def test_sample_choice_only_names_groups_with_alternatives(generator: torch.Generator) -> None:
    net, _ = build_supernet("resnet20", "bcnet")
    cfg = net.space.min()
    choice = net.sample_choice(cfg, generator)
    assert set(choice) == {g.name for g in net.space.searchable}  # each has left and right
    assert all(k in (0, 1) for k in choice.values())
    assert net.sample_choice(net.space.max(), generator) == {}  # full width: one assignment


# --------------------------------------------------------------------------- activation


def test_activate_as_call_and_as_context_manager(resnet20_net) -> None:
    net, x = resnet20_net
    net.eval()
    small, half = net.space.min(), net.space.uniform(0.5)
    with torch.no_grad():
        full_out = net(x)
        net.activate(small)  # a plain call leaves the widths on
        assert net.config == small
        small_out = net(x)
        with net.activate(half) as same:
            assert same is net
            assert net.config == half
            half_out = net(x)
        assert net.config == small  # restored to the previous widths, not to full
        torch.testing.assert_close(net(x), small_out, rtol=0, atol=0)
        net.activate()  # no config: full width
        assert net.config == net.space.max()
        torch.testing.assert_close(net(x), full_out, rtol=0, atol=0)
    assert not torch.allclose(half_out, small_out)
    assert not torch.allclose(half_out, full_out)


def test_context_manager_restores_choice_and_survives_errors() -> None:
    net, x = build_supernet("resnet20", "bcnet")
    cfg = net.space.min()
    net.activate(cfg, 1)
    right = dict(net.choice)
    assert right and set(right.values()) == {1}
    with pytest.raises(RuntimeError, match="boom"), net.activate(net.space.max()):
        raise RuntimeError("boom")
    assert net.config == cfg
    assert net.choice == right


def test_missing_groups_default_to_full_width(resnet20_net) -> None:
    net, _ = resnet20_net
    g = net.space.searchable[0]
    net.activate({g.name: g.choices[0]})
    assert net.config[g.name] == g.choices[0]
    assert all(net.config[o.name] == o.size for o in net.space.groups if o.name != g.name)


def test_two_supernets_keep_independent_widths() -> None:
    a, x = build_supernet("resnet20")
    b, _ = build_supernet("resnet20")
    a.eval()
    b.eval()
    with torch.no_grad():
        b_full = b(x)
        a_full = a(x)
        a.activate(a.space.min())
        torch.testing.assert_close(b(x), b_full, rtol=0, atol=0)
        assert b.config == b.space.max()
        b.activate(b.space.uniform(0.5))
        b_half = b(x)
        a_min = a(x)
        assert a.config == a.space.min()
        with a.activate(a.space.max()):
            torch.testing.assert_close(a(x), a_full, rtol=0, atol=0)
            torch.testing.assert_close(b(x), b_half, rtol=0, atol=0)
        torch.testing.assert_close(a(x), a_min, rtol=0, atol=0)
    assert not torch.allclose(a_min, a_full)


def test_supernet_shares_the_models_parameters() -> None:
    model = build_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = ws.Supernet(model, sample_input("resnet20")[:1])
    assert net.model is model
    # dynamic layers keep the original names and tensors: checkpoints stay compatible
    after = net.model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)


def test_custom_choices_and_min_ratio() -> None:
    net, _ = build_supernet("resnet20", min_ratio=0.5, divisions=4)
    for g in net.space.searchable:
        assert g.choices[0] >= g.size / 2
        assert g.choices[-1] == g.size
        assert len(g.choices) <= 3
    name = net.space.searchable[0].name
    size = net.space[name].size
    net2, _ = build_supernet("resnet20", choices={name: [size // 2, size]})
    assert net2.space[name].choices == (size // 2, size)


# --------------------------------------------------------------------------- errors


def test_error_wrong_input_channels() -> None:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(WidthSearchError, match=r"example input.*\(1, 3, 28, 28\)"):
        ws.Supernet(model, example_input=torch.randn(1, 3, 28, 28))


def test_error_example_input_not_a_batch() -> None:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(WidthSearchError, match="example_input must be a tensor"):
        ws.Supernet(model, example_input=[torch.randn(1, 1, 28, 28)])  # type: ignore[arg-type]
    with pytest.raises(WidthSearchError, match="batch axis"):
        ws.Supernet(model, example_input=torch.randn(28))


def test_error_supernet_of_a_supernet(resnet20_net) -> None:
    net, x = resnet20_net
    with pytest.raises(WidthSearchError, match="already a Supernet"):
        ws.Supernet(net, x[:1])


def test_error_unknown_group(resnet20_net) -> None:
    net, _ = resnet20_net
    with pytest.raises(WidthSearchError, match=r"unknown channel group 'layer9\.conv'.*conv1"):
        net.activate({"layer9.conv": 4})
    with pytest.raises(WidthSearchError, match="unknown channel group"):
        net.cost({"layer9.conv": 4})
    assert net.config == net.space.max()  # a rejected config changes nothing


def test_error_width_not_allowed(resnet20_net) -> None:
    net, _ = resnet20_net
    with pytest.raises(WidthSearchError, match=r"width 17 is not allowed for group 'conv1'.*16"):
        net.activate({"conv1": 17})
    with pytest.raises(WidthSearchError, match="width 0 is not allowed"):
        net.export({"conv1": 0})
    with pytest.raises(WidthSearchError, match="width 4 is not allowed for group 'fc'"):
        net.activate({"fc": 4})  # the classifier output is fixed


def test_error_bad_pattern() -> None:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(WidthSearchError, match=r"unknown pattern 'zigzag'.*leftmost"):
        ws.Supernet(model, sample_input("resnet20")[:1], pattern="zigzag")


def test_error_choice_out_of_range() -> None:
    net, _ = build_supernet("resnet20", "bcnet")
    cfg = net.space.min()
    with pytest.raises(WidthSearchError, match=r"choice 2 for group 'conv1'.*out of range.*has 2"):
        net.activate(cfg, {"conv1": 2})
    with pytest.raises(WidthSearchError, match="out of range"):
        net.activate(cfg, {"conv1": -1})
    with pytest.raises(WidthSearchError, match="unknown channel group"):
        net.activate(cfg, {"nope": 1})
    leftmost, _ = build_supernet("resnet20", "leftmost")
    with pytest.raises(WidthSearchError, match="out of range"):
        leftmost.activate(leftmost.space.min(), {"conv1": 1})


def test_error_bad_space_arguments() -> None:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    with pytest.raises(WidthSearchError, match="min_ratio"):
        ws.Supernet(model, sample_input("resnet20")[:1], min_ratio=0.0)
    net, _ = build_supernet("resnet20")
    with pytest.raises(WidthSearchError, match="group 'fc' is fixed"):
        net.space.with_choices({"fc": [5, 10]})
    with pytest.raises(WidthSearchError, match=r"must lie in \[1, 16\]"):
        net.space.with_choices({"conv1": [8, 32]})


# ------------------------------------------------------- faithful conversion (invariant 7)

import copy  # noqa: E402
import warnings  # noqa: E402

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import assert_exports_exactly, randomize_norms  # noqa: E402
from test_dynamic import _BatchNormAct, _ScaledStdConv, _StdConv  # noqa: E402

from widthsearch.dynamic import CONV, LayerSpec  # noqa: E402


class _SubclassNet(nn.Module):
    """Layer subclasses with forwards of their own, as timm builds its CNNs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _StdConv(3, 16, 3, padding=1)
        self.bn1 = _BatchNormAct(16)
        self.conv = _ScaledStdConv(16, 24, 3, padding=1)
        self.bn2 = _BatchNormAct(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv(self.bn1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_layer_subclasses_keep_their_own_forward(pattern: str) -> None:
    torch.manual_seed(0)
    model = randomize_norms(_SubclassNet()).eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        net = ws.Supernet(model, x[:1], pattern=pattern)
    assert [g.name for g in net.space.searchable] == ["stem", "conv"]  # all but input, logits
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), rtol=1e-5, atol=1e-6)
    assert isinstance(net.model.bn1, _BatchNormAct) and isinstance(net.model.conv, _ScaledStdConv)
    assert_exports_exactly(net, x, n=6)
    sub = net.export(net.space.min())
    assert type(sub.bn1) is _BatchNormAct and type(sub.conv) is _ScaledStdConv
    assert sub.conv.gain.shape[0] == sub.conv.out_channels < 24


def test_construction_names_the_first_module_that_differs_at_full_width() -> None:
    """A layer spec that changes the computation at full width is an error, not a result."""
    def dilated(m: nn.Module, mode: str, n_in: int, n_out: int) -> dict:
        return {**CONV.sizes(m, mode, n_in, n_out), "dilation": (2, 2)}

    layers = ws.dynamic.LAYERS.copy()
    layers.register(nn.Conv2d, LayerSpec(CONV.tensors, dilated, (*CONV.size_names, "dilation"),
                                         macs_tensor="weight"))
    with pytest.raises(WidthSearchError, match=r"first differs at stem \(_StdConv\)"):
        ws.Supernet(_SubclassNet(), torch.randn(1, 3, 8, 8), layers=layers)


class _BypassingNorm(nn.BatchNorm2d):
    """Reads its weight around the sliced attribute: at a narrow width it computes
    something its export does not, without failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self._parameters["weight"].mean()


class _BypassNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = _BypassingNorm(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn_b(self.b(self.bn(self.a(x)))).mean((2, 3)))


def test_a_layer_unfaithful_when_sliced_keeps_its_channels_and_is_named() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"(?s)a .*bn \(_BypassingNorm\) computes differently"):
        net = ws.Supernet(randomize_norms(_BypassNet()), x[:1])
    assert not net.space["a"].slimmable and "bn (_BypassingNorm)" in net.space["a"].fixed
    assert net.space["b"].slimmable  # the rest still slims
    assert_exports_exactly(net, x)


class _Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 16, 5, padding=2)
        self.bn_a = nn.BatchNorm1d(16)
        self.dw = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.b = nn.Conv1d(16, 12, 3, stride=2)
        self.bn_b = nn.BatchNorm1d(12)
        self.fc = nn.Linear(12 * 7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_a(self.a(x)))
        x = F.relu(self.bn_b(self.b(x + self.dw(x))))
        return self.fc(x.flatten(1))


class _Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm3d(8)
        self.b = nn.Conv3d(8, 12, (1, 3, 3), padding=(0, 1, 1))
        self.bn_b = nn.BatchNorm3d(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_b(self.b(F.relu(self.bn_a(self.a(x))))))
        return self.fc(x.mean((2, 3, 4)))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("cls,shape", [(_Conv1dNet, (2, 16)), (_Conv3dNet, (1, 4, 6, 6))])
def test_conv1d_and_conv3d_models_slim_with_exact_macs(cls, shape, pattern: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        net = ws.Supernet(randomize_norms(cls()), x[:1], pattern=pattern)
    assert len(net.space.searchable) == 2
    assert_exports_exactly(net, x, n=6)


def test_selection_caches_are_bounded(generator: torch.Generator) -> None:
    net = ws.Supernet(ws.models.get("resnet20", num_classes=10, in_channels=1),
                      torch.randn(1, 1, 28, 28), pattern="cafenet", cache_size=50)
    for _ in range(40):
        cfg = net.space.sample(generator)
        net.activate(cfg, net.sample_choice(cfg, generator))
    assert len(net._composed) <= 50 and len(net._selections) <= 50
    x = torch.randn(2, 1, 28, 28)
    assert_exports_exactly(net, x, n=2)  # evicted entries are recomputed the same


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_channels_last_weights_compute_the_same_subnets(name: str, pattern: str,
                                                        generator: torch.Generator) -> None:
    """NHWC weights (train.channels_last) change the memory layout only: every subnet and
    its export compute what the contiguous supernet computes."""
    plain, x = build_supernet(name, pattern)
    nhwc, _ = build_supernet(name, pattern)
    nhwc.to(memory_format=torch.channels_last)
    convs = [p for p in nhwc.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    plain.eval()
    nhwc.eval()
    with torch.no_grad():
        for _ in range(4):
            cfg = plain.space.sample(generator)
            choice = plain.sample_choice(cfg, generator)
            plain.activate(cfg, choice)
            nhwc.activate(cfg, choice)
            expected = plain(x)
            torch.testing.assert_close(nhwc(x), expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(nhwc.export(cfg, choice).eval()(x), expected,
                                       rtol=1e-4, atol=1e-5)
