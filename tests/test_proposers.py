"""Width proposers: encoding, ask/tell, the Joslim BO pieces (bisection, scalarization,
confidence bound) on a synthetic loss surface, and exact state round trips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from widthsearch.errors import WidthSearchError
from widthsearch.space import ChannelGroup, WidthSpace, default_choices
from widthsearch.train.proposers import (
    GPPredictor,
    JoslimProposer,
    RandomProposer,
    WidthEncoder,
    botorch_lower_confidence_bound,
    tchebyshev,
)

GROUPS, SIZE = 6, 32


def chain_space() -> WidthSpace:
    choices = default_choices(SIZE, min_ratio=0.25, step=2)
    groups = [ChannelGroup(f"g{i}", SIZE, choices, step=2) for i in range(GROUPS)]
    groups.append(ChannelGroup("out", 10, (10,), fixed="model output"))
    return WidthSpace(tuple(groups))


def chain_macs(widths: np.ndarray) -> np.ndarray:
    w = np.atleast_2d(widths).astype(np.float64)
    return (w[:, :GROUPS - 1] * w[:, 1:GROUPS]).sum(axis=1) * 9 + w[:, GROUPS - 1] * 10


IMPORTANCE = np.linspace(0.05, 0.3, GROUPS)


def surface(encoder: WidthEncoder, widths: np.ndarray) -> np.ndarray:
    """A smooth synthetic loss: diminishing returns in every group's width."""
    return 2.0 - (IMPORTANCE * np.log(encoder.ratios(widths))).sum(axis=1)


@pytest.fixture
def encoder() -> WidthEncoder:
    return WidthEncoder(chain_space(), lo=0.42)


def filled(encoder: WidthEncoder, n: int = 60, seed: int = 0) -> JoslimProposer:
    proposer = JoslimProposer(encoder, chain_macs, prior_points=0, seed=seed)
    proposer.full_done = True
    rng = np.random.default_rng(seed)
    centers = 0.42 + 0.58 * rng.random((n, 1))
    widths = encoder.widths(centers + 0.1 * rng.standard_normal((n, encoder.num_dims)))
    proposer.tell(encoder.configs(widths), surface(encoder, widths))
    return proposer


def test_encoder_floors_and_snaps_to_allowed_widths(encoder: WidthEncoder) -> None:
    assert encoder.num_dims == GROUPS  # the fixed output group is not encoded
    m = np.full((1, GROUPS), 0.5)
    m[0, 0], m[0, 1] = 0.99, 0.42
    w = encoder.widths(m)[0]
    assert w[0] == 30  # floor(31.68) = 31 is not allowed: snapped down to 30
    assert w[1] == 12  # floor(13.44) = 13 -> 12
    assert w[2] == 16 and w[-1] == 10
    assert np.all(encoder.full()[:GROUPS] == SIZE)
    kept = WidthEncoder(chain_space(), lo=0.42, keep_full=["g5"])
    assert kept.num_dims == GROUPS - 1 and kept.smallest()[5] == SIZE
    with pytest.raises(WidthSearchError, match="unknown channel group"):
        WidthEncoder(chain_space(), keep_full=["nope"])


def test_tell_keeps_each_config_once_with_its_exact_cost(encoder: WidthEncoder) -> None:
    proposer = RandomProposer(encoder, chain_macs, uniform=False, seed=1)
    configs = proposer.ask(5)
    proposer.tell(configs, [1.0] * 5)
    proposer.tell(configs[:2], [0.5, 0.25])  # re-scored: updated, not duplicated
    assert len(proposer.history) == len(set(configs))
    assert proposer.losses[:2].tolist() == [0.5, 0.25]
    assert proposer.costs.tolist() == chain_macs(encoder.to_widths(proposer.history)).tolist()
    with pytest.raises(WidthSearchError, match="objectives"):
        proposer.tell(configs, [1.0])


def test_uniform_proposer_uses_one_multiplier(encoder: WidthEncoder) -> None:
    proposer = RandomProposer(encoder, chain_macs, uniform=True, seed=0)
    for cfg in proposer.ask(10):
        widths = {cfg[f"g{i}"] for i in range(GROUPS)}
        assert len(widths) == 1


def test_scalarization_prefers_lower_loss_at_equal_cost() -> None:
    cost = torch.tensor([0.3, 0.3], dtype=torch.float64)  # the proposer works in float64
    loss = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    for weight in (0.1, 0.5, 0.9, 0.999):
        s = tchebyshev(loss, cost, weight, b=-3.0)
        assert s[0] < s[1]
    # and lower cost at equal loss
    s = tchebyshev(torch.zeros(2, dtype=torch.float64),
                   torch.tensor([-1.0, 1.0], dtype=torch.float64), 0.5)
    assert s[0] < s[1]


def test_confidence_bound_is_optimistic_and_matches_botorch(encoder: WidthEncoder) -> None:
    proposer = filled(encoder)
    model = proposer._fit(torch.Generator().manual_seed(0))
    x = torch.rand(50, GROUPS, dtype=torch.float64)
    predictor = GPPredictor(model)
    mean, std = predictor.mean_std(x)
    lcb = predictor.lower_confidence_bound(x, 0.1)
    assert torch.all(lcb <= mean) and torch.all(std > 0)
    assert torch.allclose(lcb, mean - 0.1 ** 0.5 * std)
    reference = botorch_lower_confidence_bound(model, x, 0.1)
    assert torch.allclose(lcb, reference.reshape(-1), atol=1e-8)
    post = model.posterior(x)
    assert torch.allclose(mean, post.mean.reshape(-1), atol=1e-8)
    # the kernel has one lengthscale per group (ARD)
    assert model.covar_module.base_kernel.lengthscale.shape[-1] == GROUPS


