"""Model zoo and torchvision resolver: every zoo model behind the same interface."""

from __future__ import annotations

import json

import pytest
import torch
import torch.fx
from torch import nn

import widthsearch.models as models
from widthsearch.errors import WidthSearchError
from widthsearch.models import registry

ZOO = ["resnet20", "resnet56", "mobilenetv2"]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_zoo_output_shape(name: str, in_channels: int, size: int) -> None:
    model = models.get(name, num_classes=7, in_channels=in_channels)
    # train mode with batch 2 is the strictest (BN needs > 1 value per channel); eval mode
    # is exercised by the fx test
    assert model.train()(torch.randn(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_fx_trace_matches_eager(name: str) -> None:
    model = models.get(name, in_channels=1).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_spec_round_trips(name: str) -> None:
    model = models.get(name, num_classes=5, in_channels=1, width_mult=0.5)
    spec = json.loads(json.dumps(model.widthsearch_spec))
    assert spec == {
        "name": name,
        "kwargs": {"num_classes": 5, "in_channels": 1, "width_mult": 0.5},
    }
    rebuilt = models.get(spec["name"], **spec["kwargs"])
    assert rebuilt.widthsearch_spec == spec
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_spec_records_builder_defaults() -> None:
    assert models.get("resnet20").widthsearch_spec == {
        "name": "resnet20",
        "kwargs": {"num_classes": 10, "in_channels": 3, "width_mult": 1.0},
    }


# resnet20 ~0.27M, resnet56 ~0.86M (He et al.; option-B shortcuts add ~3K), MobileNetV2 ~2.24M
PARAMS = {"resnet20": 272_474, "resnet56": 855_770, "mobilenetv2": 2_236_682}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_param_counts(name: str) -> None:
    assert _n_params(models.get(name, num_classes=10, in_channels=3)) == PARAMS[name]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("width_mult", [0.25, 0.5, 1.5])
def test_zoo_width_mult_changes_channels_not_forward(name: str, width_mult: float) -> None:
    # forward takes channel counts from tensors, so any width runs
    model = models.get(name, in_channels=3, width_mult=width_mult)
    assert (_n_params(model) < PARAMS[name]) == (width_mult < 1)
    model = models.get(name, in_channels=1, width_mult=width_mult)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_structure() -> None:
    model = models.get("resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64]  # option B
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [3, 3, 3]
    assert len(models.get("resnet56").layer3) == 9
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer1[0].conv1.stride == (1, 1)


def test_mobilenetv2_small_image_layout() -> None:
    model = models.get("mobilenetv2")
    assert model.features[0][0].stride == (1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (8, 8)  # total stride 4
    assert model.last_channel == 1280
    assert models.get("mobilenetv2", width_mult=0.5).last_channel == 1280
    assert models.get("mobilenetv2", width_mult=1.5).last_channel == 1920
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_class": 10},
        {"num_classes": 0},
        {"num_classes": 2.5},
        {"in_channels": True},
        {"width_mult": -1.0},
        {"width_mult": "wide"},
    ],
)
def test_zoo_bad_kwargs(kwargs: dict) -> None:
    with pytest.raises(WidthSearchError, match=next(iter(kwargs))):
        models.get("resnet20", **kwargs)


# --------------------------------------------------------------------------- registry


def test_list_contains_zoo_and_torchvision() -> None:
    names = models.list()
    assert set(ZOO) <= set(names)
    assert "torchvision:resnet18" in names
    assert "torchvision:mobilenet_v2" in names
    assert not any("fasterrcnn" in n or "fcn_" in n for n in names)  # classification only
    assert models.list("torchvision:resnet1*") == [
        "torchvision:resnet101",
        "torchvision:resnet152",
        "torchvision:resnet18",
    ]


def test_unknown_name_lists_known_and_torchvision_hint() -> None:
    with pytest.raises(WidthSearchError) as info:
        models.get("resnet21")
    msg = str(info.value)
    assert "resnet20" in msg and "mobilenetv2" in msg and "torchvision:<name>" in msg
    with pytest.raises(WidthSearchError, match="torchvision"):
        models.get("torchvision:resnet19")
    with pytest.raises(WidthSearchError):
        models.default_input_size("nope")
    with pytest.raises(WidthSearchError):
        models.smallest_input_size("torchvision:nope")


def test_default_and_smallest_input_size() -> None:
    assert models.default_input_size("resnet20") == (3, 32, 32)
    assert models.default_input_size("mobilenetv2", in_channels=1) == (1, 32, 32)
    assert models.default_input_size("torchvision:resnet18") == (3, 224, 224)
    assert models.default_input_size("torchvision:inception_v3", 1) == (1, 299, 299)
    assert models.smallest_input_size("torchvision:resnet18") == 32
    assert models.smallest_input_size("torchvision:alexnet") == 64
    assert models.smallest_input_size("torchvision:vit_b_16") == 224
    assert models.smallest_input_size("resnet20") <= 28


def test_register_custom_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @models.register("tiny", default_input_size=(1, 16, 16))
    def tiny(num_classes: int = 2) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(256, num_classes))

    assert "tiny" in models.list()
    model = models.get("tiny", num_classes=3)
    assert model.widthsearch_spec == {"name": "tiny", "kwargs": {"num_classes": 3}}
    assert models.default_input_size("tiny", in_channels=4) == (4, 16, 16)
    assert models.smallest_input_size("tiny") == 16
    with pytest.raises(WidthSearchError, match="already registered"):
        models.register("tiny", default_input_size=(1, 16, 16))(tiny)
    with pytest.raises(WidthSearchError, match="reserved"):
        models.register("torchvision:x", default_input_size=(3, 8, 8))


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("tv_name", ["resnet18", "mobilenet_v2"])
def test_torchvision_small_grayscale(tv_name: str) -> None:
    name = f"torchvision:{tv_name}"
    model = models.get(name, num_classes=10, in_channels=1)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert not any(isinstance(m, nn.Conv2d) and m.in_channels == 3 for m in model.modules())
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 10)
    assert models.smallest_input_size(name) <= 32
    spec = json.loads(json.dumps(model.widthsearch_spec))
    assert spec == {"name": name, "kwargs": {"num_classes": 10, "in_channels": 1}}
    rebuilt = models.get(spec["name"], **spec["kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_torchvision_in_channels_keeps_conv_geometry() -> None:
    ref = models.get("torchvision:resnet18").conv1
    new = models.get("torchvision:resnet18", in_channels=4).conv1
    assert new.in_channels == 4 and new.out_channels == ref.out_channels
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(new, attr) == getattr(ref, attr)
    assert (new.bias is None) == (ref.bias is None)


@pytest.mark.parametrize("kwargs", [{"weights": "DEFAULT"}, {"pretrained": True}])
def test_torchvision_refuses_weight_downloads(kwargs: dict) -> None:
    with pytest.raises(WidthSearchError, match="weight downloads are not available"):
        models.get("torchvision:resnet18", **kwargs)


def test_torchvision_bad_kwargs() -> None:
    with pytest.raises(WidthSearchError, match="not_an_arg"):
        models.get("torchvision:resnet18", not_an_arg=1)
    with pytest.raises(WidthSearchError, match="JSON-serializable"):
        models.get("torchvision:resnet18", norm_layer=nn.BatchNorm2d)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_torchvision_pretrained_path(tmp_path, suffix: str) -> None:
    source = models.get("torchvision:mobilenet_v2", num_classes=10, in_channels=1)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = models.get(
        "torchvision:mobilenet_v2", num_classes=10, in_channels=1, pretrained_path=str(path)
    )
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert loaded.widthsearch_spec["kwargs"]["pretrained_path"] == str(path)
    with pytest.raises(WidthSearchError, match="do not fit"):
        models.get("torchvision:mobilenet_v2", pretrained_path=str(path))  # 3 ch, 1000 cls
    with pytest.raises(WidthSearchError, match="does not exist"):
        models.get("torchvision:mobilenet_v2", pretrained_path=str(tmp_path / "missing.pt"))


SMALLEST_CHECKED = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vgg11",
    "alexnet", "densenet121", "googlenet", "inception_v3", "squeezenet1_0",
    "shufflenet_v2_x0_5", "convnext_tiny", "regnet_y_400mf", "resnext50_32x4d", "vit_b_16",
    "swin_t", "maxvit_t",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("tv_name", SMALLEST_CHECKED)
def test_torchvision_runs_at_smallest_input_size(tv_name: str) -> None:
    name = f"torchvision:{tv_name}"
    side = models.smallest_input_size(name)
    model = models.get(name, num_classes=10, in_channels=1)
    with torch.no_grad():
        model.train()(torch.randn(2, 1, side, side))
        assert model.eval()(torch.randn(1, 1, side, side)).shape == (1, 10)
