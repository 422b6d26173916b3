"""Export: the plain model equals the supernet, costs are exact, save/load and ONNX work."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import (
    ALL_MODELS,
    PATTERNS,
    TV_HEAVY,
    build_supernet,
    randomize_norms,
    widthsearch_classes,
)

import widthsearch as ws
from widthsearch import WidthSearchError
from widthsearch.dynamic import original_class
from widthsearch.supernet import macs_of


def _width(layout, cfg) -> int:
    return sum(cfg[s] for s in layout.segments) * layout.inner


def _check_physical_shapes(net: ws.Supernet, sub: nn.Module, cfg) -> None:
    """Every sliced layer of the export has exactly the tensors its groups' widths imply."""
    for name, binding in net.graph.bindings.items():
        layer = sub.get_submodule(name)
        assert type(layer) is original_class(net.model.get_submodule(name))
        out, inp = _width(binding.out_layout, cfg), _width(binding.in_layout, cfg)
        if binding.kind == "conv":
            assert tuple(layer.weight.shape[:2]) == (out, inp), name
            assert (layer.in_channels, layer.out_channels) == (inp, out), name
        elif binding.kind == "depthwise":
            assert tuple(layer.weight.shape[:2]) == (out, 1), name
            assert layer.groups == layer.in_channels == layer.out_channels == out == inp, name
        elif binding.kind == "linear":
            assert tuple(layer.weight.shape) == (out, inp), name
            assert (layer.in_features, layer.out_features) == (inp, out), name
        elif binding.kind == "batchnorm":
            assert layer.num_features == out, name
            for t in (layer.weight, layer.bias, layer.running_mean, layer.running_var):
                assert t is None or tuple(t.shape) == (out,), name
        if getattr(layer, "bias", None) is not None:
            assert tuple(layer.bias.shape) == (out,), name


def _export_configs(net: ws.Supernet, n_random: int, seed: int = 1) -> list:
    gen = torch.Generator().manual_seed(seed)
    small = net.space.min()
    configs = [(net.space.max(), None), (small, net.sample_choice(small, gen))]
    for _ in range(n_random):
        cfg = net.space.sample(gen)
        configs.append((cfg, net.sample_choice(cfg, gen)))
    return configs


def _check_export(name: str, pattern: str, n_random: int) -> None:
    net, x = build_supernet(name, pattern)
    net.eval()
    full_params = sum(p.numel() for p in net.parameters())
    for cfg, choice in _export_configs(net, n_random):
        with torch.no_grad(), net.activate(cfg, choice):
            expected = net(x)
        sub = net.export(cfg, choice).eval()
        assert widthsearch_classes(sub) == []
        with torch.no_grad():
            got = sub(x)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
        cost = net.cost(cfg)
        assert cost.macs == macs_of(sub, x)
        params = sum(p.numel() for p in sub.parameters())
        assert cost.params == params
        _check_physical_shapes(net, sub, cfg)
        if cfg == net.space.min():
            assert params < full_params
        assert sub.widthsearch_spec["width_config"] == dict(cfg)
    assert net.config == net.space.max()  # exporting does not change the active widths


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_export_equivalence_and_exact_costs(name: str, pattern: str) -> None:
    """Invariants 1 and 2 at the max, the min and random widths (8 random; 3 for heavy models)."""
    _check_export(name, pattern, n_random=3 if name in TV_HEAVY else 8)


@pytest.mark.slow
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_export_equivalence_many_configs(name: str, pattern: str) -> None:
    _check_export(name, pattern, n_random=5 if name in TV_HEAVY else 20)


def test_export_keeps_the_active_choice_by_default() -> None:
    net, x = build_supernet("resnet20", "bcnet")
    net.eval()
    cfg = net.space.min()
    net.activate(cfg, 1)
    with torch.no_grad():
        expected = net(x)
        sub = net.export().eval()
        left = net.export(cfg, 0).eval()
        torch.testing.assert_close(sub(x), expected, rtol=1e-6, atol=1e-5)
        assert not torch.allclose(left(x), expected)
    assert sub.widthsearch_spec["choice"] == net.choice


def test_exported_model_is_independent_of_the_supernet(resnet20_net) -> None:
    net, x = resnet20_net
    net.eval()
    cfg = net.space.uniform(0.5)
    sub = net.export(cfg).eval()
    with torch.no_grad():
        before = sub(x)
        for p in net.parameters():
            p.add_(1.0)
        torch.testing.assert_close(sub(x), before, rtol=0, atol=0)


