"""timm as a model source: the "timm:<name>" resolver and the timm CNN families.

Each family's default variant (its smallest model) is converted and verified as the
coverage table does: at full width the supernet equals the original model, and at min /
max / random widths and assignments the export equals the supernet with exact MACs. A
handful of small families covering timm's own layer subclasses (BatchNormAct2d,
StdConv2d, ScaledStdConv2d, Conv2dSame, MixedConv2d, LayerNorm2d in a ConvNeXt) run in
CI; the rest are slow.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

import widthsearch as ws  # noqa: E402
from widthsearch import coverage, coverage_timm  # noqa: E402
from widthsearch.errors import WidthSearchError  # noqa: E402
from widthsearch.models import timm as timm_zoo  # noqa: E402

FAST = {
    "mobilenetv3": "BatchNormAct2d",
    "bit": "StdConv2d",
    "nf_regnet": "ScaledStdConv2d",
    "tf_mobilenetv3": "Conv2dSame",
    "mixnet": "MixedConv2d",
    "convnext": "LayerNorm2d (via convnext_atto)",
}
FAST_VARIANT = {"convnext": "convnext_atto"}  # the smallest, zepto_rms, has no LayerNorm2d
FIXED_SPLITS = {"mixnet"}
"""MixedConv2d splits its channels by sizes stored in the module: those groups stay full."""


@functools.cache
def _variant(name: str) -> str:
    fam = next(f for f in coverage_timm.FAMILIES if f.name == name)
    return FAST_VARIANT.get(name) or coverage_timm.default_variant(fam)


def _params() -> list:
    return [pytest.param(f, id=f.name, marks=() if f.name in FAST else pytest.mark.slow)
            for f in coverage_timm.FAMILIES]


def test_the_fast_subset_holds_the_layers_it_is_for() -> None:
    for fam_name, layer in FAST.items():
        variant = _variant(fam_name)
        with torch.device("meta"):
            model = timm.create_model(variant, num_classes=10)
        classes = {type(m).__name__ for m in model.modules()}
        assert layer.split()[0] in classes, (variant, layer)


@pytest.mark.parametrize("family", _params())
def test_family_converts_and_verifies(family: coverage_timm.Family) -> None:
    torch.set_num_threads(1)
    variant = _variant(family.name)
    rep = coverage.check_model(variant, zoo="timm", configs=1)
    assert rep.error is None, rep.warnings[-1]
    assert not rep.silently_wrong, f"full width differs by {rep.full_error:.2e}"
    assert rep.verified, coverage._verified(rep)
    if family.name in FAST and family.name not in FIXED_SPLITS:
        assert rep.status == "full", rep.fixed


def test_families_are_distinct_and_many() -> None:
    names = [f.name for f in coverage_timm.FAMILIES]
    assert len(names) == len(set(names)) >= 60
    for fam in coverage_timm.FAMILIES:
        assert coverage_timm.candidates(fam), fam.name


def test_get_builds_and_records_the_spec() -> None:
    model = ws.models.get("timm:resnet10t", num_classes=3, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert model.widthsearch_spec == {"name": "timm:resnet10t",
                                      "kwargs": {"num_classes": 3, "in_channels": 1}}
    assert ws.models.is_registered("timm:resnet10t")
    assert "timm:resnet10t" in ws.models.list("timm:resnet1*")
    assert ws.models.default_input_size("timm:resnet10t") == (3, 176, 176)
    assert ws.models.smallest_input_size("timm:resnet10t") == 64


def test_weights_are_never_downloaded(tmp_path: Path) -> None:
    with pytest.raises(WidthSearchError, match="pretrained_path"):
        ws.models.get("timm:resnet10t", pretrained=True)
    src = ws.models.get("timm:resnet10t", num_classes=4)
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    loaded = ws.models.get("timm:resnet10t", num_classes=4, pretrained=True,
                           pretrained_path=str(path))
    x = torch.randn(1, 3, 64, 64)
    src.eval(), loaded.eval()
    assert torch.equal(src(x), loaded(x))
    with pytest.raises(WidthSearchError, match="do not fit"):
        ws.models.get("timm:resnet10t", num_classes=5, pretrained_path=str(path))


def test_user_mistakes_are_clear() -> None:
    with pytest.raises(WidthSearchError, match="Did you mean timm:resnet18,"):
        ws.models.get("timm:resnet18x")
    with pytest.raises(WidthSearchError, match="in_channels="):
        ws.models.get("timm:resnet10t", in_chans=1)
    with pytest.raises(WidthSearchError, match="bad arguments"):
        ws.models.get("timm:resnet10t", not_an_argument=1)


def test_missing_timm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(WidthSearchError, match=r"widthsearch\[timm\]"):
        timm_zoo.build("resnet10t")
    assert not timm_zoo.available()


def test_export_round_trip_rebuilds_from_the_registry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = coverage.randomize_norms(ws.models.get("timm:convnext_atto", num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    net = ws.Supernet(model, x)
    cfg = net.space.sample(torch.Generator().manual_seed(1))
    sub = net.export(cfg).eval()
    path = ws.save(sub, tmp_path / "sub")
    back = ws.load(path).eval()
    with torch.no_grad():
        assert torch.allclose(sub(x), back(x), atol=1e-6)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in sub.parameters())


def test_own_forward_norms_slice_their_tensors() -> None:
    """EvoNorm, GroupNorm1 and RmsNorm2d keep their class and forward; their per-channel
    tensors follow the width, and the export equals the supernet."""
    from timm.layers import EvoNorm2dS0, GroupNorm1, RmsNorm2d

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), EvoNorm2dS0(32, groups=4),
        torch.nn.Conv2d(32, 24, 3, padding=1), GroupNorm1(24),
        torch.nn.Conv2d(24, 16, 1), RmsNorm2d(16),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))
    coverage.randomize_norms(model)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "v"):
                t = getattr(m, name, None)
                if isinstance(t, torch.nn.Parameter) and not isinstance(m, torch.nn.Conv2d):
                    t.copy_(torch.rand_like(t) + 0.5)
    x = torch.randn(1, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    net = ws.Supernet(model, x, pattern="cafenet").eval()
    assert all(g.slimmable for g in net.space.groups if g.size in (32, 24, 16))
    assert type(model[1]).__mro__[1] is EvoNorm2dS0 or isinstance(model[1], EvoNorm2dS0)
    with torch.no_grad():
        assert torch.allclose(net(x), ref, atol=1e-5)
    group = next(g for g in net.space.groups if g.size == 32)
    assert all(w % 4 == 0 for w in group.choices)  # EvoNorm keeps its 4 groups whole
    gen = torch.Generator().manual_seed(0)
    for cfg in (net.space.min(), net.space.sample(gen)):
        choice = net.sample_choice(cfg, gen)
        with torch.no_grad(), net.activate(cfg, choice):
            expected = net(x)
        sub = net.export(cfg, choice).eval()
        with torch.no_grad():
            assert torch.allclose(sub(x), expected, atol=1e-5)
        assert net.cost(cfg).macs == ws.supernet.macs_of(sub, x)


def test_blur_pool_export_round_trip(tmp_path: Path) -> None:
    """BlurPool2d's filter copies follow the width in the export and survive ws.load."""
    torch.manual_seed(0)
    model = ws.models.get("timm:resnetblur18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    net = ws.Supernet(model, x)
    assert all(g.slimmable for g in net.space.groups if g.name not in ("input", "fc"))
    sub = net.export(net.space.min()).eval()
    back = ws.load(ws.save(sub, tmp_path / "sub")).eval()
    with torch.no_grad():
        assert torch.allclose(sub(x), back(x), atol=1e-5)


@pytest.mark.parametrize("gate", ["EcaModule", "CecaModule"])
def test_eca_gates_follow_the_width_with_exact_macs(gate: str) -> None:
    """An ECA gate's 1-d conv slides along the channels: the gated channels slim, the gate
    runs unchanged on the narrow tensor, and its MACs (kernel x channels) stay exact."""
    import timm.layers

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 48, 3, padding=1), torch.nn.BatchNorm2d(48), torch.nn.ReLU(),
        getattr(timm.layers, gate)(48), torch.nn.Conv2d(48, 16, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))
    x = torch.randn(1, 3, 12, 12)
    net = ws.Supernet(model.eval(), x).eval()
    gated = next(g for g in net.space.groups if g.size == 48)
    assert gated.slimmable and gated.fixed is None, gated
    gen = torch.Generator().manual_seed(0)
    for cfg in (net.space.min(), net.space.sample(gen), net.space.max()):
        with torch.no_grad(), net.activate(cfg):
            expected = net(x)
        sub = net.export(cfg).eval()
        with torch.no_grad():
            assert torch.allclose(sub(x), expected, atol=1e-5)
        assert net.cost(cfg).macs == ws.supernet.macs_of(sub, x)
