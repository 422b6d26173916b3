"""Width spaces and configurations: building, validating and encoding widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from widthsearch import ChannelGroup, WidthConfig, WidthSearchError, WidthSpace
from widthsearch.space import default_choices, default_step


def _space() -> WidthSpace:
    return WidthSpace((
        ChannelGroup("input", 3, (3,), fixed="the model input"),
        ChannelGroup("a", 16, (4, 8, 12, 16), step=4),
        ChannelGroup("b", 10, (3, 4, 5, 6, 7, 8, 9, 10)),
        ChannelGroup("c", 6, (2, 4, 6), step=2, granularity=2),
        ChannelGroup("out", 10, (10,), fixed="the model output"),
    ))


@pytest.fixture
def space() -> WidthSpace:
    return _space()


def test_max_min_uniform(space: WidthSpace) -> None:
    assert space.max() == {"input": 3, "a": 16, "b": 10, "c": 6, "out": 10}
    assert space.min() == {"input": 3, "a": 4, "b": 3, "c": 2, "out": 10}
    assert space.uniform(0.5) == {"input": 3, "a": 8, "b": 5, "c": 4, "out": 10}  # c: 3 -> 4
    assert space.uniform(1.0) == space.max()
    assert space.uniform(0.01) == space.min()
    for cfg in (space.max(), space.min(), space.uniform(0.5), space.uniform(0.3)):
        assert space.validate(cfg) == cfg
    with pytest.raises(WidthSearchError, match=r"ratio must be in \(0, 1\]"):
        space.uniform(1.5)
    with pytest.raises(WidthSearchError, match="ratio"):
        space.uniform(0.0)


def test_sample_is_valid_and_reproducible(space: WidthSpace) -> None:
    gen = torch.Generator().manual_seed(0)
    configs = [space.sample(gen) for _ in range(200)]
    for cfg in configs:
        assert space.validate(cfg) == cfg
        assert cfg["input"] == 3 and cfg["out"] == 10
    for g in space.searchable:  # every allowed width turns up
        assert {cfg[g.name] for cfg in configs} == set(g.choices)
    again = torch.Generator().manual_seed(0)
    assert [space.sample(again) for _ in range(200)] == configs
    idx = space.sample_indices(50, torch.Generator().manual_seed(1))
    assert idx.shape == (50, len(space))
    assert (idx >= 0).all() and (idx < [len(g.choices) for g in space.groups]).all()


def test_vector_and_index_round_trips(space: WidthSpace) -> None:
    gen = torch.Generator().manual_seed(2)
    for cfg in [space.max(), space.min(), *(space.sample(gen) for _ in range(20))]:
        vec = space.to_vector(cfg)
        assert vec.dtype == np.int64 and vec.tolist() == [cfg[n] for n in space.names]
        assert space.from_vector(vec) == cfg
        idx = space.to_indices(cfg)
        assert [space.groups[j].choices[i] for j, i in enumerate(idx)] == vec.tolist()
        assert space.from_indices(idx) == cfg
    idx = space.sample_indices(30, gen)
    widths = space.widths_of_indices(idx)
    assert widths.tolist() == [space.to_vector(space.from_indices(row)).tolist() for row in idx]
    assert space.to_indices(space.min()).tolist() == [0] * len(space)


def test_encoding_errors(space: WidthSpace) -> None:
    with pytest.raises(WidthSearchError, match="needs 5 entries, got 2"):
        space.from_vector([4, 4])
    with pytest.raises(WidthSearchError, match="width 5 is not allowed for group 'a'"):
        space.from_vector([3, 5, 10, 6, 10])
    with pytest.raises(WidthSearchError, match="out of range"):
        space.from_indices([0, 4, 0, 0, 0])
    with pytest.raises(WidthSearchError, match="out of range"):
        space.from_indices([0, -1, 0, 0, 0])
    with pytest.raises(WidthSearchError, match="needs 5 entries"):
        space.from_indices([0, 0])


def test_validate(space: WidthSpace) -> None:
    assert space.validate({"a": 8}) == {**space.max(), "a": 8}  # missing groups: full width
    with pytest.raises(WidthSearchError, match=r"unknown channel group 'z'; known groups: input"):
        space.validate({"z": 1})
    with pytest.raises(WidthSearchError, match=r"width 6 is not allowed for group 'a' \(size 16\)"):
        space.validate({"a": 6})
    with pytest.raises(WidthSearchError, match="width 4 is not allowed for group 'out'"):
        space.validate({"out": 4})
    with pytest.raises(WidthSearchError, match="unknown channel group"):
        space["nope"]  # noqa: B018


def test_width_config_is_an_immutable_hashable_mapping() -> None:
    cfg = WidthConfig({"a": 8, "b": 5})
    same = WidthConfig({"b": 5, "a": 8})
    assert cfg == {"a": 8, "b": 5} == same
    assert cfg != {"a": 8, "b": 6}
    assert cfg != {"a": 8}
    assert hash(cfg) == hash(same)
    assert len({cfg, same, WidthConfig({"a": 4, "b": 5})}) == 2
    assert {cfg: "x"}[same] == "x"
    assert cfg.to_dict() == {"a": 8, "b": 5} and isinstance(cfg.to_dict(), dict)
    assert list(cfg) == ["a", "b"] and len(cfg) == 2 and cfg["b"] == 5
    assert WidthConfig({"a": np.int64(8)})["a"] == 8
    assert isinstance(WidthConfig({"a": np.int64(8)})["a"], int)
    with pytest.raises(TypeError):
        cfg["a"] = 4  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg.extra = 1  # type: ignore[attr-defined]
    assert "WidthConfig" in repr(cfg) and "'a': 8" in repr(cfg)
    assert (cfg == 3) is False


def test_with_choices(space: WidthSpace) -> None:
    narrowed = space.with_choices({"a": [16, 8], "b": [10]})
    assert narrowed["a"].choices == (8, 16)
    assert not narrowed["b"].slimmable
    assert [g.name for g in narrowed.searchable] == ["a", "c"]
    assert space["a"].choices == (4, 8, 12, 16)  # the original is unchanged
    with pytest.raises(WidthSearchError, match="group 'input' is fixed"):
        space.with_choices({"input": [1, 3]})
    with pytest.raises(WidthSearchError, match=r"must lie in \[1, 10\]"):
        space.with_choices({"b": [0, 10]})
    with pytest.raises(WidthSearchError, match=r"\[3\] of group 'c' are not multiples of 2"):
        space.with_choices({"c": [3, 6]})
    with pytest.raises(WidthSearchError, match="unknown channel group 'zz'"):
        space.with_choices({"zz": [1]})


def test_default_choices_and_step() -> None:
    assert default_choices(16, min_ratio=0.25, step=4) == (4, 8, 12, 16)
    assert default_choices(10, min_ratio=0.25, step=1) == tuple(range(3, 11))
    assert default_choices(88, min_ratio=0.25, step=5)[-2:] == (85, 88)  # size always allowed
    assert default_choices(3, min_ratio=0.5, step=4) == (3,)
    assert default_step(64, 16) == 4
    assert default_step(10, 16) == 1
    assert default_step(64, 16, granularity=8) == 8
    assert default_step(96, 16, granularity=4) == 4
    with pytest.raises(WidthSearchError, match="min_ratio"):
        default_choices(8, min_ratio=1.5, step=1)
    with pytest.raises(WidthSearchError, match="step"):
        default_choices(8, min_ratio=0.5, step=0)


def test_supernet_space_is_consistent(resnet20_net) -> None:
    net, _ = resnet20_net
    space = net.space
    assert len(space) == 14 and len(space.searchable) == 12
    for g in space.groups:
        assert g.choices[-1] == g.size
        assert list(g.choices) == sorted(set(g.choices))
        if g.slimmable:
            assert g.choices[0] >= g.size * 0.25
            assert all(w % g.step == 0 for w in g.choices[:-1])
    assert "group 'conv1': 16 channels" in space.summary()
