"""Every example config shipped in configs/ and examples/ validates with the schema that
`widthsearch train --config` uses, names a model the registry builds, and every recipe in
examples/ says its expected time and its reference numbers."""

from pathlib import Path

import pytest

from widthsearch import models
from widthsearch.config import load_config
from widthsearch.quickstart import SIZES, quickstart_config

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_configs_exist() -> None:
    assert CONFIGS, "configs/ should ship example run configurations"
    names = {p.name for p in EXAMPLES}
    for part in ("fashion-mnist", "cifar10-resnet20", "cifar10-resnet56", "cifar10-mobilenetv2",
                 "imagenet-mobilenet_v2", "imagenet-resnet50", "imagenet-efficientnet_b0",
                 "efficientnet_b0-timm"):
        assert any(part in n for n in names), f"examples/ has no {part} recipe"


@pytest.mark.parametrize("path", CONFIGS + EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_config_validates(path: Path) -> None:
    config = load_config(path)
    assert config.strategy.name in path.name or config.strategy.name == "sandwich"
    name = config.model.name
    if name.startswith("timm:") and not models.is_registered(name):
        pytest.skip(f"{name}: the timm resolver is not available in this install")
    assert models.is_registered(name), f"{path.name}: unknown model {name}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_recipes_say_their_time_and_reference(path: Path) -> None:
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "Expected time" in header and "Reference" in header, path.name
    assert "widthsearch " in header, f"{path.name} should show the command that runs it"


def test_quickstart_recipe_is_the_quickstart_config() -> None:
    (path,) = [p for p in EXAMPLES if p.name.startswith("quickstart")]
    assert load_config(path) == load_config(quickstart_config(SIZES["default"]))
