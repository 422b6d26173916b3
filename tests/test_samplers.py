"""Training samplers: where the random widths aim, what a run records, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import data_root, make, quiet, records, tiny_config  # noqa: F401

import widthsearch as ws
from widthsearch.cli import main
from widthsearch.config import load_config
from widthsearch.errors import WidthSearchError
from widthsearch.search.budgets import resolve_budgets
from widthsearch.train.costs import TrainedCosts, share_in_window, untrained_budgets
from widthsearch.train.samplers import build_sampler
from widthsearch.train.trainer import Trainer


@pytest.fixture(scope="module")
def net() -> ws.Supernet:
    return ws.Supernet(ws.models.get("resnet20", num_classes=10, in_channels=1),
                       torch.randn(1, 1, 28, 28), pattern="cafenet")


def _ratios(net: ws.Supernet, configs) -> np.ndarray:
    widths = np.stack([net.space.to_vector(c) for c in configs])
    return net.cost_model.evaluate(widths, "macs") / net.cost_model.full.macs


def _draw(sampler, net: ws.Supernet, n: int = 300) -> list:
    gen = torch.Generator().manual_seed(0)
    return [sampler.sample(net.space, gen) for _ in range(n)]


def test_cost_uniform_covers_the_cost_range_evenly(net: ws.Supernet) -> None:
    lo = net.cost(net.space.min()).macs / net.cost_model.full.macs
    per_group = _ratios(net, _draw(build_sampler("widths", net.cost_model, net.space), net))
    even = _ratios(net, _draw(build_sampler("cost-uniform", net.cost_model, net.space), net))
    # per-group draws never reach the low end; cost-uniform fills it like any other range
    assert np.mean(per_group < lo + 0.1) < 0.02
    counts, _ = np.histogram(even, bins=5, range=(lo, 1.0))
    assert counts.min() > 0.6 * len(even) / 5, counts
    assert len({tuple(net.space.to_vector(c)) for c in _draw(
        build_sampler("cost-uniform", net.cost_model, net.space), net, 50)}) > 40


def test_budgets_sampler_lands_inside_its_windows(net: ws.Supernet) -> None:
    sampler = build_sampler("budgets", net.cost_model, net.space,
                            budgets=["macs=10%", "macs=25%"])
    ratios = _ratios(net, _draw(sampler, net))
    in_10 = (ratios >= 0.08 - 1e-9) & (ratios <= 0.10 + 1e-9)
    in_25 = (ratios >= 0.20 - 1e-9) & (ratios <= 0.25 + 1e-9)
    assert (in_10 | in_25).all()
    assert 0.3 < in_10.mean() < 0.7  # both budgets are drawn


def test_sampler_errors(net: ws.Supernet) -> None:
    with pytest.raises(WidthSearchError, match="needs the run's budgets"):
        build_sampler("budgets", net.cost_model, net.space)
    with pytest.raises(WidthSearchError, match="outside the reachable"):
        build_sampler("budgets", net.cost_model, net.space, budgets=["macs=1%"])
    with pytest.raises(WidthSearchError, match="no metric 'latency'"):
        build_sampler("cost-uniform", net.cost_model, net.space, metric="latency")
    with pytest.raises(WidthSearchError, match="unknown sampler"):
        build_sampler("flat", net.cost_model, net.space)


@pytest.mark.parametrize("train,match", [
    ({"sampler": "budgets"}, "needs train.budgets"),
    ({"sampler": "everywhere"}, "sampler"),
    ({"sampler": "budgets", "budgets": ["flops=10%"]}, "multiply-accumulates"),
])
def test_config_refuses_bad_sampler_settings(train: dict, match: str) -> None:
    with pytest.raises(WidthSearchError, match=match):
        load_config({"train": train})


def test_trained_costs_histogram_and_window_share(net: ws.Supernet) -> None:
    costs = TrainedCosts(net.cost_model)
    costs.add([net.space.max()] * 3 + [net.space.min()])
    record = costs.flush()
    assert sum(record["counts"]) == 4 and record["counts"][-1] == 3
    assert costs.counts.sum() == 0  # a fresh histogram for the next epoch
    lo = net.cost(net.space.min()).macs / net.cost_model.full.macs
    assert share_in_window([record], "macs", lo - 0.005, lo + 0.005) == pytest.approx(0.25)
    assert share_in_window([record], "params", 0, 1) is None
    targets = resolve_budgets(["macs=50%"], net.space, net.cost_model)
    [line] = untrained_budgets([record], targets)
    assert "macs=50%" in line and "train.sampler=budgets" in line
    assert untrained_budgets([record], resolve_budgets(["macs=100%"], net.space,
                                                       net.cost_model)) == []


@pytest.mark.parametrize("sampler,budgets", [("cost-uniform", []),
                                             ("budgets", ["macs=25%", "macs=40%"])])
def test_a_run_records_its_trained_costs_and_resumes_exactly(
        data_root: Path, tmp_path: Path, sampler: str, budgets: list) -> None:  # noqa: F811
    config = tiny_config(data_root, strategy={"name": "sandwich", "options": {"uniform": False}},
                         supernet={"pattern": "leftmost"},
                         train={"sampler": sampler, "budgets": budgets})
    full = make(config, tmp_path / "full")
    full.fit()
    run = tmp_path / "resumed"
    assert not make(config, run).fit(max_steps=5).finished
    resumed = Trainer.resume(run, console=quiet(), progress=False)
    resumed.fit()
    for key, value in full.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key
    got, want = records(run, "trained_costs"), records(tmp_path / "full", "trained_costs")
    assert [r["counts"] for r in got] == [r["counts"] for r in want] and len(got) == 2
    counts = np.sum([r["counts"] for r in got], axis=0)
    assert counts.sum() == 8 * 4  # sandwich: max, min and two random widths per step
    if budgets:  # the random widths lie in the windows; max and min are the sandwich's own
        inside = sum(share_in_window(got, "macs", 0.8 * f, f) for f in (0.25, 0.40))
        assert inside == pytest.approx(0.5, abs=1e-9)


def test_inspect_run_dir_shows_where_training_went(data_root: Path, tmp_path: Path,  # noqa: F811
                                                   capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    make(tiny_config(data_root, train={"sampler": "budgets", "budgets": ["macs=30%"]}),
         run).fit()
    assert main(["inspect", str(run), "--budget", "macs=60%"]) == 0
    out = capsys.readouterr().out
    assert "macs=30%" in out and "macs=60%" in out and "trained_costs.png" in out
    assert (run / "trained_costs.png").stat().st_size > 5000