# --------------------------------------------------------------------------- save / load


def test_save_and_load_zoo_model(tmp_path, resnet20_net) -> None:
    net, x = resnet20_net
    net.eval()
    cfg = net.space.sample(torch.Generator().manual_seed(3))
    sub = net.export(cfg).eval()
    weights = ws.save(sub, tmp_path / "m", metadata={"note": "test"})
    assert weights == tmp_path / "m.safetensors"
    assert weights.exists() and (tmp_path / "m.json").exists()
    loaded = ws.load(tmp_path / "m").eval()
    assert type(loaded) is type(sub)
    assert widthsearch_classes(loaded) == []
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sub(x), rtol=0, atol=0)
    assert loaded.widthsearch_spec["width_config"] == dict(cfg)
    assert loaded.widthsearch_spec["name"] == "resnet20"
    # both file names resolve to the same saved model
    again = ws.load(tmp_path / "m.json").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), sub(x), rtol=0, atol=0)


def test_save_and_load_torchvision_model(tmp_path) -> None:
    net, x = build_supernet("torchvision:mobilenet_v3_small", "cafenet")
    net.eval()
    gen = torch.Generator().manual_seed(4)
    cfg = net.space.sample(gen)
    sub = net.export(cfg, net.sample_choice(cfg, gen)).eval()
    ws.save(sub, tmp_path / "tv")
    loaded = ws.load(tmp_path / "tv.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sub(x), rtol=0, atol=0)


class _UserNet(nn.Module):
    """A model no registry knows: loading needs the full-size model passed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 4)
        return self.head(torch.flatten(x, 1))


def test_save_and_load_user_model(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    net = ws.Supernet(randomize_norms(_UserNet()), x[:1], pattern="cafenet").eval()
    cfg = net.space.min()
    choice = {k: n - 1 for k, n in net.num_choices(cfg).items()}
    sub = net.export(cfg, choice).eval()
    ws.save(sub, tmp_path / "user")
    loaded = ws.load(tmp_path / "user", model=_UserNet()).eval()
    assert loaded.conv.out_channels == cfg["conv"] < 12
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sub(x), rtol=0, atol=0)
    with pytest.raises(WidthSearchError, match=r"does not name a registered model.*model="):
        ws.load(tmp_path / "user")


class _UserNetWithExtra(_UserNet):
    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Linear(2, 2)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(WidthSearchError, match="missing"):
        ws.load(tmp_path / "nothing")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(WidthSearchError, match="not a widthsearch export"):
        ws.load(tmp_path / "other")
    x = torch.randn(1, 3, 16, 16)
    net = ws.Supernet(_UserNet(), x)
    ws.save(net.export(net.space.min()), tmp_path / "small")
    with pytest.raises(WidthSearchError, match=r"does not fit.*extra\.weight"):
        ws.load(tmp_path / "small", model=_UserNetWithExtra())
    with pytest.raises(WidthSearchError, match=r"layer 'bn'.*Sequential does not have"):
        ws.load(tmp_path / "small", model=nn.Sequential(nn.Conv2d(3, 12, 3)))
    wrong_kernel = _UserNet()
    wrong_kernel.conv = nn.Conv2d(3, 12, 5, padding=2)  # 5x5 where the saved weight is 3x3
    with pytest.raises(WidthSearchError, match=r"(?s)does not fit.*conv\.weight"):
        ws.load(tmp_path / "small", model=wrong_kernel)


# --------------------------------------------------------------------------- ONNX


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_onnx_export_runs_in_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net, x = build_supernet("resnet20", "cafenet")
    net.eval()
    gen = torch.Generator().manual_seed(5)
    cfg = net.space.sample(gen)
    sub = net.export(cfg, net.sample_choice(cfg, gen)).eval()
    path = ws.to_onnx(sub, x[:1], tmp_path / "m.onnx")
    assert path.exists() and path.stat().st_size > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})  # batch 2: the batch axis is dynamic
    with torch.no_grad():
        expected = sub(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)
    assert sub.training is False


def test_macs_of_counts_conv_and_linear() -> None:
    """The reference counter itself: a hand-computed conv + linear."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    expected = 8 * 8 * 9 * 3 * 4 + 4 * 8 * 8 * 5
    assert macs_of(model, torch.randn(2, 3, 8, 8)) == expected
    net = ws.Supernet(model, torch.randn(1, 3, 8, 8))
    assert net.cost().macs == expected
