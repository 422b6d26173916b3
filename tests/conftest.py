"""Shared fixtures for the supernet tests: small inputs, seeded generators, supernet builders.

The tests run on one intra-op thread: on a busy 2-core machine torch's thread pool spins
against the other processes and a tiny forward gets ~15x slower with 2 threads than with 1.
Set WIDTHSEARCH_TEST_THREADS to override.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

import widthsearch as ws
from widthsearch.supernet import macs_of

torch.set_num_threads(int(os.environ.get("WIDTHSEARCH_TEST_THREADS", "1")))

PATTERNS = ("leftmost", "cafenet", "bcnet")
ZOO = tuple(n for n in ws.models.list() if not n.startswith("torchvision:"))
TV_LIGHT = ("torchvision:resnet18",)
TV_HEAVY = (
    "torchvision:resnet50",
    "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0",
)
ALL_MODELS = ZOO + TV_LIGHT + TV_HEAVY
BATCH = 2


def input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W): zoo models at Fashion-MNIST size, torchvision models at CIFAR size."""
    return (3, 32, 32) if name.startswith("torchvision:") else (1, 28, 28)


def model_kwargs(name: str) -> dict[str, int]:
    if name.startswith("torchvision:"):
        return {"num_classes": 10}
    return {"num_classes": 10, "in_channels": 1}


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer distinct per-channel statistics and affine parameters.

    Fresh BN layers have mean 0 / var 1 / weight 1 / bias 0 on every channel, so slicing the
    wrong channels would go unnoticed; random values make every channel distinguishable.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                for name in ("weight", "bias"):
                    p = getattr(m, name, None)
                    if p is not None:
                        p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.75
                                if name == "weight" else torch.randn(p.shape, generator=gen) * 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def build_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(ws.models.get(name, **model_kwargs(name)), seed)


def sample_input(name: str, seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape(name)), generator=gen)


def build_supernet(name: str, pattern: str = "leftmost", **kwargs) -> tuple[ws.Supernet, torch.Tensor]:
    """A supernet of a registered model (normalization layers randomized) and a batch for it.

    Fails the test if building emits a warning: the zoo and torchvision models must convert
    without fixing any group.
    """
    x = sample_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        net = ws.Supernet(build_model(name), example_input=x[:1], pattern=pattern, **kwargs)
    return net, x


def widthsearch_classes(module: nn.Module) -> list[str]:
    """Qualified class names inside `module` that come from widthsearch (not its model zoo)."""
    found = []
    for m in module.modules():
        mod = type(m).__module__
        if mod.startswith("widthsearch") and not mod.startswith("widthsearch.models"):
            found.append(f"{mod}.{type(m).__qualname__}")
        if "_widthsearch_slices" in m.__dict__:
            found.append(f"{type(m).__qualname__} (still sliced)")
    return found


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator for width and choice sampling."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def small_input() -> torch.Tensor:
    """A batch of two 1x28x28 images (the zoo models' input)."""
    return sample_input("resnet20")


@pytest.fixture
def make_supernet() -> Callable[..., tuple[ws.Supernet, torch.Tensor]]:
    """Build a supernet by registered model name: `net, x = make_supernet("resnet20", "bcnet")`."""
    return build_supernet


@pytest.fixture
def resnet20_net() -> tuple[ws.Supernet, torch.Tensor]:
    """A leftmost ResNet-20 supernet (1-channel, 10 classes) and a 2x1x28x28 batch."""
    return build_supernet("resnet20")


def assert_exports_exactly(net: ws.Supernet, x: torch.Tensor, n: int = 4) -> None:
    """At n random (config, choice) pairs the export matches the supernet and its MACs."""
    net.eval()
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        cfg = net.space.sample(gen)
        choice = net.sample_choice(cfg, gen)
        with torch.no_grad(), net.activate(cfg, choice):
            expected = net(x)
        sub = net.export(cfg, choice).eval()
        with torch.no_grad():
            torch.testing.assert_close(sub(x), expected, rtol=1e-6, atol=1e-5)
        assert net.cost(cfg).macs == macs_of(sub, x)
