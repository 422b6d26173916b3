"""Channel-group discovery: known architectures, ops without a rule, random CNNs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from conftest import PATTERNS, assert_exports_exactly, build_supernet, randomize_norms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import widthsearch as ws
from widthsearch import WidthSearchError, graph
from widthsearch.supernet import macs_of


def _group_of(net: ws.Supernet, module: str, role: str = "producers") -> ws.ChannelGroup:
    found = [g for g in net.space.groups if module in getattr(g, role)]
    assert len(found) == 1, f"{module} is among the {role} of {len(found)} groups"
    return found[0]


# --------------------------------------------------------------------------- known models


def test_resnet18_groups() -> None:
    net, _ = build_supernet("torchvision:resnet18")
    space = net.space
    stem = _group_of(net, "conv1")
    assert set(stem.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= set(stem.members)
    assert stem.size == 64 and stem.slimmable
    expected_stages = {
        "layer2": {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"},
        "layer3": {"layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"},
        "layer4": {"layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"},
    }
    for stage, producers in expected_stages.items():
        group = _group_of(net, f"{stage}.0.conv2")
        assert set(group.producers) == producers, stage
        assert f"{stage}.0.downsample.1" in group.members
    inner = [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    for conv in inner:
        group = _group_of(net, conv)
        assert group.producers == (conv,)
        assert group.consumers == (conv.replace("conv1", "conv2"),)
        assert group.members == (conv.replace("conv1", "bn1"),)
    assert _group_of(net, "layer4.0.conv2").consumers[-1] == "fc"
    fixed = [g for g in space.groups if g.fixed]
    assert len(fixed) == 2
    assert {g.size for g in fixed} == {3, 10}
    assert _group_of(net, "conv1", "consumers").fixed  # the input
    assert _group_of(net, "fc").fixed  # the logits
    assert len(space.searchable) == 12 == len(space) - 2
    # the 4 stage groups and 8 inner groups are all distinct
    names = {_group_of(net, c).name for c in ["conv1", *inner]}
    names |= {_group_of(net, f"{s}.0.conv2").name for s in expected_stages}
    assert len(names) == 12


def test_resnet20_groups() -> None:
    net, _ = build_supernet("resnet20")
    stages = [_group_of(net, f"layer{s}.0.conv2") for s in (1, 2, 3)]
    assert len({g.name for g in stages}) == 3
    assert set(stages[0].producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2",
                                        "layer1.2.conv2"}
    for s, g in zip((2, 3), stages[1:], strict=True):
        assert set(g.producers) == {f"layer{s}.0.conv2", f"layer{s}.0.downsample.0",
                                    f"layer{s}.1.conv2", f"layer{s}.2.conv2"}
    assert [g.size for g in stages] == [16, 32, 64]
    for s in (1, 2, 3):
        for b in range(3):
            g = _group_of(net, f"layer{s}.{b}.conv1")
            assert g.producers == (f"layer{s}.{b}.conv1",) and g.slimmable
    assert len(net.space.searchable) == 12
    assert sorted(g.size for g in net.space.groups if g.fixed) == [1, 10]


def test_mobilenet_v2_depthwise_joins_its_input_group() -> None:
    net, _ = build_supernet("torchvision:mobilenet_v2")
    depthwise = [name for name, b in net.graph.bindings.items() if b.kind == "depthwise"]
    assert len(depthwise) == 17
    for name in depthwise:
        group = _group_of(net, name, "members")
        conv = net.model.get_submodule(name)
        assert group.size == conv.in_channels == conv.out_channels
        assert name not in group.producers and name not in group.consumers
    # e.g. block 2's expand conv produces what its depthwise conv carries
    g = _group_of(net, "features.2.conv.1.0", "members")
    assert g.producers == ("features.2.conv.0.0",)
    assert g.consumers == ("features.2.conv.2",)
    # the stem's channels run through the first block's depthwise conv unchanged
    assert "features.1.conv.0.0" in _group_of(net, "features.0.0").members


@pytest.mark.parametrize(
    ("name", "block"),
    [("torchvision:efficientnet_b0", "features.2.0.block"),
     ("torchvision:mobilenet_v3_small", "features.4.block")],
)
def test_squeeze_excitation_scale_joins_the_block(name: str, block: str) -> None:
    net, _ = build_supernet(name)
    expand = _group_of(net, f"{block}.0.0")
    se = f"{block}.2"  # torchvision's SqueezeExcitation: fc1 squeezes, fc2 expands
    # the SE's expand conv (fc2) multiplies the block's channels: same group
    assert f"{se}.fc2" in expand.producers
    assert f"{se}.fc1" in expand.consumers
    assert f"{block}.1.0" in expand.members  # the depthwise conv carries them too
    squeeze = _group_of(net, f"{se}.fc1")
    assert squeeze.name != expand.name
    assert squeeze.consumers == (f"{se}.fc2",)
    assert squeeze.slimmable and expand.slimmable


def test_group_details_are_readable() -> None:
    net, _ = build_supernet("resnet20")
    text = _group_of(net, "layer1.0.conv1").details()
    assert "16 channels" in text and "produced by: layer1.0.conv1" in text
    assert "consumed by: layer1.0.conv2" in text and "carried by: layer1.0.bn1" in text
    assert "fixed at full width: the model output" in _group_of(net, "fc").details()


def test_discover_is_reproducible() -> None:
    a, _ = build_supernet("resnet20")
    b, _ = build_supernet("resnet20")
    assert a.space == b.space


# --------------------------------------------------------------------------- ops without a rule


class _Rolled(nn.Module):
    """A conv whose output is shifted along the spatial axis by torch.roll (no rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c1(x)))
        x = torch.roll(self.c2(x), 1, dims=2)
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def shifted_tanh(x: torch.Tensor) -> torch.Tensor:
    """A custom elementwise op that torch.fx keeps as one call (see torch.fx.wrap below)."""
    return torch.tanh(x) + 0.5 * torch.cummax(x, dim=3).values