def test_prior_points_then_full_then_bo(encoder: WidthEncoder) -> None:
    proposer = JoslimProposer(encoder, chain_macs, prior_points=3, seed=0)
    first = proposer.ask(3)
    for cfg in first:
        assert len({cfg[f"g{i}"] for i in range(GROUPS)}) == 1
    assert proposer.ask(1)[0] == encoder.space.max()
    history = first + [encoder.space.max()]
    proposer.tell(history, surface(encoder, encoder.to_widths(history)))
    proposer.ask(1)
    assert proposer.stats.proposals == 1 and proposer.stats.fits == 1


def test_bisection_hits_the_target_cost(encoder: WidthEncoder) -> None:
    proposer = filled(encoder, n=80)
    configs = proposer.ask(8)
    costs = chain_macs(encoder.to_widths(configs))
    tol = proposer.tolerance * proposer.full_cost
    gaps = np.abs(costs - np.array(proposer.last_targets[-8:]))
    assert proposer.stats.hits + proposer.stats.misses == 8
    assert proposer.stats.hits >= 6
    assert np.all(gaps <= tol)  # a miss falls back to a candidate within the tolerance
    levels = np.linspace(proposer.min_cost, proposer.full_cost, proposer.levels)
    assert all(np.isclose(levels, t).any() for t in proposer.last_targets)


def peak_width(widths: np.ndarray) -> np.ndarray:
    """A peak-memory-like cost: the widest group, so it moves in steps of one width."""
    return np.atleast_2d(widths)[:, :GROUPS].max(axis=1).astype(np.float64)


@pytest.mark.parametrize("snap", [True, False])
def test_targets_between_the_steps_of_a_stepped_cost_snap_to_a_reachable_cost(
        encoder: WidthEncoder, snap: bool) -> None:
    proposer = JoslimProposer(encoder, peak_width, prior_points=0, snap_targets=snap)
    proposer.full_done = True
    rng = np.random.default_rng(0)
    widths = encoder.widths(0.42 + 0.58 * rng.random((60, encoder.num_dims)))
    proposer.tell(encoder.configs(widths), surface(encoder, widths))
    configs = proposer.ask(12)
    gaps = np.abs(peak_width(encoder.to_widths(configs)) - np.array(proposer.last_targets))
    tol = proposer.tolerance * proposer.full_cost  # 0.64 channels; the cost moves by 2
    if snap:
        assert proposer.stats.snapped >= 3
        reachable = [abs(t - 2 * round(t / 2)) <= tol for t in proposer.last_targets]
        assert all(reachable)  # every target is within the tolerance of a width
        assert proposer.stats.hits >= 10
        assert np.all(gaps <= tol)
    else:
        assert proposer.stats.snapped == 0
        assert proposer.stats.misses >= 3  # levels between two widths cannot be hit


def test_a_miss_is_logged(encoder: WidthEncoder, caplog: pytest.LogCaptureFixture) -> None:
    proposer = filled(encoder, n=40)
    proposer.rounds = 1  # one round cannot reach most targets
    proposer.tolerance = 1e-6
    with caplog.at_level(logging.WARNING, logger="widthsearch.joslim"):
        proposer.ask(4)
    assert proposer.stats.misses >= 1
    assert "missed the target cost" in caplog.text


def test_bo_prefers_low_loss_widths(encoder: WidthEncoder) -> None:
    """At a given cost the proposals beat random widths of similar cost on the surface."""
    proposer = filled(encoder, n=100, seed=3)
    configs = proposer.ask(6)
    widths = encoder.to_widths(configs)
    ours = surface(encoder, widths)
    rng = np.random.default_rng(5)
    rand = encoder.widths(0.42 + 0.58 * rng.random((4000, GROUPS)))
    rc, rl = chain_macs(rand), surface(encoder, rand)
    tol = 0.02 * proposer.full_cost
    better = 0
    for c, loss in zip(chain_macs(widths), ours, strict=True):
        near = np.abs(rc - c) <= tol
        if near.any():
            better += loss <= np.median(rl[near])
    assert better >= 5


def test_state_round_trip_continues_identically(encoder: WidthEncoder) -> None:
    a = filled(encoder, n=40)
    a.ask(2)
    saved = a.state_dict()
    b = JoslimProposer(encoder, chain_macs, prior_points=0, seed=99)
    b.load_state_dict(saved)
    assert b.history == a.history and b.gp_state.keys() == a.gp_state.keys()
    assert a.ask(2) == b.ask(2)
    with pytest.raises(WidthSearchError, match="proposer state"):
        RandomProposer(encoder, chain_macs, uniform=True).load_state_dict(saved)


def test_a_missing_botorch_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from widthsearch.errors import require

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "botorch" else real(name, *a))
    with pytest.raises(WidthSearchError, match=r"pip install 'widthsearch\[joslim\]'"):
        require("botorch", "joslim", "Joslim's Bayesian optimization")
