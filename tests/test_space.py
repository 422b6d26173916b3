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


# -- sample_at: a config at a target cost, without rejection ---------------------------------

SAMPLE_MODELS = ("resnet20", "mobilenetv2", "torchvision:resnet18", "torchvision:mobilenet_v2")


def _window_hits(space: WidthSpace, cost, idx: np.ndarray, lo: float, hi: float) -> np.ndarray:
    c = cost(space.widths_of_indices(idx))
    return (c >= lo) & (c <= hi)


@pytest.mark.parametrize("name", SAMPLE_MODELS)
@pytest.mark.parametrize("metric", ["macs", "params"])
def test_sample_at_lands_in_the_window(make_supernet, name: str, metric: str) -> None:
    net, _ = make_supernet(name)
    space = net.space
    cost = lambda w: net.cost_model.evaluate(w, metric)  # noqa: E731
    lo = float(cost(space.to_vector(space.min())[None])[0])
    hi = float(cost(space.to_vector(space.max())[None])[0])
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(0)
    # random targets over the whole range, plus the tight end where uniform widths never go
    targets = np.concatenate([rng.uniform(lo, hi, 25), lo + (hi - lo) * np.array([0.01, 0.05])])
    for target in targets:
        idx = space.sample_indices_at(cost, target, 0.02, gen, n=8)
        assert _window_hits(space, cost, idx, 0.98 * target, 1.02 * target).all()
    idx = space.sample_indices_at(net.cost_model, (lo + hi) / 2, 0.02, gen, metric=metric, n=200)
    assert _window_hits(space, cost, idx, 0.98 * (lo + hi) / 2, 1.02 * (lo + hi) / 2).all()
    distinct = {tuple(r) for r in idx}
    assert len(distinct) > 150  # not degenerate: a wide window holds many configs
    # every slimmable group takes several widths across draws
    assert all(len(set(idx[:, j])) > 1 for j, g in enumerate(space.groups) if g.slimmable)


def test_sample_at_asymmetric_window_spreads_over_it(resnet20_net) -> None:
    net, _ = resnet20_net
    space = net.space
    full = net.cost(space.max()).macs
    target = 0.10 * full  # CafeNet's window 0.8-1.0 of a 10% budget
    cfgs = space.sample_at(net.cost_model, target, metric="macs", low=0.8, high=1.0,
                           generator=torch.Generator().manual_seed(3), n=300)
    macs = np.array([net.cost(c).macs for c in cfgs])
    assert ((macs >= 0.8 * target) & (macs <= target)).all()
    # spread over the window, not piled at one edge
    assert macs.min() < 0.86 * target and macs.max() > 0.94 * target
    assert len(set(cfgs)) > 100


def test_sample_at_is_deterministic(resnet20_net) -> None:
    net, _ = resnet20_net
    target = 0.4 * net.cost(net.space.max()).macs
    a = net.space.sample_at(net.cost_model, target, metric="macs", n=20,
                            generator=torch.Generator().manual_seed(7))
    b = net.space.sample_at(net.cost_model, target, metric="macs", n=20,
                            generator=torch.Generator().manual_seed(7))
    assert a == b
    one = net.space.sample_at(net.cost_model, target, metric="macs",
                              generator=torch.Generator().manual_seed(7))
    assert isinstance(one, WidthConfig)


def test_sample_at_out_of_range_is_one_clear_error(resnet20_net) -> None:
    net, _ = resnet20_net
    full = net.cost(net.space.max()).macs
    small = net.cost(net.space.min()).macs
    for target in (0.5 * small, 1.5 * full):
        with pytest.raises(WidthSearchError, match="reachable range") as err:
            net.space.sample_at(net.cost_model, target, metric="macs")
        assert f"{small:,}" in str(err.value) and f"{full:,}" in str(err.value)
    with pytest.raises(WidthSearchError, match="metric name"):
        net.space.sample_at(net.cost_model, full)
    with pytest.raises(WidthSearchError, match="low <= high"):
        net.space.sample_at(net.cost_model, full, metric="macs", low=1.0, high=0.8)


class _LatencyTable:
    """A synthetic additive latency lookup table: a random increasing cost per width."""

    def __init__(self, space: WidthSpace, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.tables = []
        for g in space.groups:
            steps = rng.uniform(0.01, 1.0, len(g.choices))
            self.tables.append(dict(zip(g.choices, np.cumsum(steps), strict=True)))

    def evaluate(self, widths: np.ndarray, metric: str) -> np.ndarray:
        assert metric == "latency"
        w = np.atleast_2d(widths)
        return np.array([sum(t[int(x)] for t, x in zip(self.tables, row, strict=True))
                         for row in w])


def test_sample_at_with_an_additive_latency_table(resnet20_net) -> None:
    net, _ = resnet20_net
    space = net.space
    table = _LatencyTable(space, seed=0)
    lo = table.evaluate(space.to_vector(space.min())[None], "latency")[0]
    hi = table.evaluate(space.to_vector(space.max())[None], "latency")[0]
    gen = torch.Generator().manual_seed(0)
    for target in np.random.default_rng(0).uniform(lo, hi, 20):
        idx = space.sample_indices_at(table, target, 0.03, gen, metric="latency", n=10)
        c = table.evaluate(space.widths_of_indices(idx), "latency")
        assert ((c >= 0.97 * target) & (c <= 1.03 * target)).all()


def test_sample_at_too_narrow_window_says_so(space: WidthSpace) -> None:
    # cost = width of group a alone: only 4, 8, 12, 16 exist, so a window around 6 is empty
    cost = lambda w: w[:, 1].astype(float)  # noqa: E731
    with pytest.raises(WidthSearchError, match="widen the tolerance"):
        space.sample_at(cost, 6.0, 0.01, torch.Generator().manual_seed(0))
    loose = space.sample_at(cost, 6.0, 0.01, torch.Generator().manual_seed(0), strict=False)
    assert loose["a"] in (4, 8)
    assert space.sample_at(cost, 8.0, 0.01, torch.Generator().manual_seed(0))["a"] == 8


def test_aligned_keeps_multiples(space: WidthSpace) -> None:
    al = space.aligned(4)
    assert al["a"].choices == (4, 8, 12, 16)
    assert al["b"].choices == (4, 8, 10)  # the full size stays: the model's own width
    assert al["c"].choices == (4, 6)
    assert al["input"].choices == (3,)
    assert al.aligned(8)["a"].choices == (8, 16)
    with pytest.raises(WidthSearchError, match="positive integer"):
        space.aligned(0)
