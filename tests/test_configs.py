"""Every example config shipped in configs/ validates."""

from pathlib import Path

import pytest

from widthsearch.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    assert CONFIGS, "configs/ should ship example run configurations"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    config = load_config(path)
    assert config.strategy.name in path.name or config.strategy.name == "sandwich"
