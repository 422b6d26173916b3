"""Run configs: defaults, unknown keys, overrides, cross-field rules, YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from widthsearch.config import RunConfig, apply_overrides, load_config, parse_override
from widthsearch.errors import WidthSearchError


def test_defaults() -> None:
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.model.name == "resnet20" and cfg.model.num_classes is None
    assert cfg.data.name == "fashion-mnist" and cfg.data.batch_size == 128
    assert cfg.data.val_size == 5000 and cfg.data.split_seed == 0 and cfg.data.augment
    assert cfg.supernet.pattern == "cafenet" and cfg.supernet.bins and cfg.supernet.r == 1
    assert cfg.strategy.name == "cafenet" and cfg.strategy.options == {}
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov) == \
        ("sgd", 0.1, 0.9, True)
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.epochs == 5
    assert cfg.optim.warmup_epochs == 0.5 and cfg.optim.grad_clip is None
    assert cfg.train.device == "auto" and cfg.train.amp is False
    assert cfg.train.checkpoint_every_steps == 200 and cfg.train.keep_checkpoints == 3


def test_round_trip_through_plain_data() -> None:
    cfg = load_config(None, ["data.image_size=[32, 32]", "model.kwargs.width_mult=0.5"])
    again = load_config(cfg.to_dict())
    assert again == cfg and again.data.image_size == (32, 32)


@pytest.mark.parametrize(("override", "section", "key", "value"), [
    ("optim.lr=0.05", "optim", "lr", 0.05),
    ("optim.epochs=3", "optim", "epochs", 3),
    ("data.augment=false", "data", "augment", False),
    ("data.subset=null", "data", "subset", None),
    ("data.subset=1000", "data", "subset", 1000),
    ("data.root=/tmp/a b:c", "data", "root", "/tmp/a b:c"),
    ("train.device=cuda:1", "train", "device", "cuda:1"),
    ("model.kwargs.width_mult=0.5", "model", "kwargs", {"width_mult": 0.5}),
    ("strategy.options={K: 2, distill: true}", "strategy", "options", {"K": 2, "distill": True}),
])
def test_overrides(override: str, section: str, key: str, value: object) -> None:
    cfg = load_config(None, [override])
    assert getattr(getattr(cfg, section), key) == value


def test_override_parsing() -> None:
    assert parse_override("a.b.c=1") == (["a", "b", "c"], 1)
    assert parse_override("a=") == (["a"], None)
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(WidthSearchError, match="override"):
            parse_override(bad)
    with pytest.raises(WidthSearchError, match="optim.lr is a value"):
        apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr.x=1"])
    source = {"optim": {"lr": 0.1}}
    apply_overrides(source, ["optim.lr=1"])
    assert source == {"optim": {"lr": 0.1}}  # the caller's dict is untouched


def test_unknown_key_is_an_error_naming_the_field() -> None:
    with pytest.raises(WidthSearchError) as info:
        load_config({"optim": {"lrr": 0.1}})
    message = str(info.value)
    assert "optim.lrr" in message and "unknown key" in message and "'lr'" in message
    assert "\n" not in message
    with pytest.raises(WidthSearchError, match="nonsense: unknown key"):
        load_config(None, ["nonsense=1"])


def test_bad_values_are_errors_naming_the_field() -> None:
    with pytest.raises(WidthSearchError, match=r"data\.batch_size: .*greater than or equal to 1"):
        load_config(None, ["data.batch_size=0"])
    with pytest.raises(WidthSearchError, match=r"optim\.name"):
        load_config(None, ["optim.name=rmsprop"])
    with pytest.raises(WidthSearchError, match=r"train\.device"):
        load_config(None, ["train.device=gpu"])
    with pytest.raises(WidthSearchError, match=r"data\.name: unknown dataset 'mnist'"):
        load_config(None, ["data.name=mnist"])
    with pytest.raises(WidthSearchError, match="max_bin"):
        load_config(None, ["supernet.min_bin=4", "supernet.max_bin=2"])


@pytest.mark.parametrize(("strategy", "pattern"), [("cafenet", "leftmost"), ("bcnet", "cafenet")])
def test_strategy_needs_its_pattern(strategy: str, pattern: str) -> None:
    with pytest.raises(WidthSearchError, match=f"strategy '{strategy}' needs supernet.pattern"):
        load_config(None, [f"strategy.name={strategy}", f"supernet.pattern={pattern}"])
    good = "cafenet" if strategy == "cafenet" else "bcnet"
    assert load_config(None, [f"strategy.name={strategy}", f"supernet.pattern={good}"])


def test_strategy_name_and_options_are_checked() -> None:
    with pytest.raises(WidthSearchError, match="unknown strategy 'nope'"):
        load_config(None, ["strategy.name=nope"])
    with pytest.raises(WidthSearchError, match="unknown option"):
        load_config(None, ["strategy.options.bogus=1"])
    with pytest.raises(WidthSearchError, match="Nesterov"):
        load_config(None, ["optim.momentum=0"])
    assert load_config(None, ["optim.momentum=0", "optim.nesterov=false"]).optim.momentum == 0


def test_yaml_files(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 0.2\n  epochs: 1\nmodel:\n  name: resnet56\n")
    cfg = load_config(path, ["optim.epochs=4"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.model.name) == (0.2, 4, "resnet56")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == RunConfig()
    with pytest.raises(WidthSearchError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(WidthSearchError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(WidthSearchError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
