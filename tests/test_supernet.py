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