torch.fx.wrap("shifted_tanh")


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 10, 1)
        self.fc = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = shifted_tanh(self.c1(x))
        return self.fc(F.adaptive_avg_pool2d(self.c2(x), 1).flatten(1))


def _build_recording(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[ws.Supernet, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = ws.Supernet(model, x[:1], **kwargs)
    return net, [w for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(
    ("model_cls", "op", "fixed_groups", "now_slimmable"),
    [(_Rolled, "roll", {"c2", "roll"}, "c2"), (_Wrapped, "shifted_tanh", {"c1", "shifted_tanh"}, "c1")],
)
def test_op_without_a_rule_fixes_its_channels_and_warns_once(
    model_cls, op: str, fixed_groups: set[str], now_slimmable: str
) -> None:
    assert op not in {getattr(f, "__name__", f) for f in graph.RULES.functions}
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    net, caught = _build_recording(randomize_norms(model_cls()), x, pattern="cafenet")
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"no channel rule for: {op}" in message
    for name in fixed_groups:
        assert name in message
    fixed = {g.name for g in net.space.groups if g.fixed and f"no rule for {op}" in g.fixed}
    assert fixed == fixed_groups
    assert not net.space[now_slimmable].slimmable
    assert net.graph.warnings == [message]
    assert net.space["c3" if op == "roll" else "c2"].slimmable  # the rest still slims
    assert_exports_exactly(net, x)

    # teach a private copy of the rule table the op: it becomes slimmable, no warning
    rules = graph.RULES.copy()
    target = torch.roll if op == "roll" else shifted_tanh
    rules.register(target)(graph.passthrough_rule)
    net2, caught2 = _build_recording(randomize_norms(model_cls()), x, pattern="cafenet",
                                     rules=rules)
    assert caught2 == []
    assert net2.space[now_slimmable].slimmable
    assert not any(g.fixed and "no rule" in g.fixed for g in net2.space.groups)
    assert_exports_exactly(net2, x)
    # the default table is untouched: a third conversion warns again
    _, caught3 = _build_recording(model_cls(), x)
    assert len(caught3) == 1


def test_discover_takes_a_rule_table() -> None:
    rules = graph.RULES.copy()
    rules.register(torch.roll)(graph.passthrough_rule)
    x = torch.randn(1, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        found = graph.discover(_Rolled(), x, rules)
    assert found.warnings == []
    with pytest.warns(UserWarning, match="no channel rule for: roll"):
        found = graph.discover(_Rolled(), x)
    assert len(found.warnings) == 1


def test_untraceable_model_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return x

    with pytest.raises(WidthSearchError, match="torch.fx cannot trace Branchy"):
        ws.Supernet(Branchy(), torch.randn(1, 3, 8, 8))


def test_channel_reduction_fixes_the_group() -> None:
    class ChannelMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 6, 3, padding=1)
            self.fc = nn.Linear(6 * 8 * 8 + 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.c1(x)
            attention = h.mean(1, keepdim=True)  # a reduction over the channel axis
            y = self.c2(h) * torch.sigmoid(attention)
            return self.fc(torch.cat([y.flatten(1), attention.flatten(1)], 1))

    x = torch.randn(2, 3, 8, 8)
    net, caught = _build_recording(ChannelMean(), x)
    assert caught == []
    assert net.space["c1"].fixed and "reduction over the channel axis" in net.space["c1"].fixed
    assert net.space["c2"].slimmable
    assert_exports_exactly(net, x)


class _TokenMixing(nn.Module):
    """Linear layers over the spatial axis (N, C, HW): they cannot follow the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(64, 16)  # over the 64 positions, not the 8 channels
        self.out = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2)
        return self.out(F.relu(self.mix(y))).mean(1)


class _Stacked(nn.Module):
    """torch.stack (no rule) puts a new axis in front: the old channel axis moves."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = torch.stack([h, self.b(h)], 0).sum(0)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("model_cls", [_TokenMixing, _Stacked])
def test_layers_over_another_axis_are_fixed_with_exact_costs(model_cls) -> None:
    """Regression: a Linear over a non-channel axis gave its output the wrong channel count
    (Supernet construction crashed) and such layers were costed with the wrong input width."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    net, caught = _build_recording(model_cls(), x)
    assert len(caught) == (1 if model_cls is _Stacked else 0)
    if model_cls is _TokenMixing:
        assert net.space["mix"].size == 16 and net.space["mix"].fixed
        assert net.space["conv"].fixed and "unfollowed feature axis" in net.space["conv"].fixed
    else:
        assert "no rule for stack" in (net.space["a"].fixed or "")
    for cfg in (net.space.max(), net.space.min()):
        sub = net.export(cfg).eval()
        assert net.cost(cfg).macs == macs_of(sub, x)
    assert_exports_exactly(net, x)


class _HardCodedWidth(nn.Module):
    """A reshape with a literal channel count: discovery follows it, only running can tell."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(8 + 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).reshape(x.shape[0], 8, -1).mean(-1)
        return self.fc(torch.cat([a, self.b(x).mean((2, 3))], 1))


def test_verification_fixes_groups_that_do_not_run_when_slimmed() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    net, caught = _build_recording(_HardCodedWidth(), x, pattern="cafenet")
    assert len(caught) == 1
    assert "fail to run when slimmed" in str(caught[0].message)
    assert "a (RuntimeError" in str(caught[0].message)
    assert not net.space["a"].slimmable
    assert net.space["a"].fixed.startswith("does not run when slimmed")
    assert net.space["b"].slimmable  # the other branch still slims
    assert_exports_exactly(net, x)


# --------------------------------------------------------------------------- random CNNs


class _ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: str, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=norm == "none")
        self.norm = _norm(norm, cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(2, c)
    return nn.Identity()


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.a = _ConvNormAct(cin, cout, 3, 1, norm)
        self.b = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn = _norm(norm, cout)
        self.proj = None if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return F.relu(self.bn(self.b(self.a(x))) + shortcut)


class _Concat(nn.Module):
    def __init__(self, cin: int, c1: int, c2: int, norm: str):
        super().__init__()
        self.left = _ConvNormAct(cin, c1, 1, 1, norm)
        self.right = _ConvNormAct(cin, c2, 3, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


class _Dense(nn.Module):
    """DenseNet-style: the input's channels and new ones, concatenated."""

    def __init__(self, cin: int, growth: int, norm: str):
        super().__init__()
        self.grow = _ConvNormAct(cin, growth, 3, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.grow(x)), 1)


class _Shuffle(nn.Module):
    """ShuffleNetV2 units: one where both branches read the input, then `repeats` that keep
    one half, transform the other, concatenate and shuffle the two halves together."""

    def __init__(self, cin: int, half: int, repeats: int, norm: str):
        super().__init__()
        self.left = _ConvNormAct(cin, half, 1, 1, norm)
        self.right = _ConvNormAct(cin, half, 1, 1, norm)
        self.units = nn.ModuleList(_ConvNormAct(half, half, 3, 1, norm) for _ in range(repeats))

    @staticmethod
    def shuffle(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuffle(torch.cat((self.left(x), self.right(x)), 1))
        for unit in self.units:
            keep, work = x.chunk(2, dim=1)
            x = self.shuffle(torch.cat((keep, unit(work)), 1))
        return x


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class RandomCNN(nn.Module):
    """A CNN assembled from a recipe drawn by hypothesis (see `recipes`)."""

    def __init__(self, recipe: dict) -> None:
        super().__init__()
        norm = recipe["norm"]
        c, side = recipe["stem"], recipe["side"]
        blocks: list[nn.Module] = [_ConvNormAct(recipe["in_channels"], c, 3, 1, norm)]
        for block in recipe["blocks"]:
            kind = block[0]
            if kind == "conv":
                stride = block[2] if side >= 4 else 1
                blocks.append(_ConvNormAct(c, block[1], block[3], stride, norm))
                c, side = block[1], -(-side // stride)
            elif kind == "res":
                blocks.append(_Residual(c, block[1], norm))
                c = block[1]
            elif kind == "cat":
                blocks.append(_Concat(c, block[1], block[2], norm))
                c = block[1] + block[2]
            elif kind == "dense":
                blocks.append(_Dense(c, block[1], norm))
                c += block[1]
            elif kind == "dw":
                blocks.append(_ConvNormAct(c, c, 3, 1, norm, groups=c))
            elif kind == "se":
                blocks.append(_SqueezeExcite(c, block[1]))
            elif kind == "shuffle":
                blocks.append(_Shuffle(c, block[1], block[2], norm))
                c = 2 * block[1]
        self.body = nn.Sequential(*blocks)
        self.head_kind = recipe["head"]
        if self.head_kind == "pool":
            self.head = nn.Linear(c, recipe["classes"])
        else:  # flatten the spatial map into the classifier: one channel spans side**2 inputs
            self.head = nn.Linear(c * side * side, recipe["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.head_kind == "pool":
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        else:
            x = x.flatten(1)
        return self.head(x)


@st.composite
def recipes(draw) -> dict:
    norm = draw(st.sampled_from(["bn", "gn", "none"]))
    even = norm == "gn"  # GroupNorm(2, c) needs an even channel count

    def channels(lo: int = 2, hi: int = 12):
        values = st.integers(lo // 2 if even else lo, hi // 2 if even else hi)
        return values.map(lambda v: 2 * v) if even else values

    block = st.one_of(
        st.tuples(st.just("conv"), channels(), st.sampled_from([1, 2]), st.sampled_from([1, 3])),
        st.tuples(st.just("res"), channels()),
        st.tuples(st.just("cat"), channels(), channels()),
        st.tuples(st.just("dense"), channels()),
        st.tuples(st.just("dw")),
        st.tuples(st.just("se"), st.integers(1, 4)),
        st.tuples(st.just("shuffle"), channels(2, 8), st.integers(1, 4)),
    )
    return {
        "in_channels": draw(st.sampled_from([1, 3])),
        "side": draw(st.sampled_from([6, 8])),
        "norm": norm,
        "stem": draw(channels(4, 12)),
        "blocks": draw(st.lists(block, min_size=1, max_size=4)),
        "head": draw(st.sampled_from(["pool", "flatten"])),
        "classes": draw(st.integers(2, 5)),
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe=recipes(), seed=st.integers(0, 2**16))
def test_random_cnns_convert_export_and_cost_exactly(recipe: dict, seed: int) -> None:
    x = torch.randn(2, recipe["in_channels"], recipe["side"], recipe["side"],
                    generator=torch.Generator().manual_seed(seed))
    for pattern in PATTERNS:
        torch.manual_seed(seed)
        model = randomize_norms(RandomCNN(recipe), seed)
        with torch.no_grad():
            reference = model.eval()(x)
        net, caught = _build_recording(model, x, pattern=pattern)
        assert caught == [], [str(w.message) for w in caught]
        assert not any("does not run" in (g.fixed or "") for g in net.space.groups)
        net.eval()
        with torch.no_grad():  # full width is the original model
            torch.testing.assert_close(net(x), reference, rtol=0, atol=0)
        gen = torch.Generator().manual_seed(seed)
        configs = [net.space.min()] + [net.space.sample(gen) for _ in range(2)]
        for cfg in configs:
            choice = net.sample_choice(cfg, gen)
            with torch.no_grad(), net.activate(cfg, choice):
                expected = net(x)
            assert expected.shape == reference.shape
            sub = net.export(cfg, choice).eval()
            with torch.no_grad():
                torch.testing.assert_close(sub(x), expected, rtol=1e-5, atol=1e-5)
            cost = net.cost(cfg)
            assert cost.macs == macs_of(sub, x)
            assert cost.params == sum(p.numel() for p in sub.parameters())
