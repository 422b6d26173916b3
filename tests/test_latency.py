"""Latency lookup tables: every width pair timed, additive prediction, JSON, the metric."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import widthsearch as ws
from widthsearch.cli import main
from widthsearch.errors import WidthSearchError
from widthsearch.search.latency import (
    LatencyTable,
    Target,
    check_table,
    layer_shape,
    measure_table,
    other_elements,
    width_pairs,
)

FAST = Target(min_run_time=0.002, warmup=1)


class Tiny(nn.Module):
    """Two identical blocks (their layers share one timed shape), a depthwise conv, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
                                      for _ in range(2)))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem(x)))
        return self.head(self.dw(x).flatten(1))


@pytest.fixture(scope="module")
def tiny() -> ws.Supernet:
    torch.manual_seed(0)
    return ws.Supernet(Tiny(), torch.randn(1, 3, 6, 6), min_ratio=0.5, divisions=2).eval()


@pytest.fixture(scope="module")
def tiny_table(tiny: ws.Supernet) -> LatencyTable:
    return measure_table(tiny, FAST, samples=3, rounds=1)


def _all_widths(space: ws.WidthSpace) -> np.ndarray:
    return np.array(list(itertools.product(*(g.choices for g in space.groups))), dtype=float)


def test_width_pairs_are_exactly_the_pairs_the_space_gives(tiny: ws.Supernet) -> None:
    cost = tiny.cost_model
    every = _all_widths(tiny.space)
    for record in cost.graph.layers:
        (a_in, c_in), (a_out, c_out) = cost.layer_forms(record)
        brute = {(int(i), int(o)) for i, o in zip(every @ a_in + c_in, every @ a_out + c_out,
                                                   strict=True)}
        assert width_pairs(tiny.space, cost.layer_forms(record)) == brute, record.name
    dw = next(r for r in cost.graph.layers if r.name == "dw")
    assert all(i == o for i, o in width_pairs(tiny.space, cost.layer_forms(dw)))  # coupled
    head = next(r for r in cost.graph.layers if r.name == "head")
    assert {i for i, _ in width_pairs(tiny.space, cost.layer_forms(head))} == {4 * 36, 8 * 36}


def test_every_layer_and_width_pair_is_timed_and_identical_layers_share(
        tiny: ws.Supernet, tiny_table: LatencyTable) -> None:
    cost = tiny.cost_model
    keys = dict(tiny_table.layers)
    assert keys["blocks.0.0"] == keys["blocks.1.0"]  # one shape, timed once
    assert len(tiny_table.shapes) == len(cost.graph.layers) - 1
    for record in cost.graph.layers:
        timed = tiny_table.times[keys[record.name]]
        assert set(width_pairs(tiny.space, cost.layer_forms(record))) <= set(timed)
        assert all(t > 0 for t in timed.values())
    shape = tiny_table.shapes[keys["dw"]]
    assert shape.coupled and shape.build(4, 4).groups == 4  # exported with groups = width
    assert tiny_table.device["batch_size"] == 1 and tiny_table.device["threads"] == 1
    assert tiny_table.device["torch"] == torch.__version__ and tiny_table.device["cpu"]


def test_prediction_is_the_sum_of_entries_plus_the_rest(tiny: ws.Supernet,
                                                        tiny_table: LatencyTable) -> None:
    cost = tiny.cost_model
    keys = dict(tiny_table.layers)
    cfg = tiny.space.min()
    w = tiny.space.to_vector(cfg).astype(float)
    expected = tiny_table.constant
    coef, const = other_elements(cost)
    expected += tiny_table.per_element * (w @ coef + const)
    for record in cost.graph.layers:
        (a_in, c_in), (a_out, c_out) = cost.layer_forms(record)
        expected += tiny_table.times[keys[record.name]][(round(w @ a_in + c_in),
                                                          round(w @ a_out + c_out))]
    assert tiny_table.predict(cost, w[None])[0] == pytest.approx(expected, rel=1e-12)
    assert tiny_table.per_element >= 0
    # the rest was fitted to end-to-end minus the layers at the full width
    full = tiny.space.to_vector(tiny.space.max())[None].astype(float)
    assert tiny_table.predict(cost, full)[0] == pytest.approx(tiny_table.full_latency)


def test_latency_is_one_more_metric(tiny: ws.Supernet, tiny_table: LatencyTable,
                                    tmp_path) -> None:
    net = ws.Supernet(Tiny(), torch.randn(1, 3, 6, 6), min_ratio=0.5, divisions=2)
    with pytest.raises(WidthSearchError, match="latency table"):
        net.cost_model.evaluate(_all_widths(net.space), "latency")
    assert net.cost().latency is None
    loaded = LatencyTable.load(tiny_table.save(tmp_path / "t.json"))
    net.cost_model.attach_latency(loaded)
    every = _all_widths(net.space)
    vectorized = net.cost_model.evaluate(every, "latency")
    per_config = [net.cost(net.space.from_vector(row)).latency for row in every]
    assert vectorized.tolist() == pytest.approx(per_config, rel=1e-12)
    assert vectorized.tolist() == pytest.approx(tiny_table.predict(tiny.cost_model, every).tolist())
    assert net.cost_model.full.latency == pytest.approx(tiny_table.full_latency)
    small = net.cost(net.space.min())
    assert small.ratio(net.cost_model.full)["latency"] == pytest.approx(
        small.latency / tiny_table.full_latency)


def test_a_table_follows_the_supernet_to_a_space_it_covers(tiny_table: LatencyTable) -> None:
    net = ws.Supernet(Tiny(), torch.randn(1, 3, 6, 6), min_ratio=0.5, divisions=2)
    data = tiny_table.to_json()  # a table that timed exactly this space's widths
    data["groups"] = {g.name: list(g.choices) for g in net.space.groups}
    net.cost_model.attach_latency(LatencyTable.from_json(data))
    fewer = net.space.with_choices({g.name: g.choices[-1:] for g in net.space.searchable})
    more = net.space.with_choices({g.name: tuple(range(1, g.size + 1))
                                   for g in net.space.searchable})
    net.set_space(fewer)  # a subset of the timed widths: the table still prices every config
    assert net.cost().latency == pytest.approx(tiny_table.full_latency)
    with pytest.warns(UserWarning, match="latency table no longer applies"):
        net.set_space(more)  # widths the table never timed
    assert net.cost().latency is None


def test_error_report(tiny_table: LatencyTable) -> None:
    err = tiny_table.error
    assert err["samples"] == 3 and len(err["measured"]) == len(err["predicted"]) == 3
    rel = np.abs(np.subtract(err["predicted"], err["measured"])) / np.array(err["measured"])
    assert err["mape"] == pytest.approx(rel.mean())
    assert err["within_10pct"] == pytest.approx(float(np.mean(rel <= 0.1)))


def test_a_table_of_another_model_or_space_is_refused(tiny_table: LatencyTable,
                                                      resnet20_net, tmp_path) -> None:
    net, _ = resnet20_net
    with pytest.raises(WidthSearchError, match="another model"):
        net.cost_model.attach_latency(tiny_table)
    wider = ws.Supernet(Tiny(), torch.randn(1, 3, 6, 6), min_ratio=0.25, divisions=4)
    with pytest.raises(WidthSearchError, match="this width space"):
        wider.cost_model.attach_latency(tiny_table)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(WidthSearchError, match="not a latency table"):
        LatencyTable.load(bad)
    data = tiny_table.to_json()
    del data["constant"]
    bad.write_text(json.dumps(data))
    with pytest.raises(WidthSearchError, match="damaged"):
        LatencyTable.load(bad)
    with pytest.raises(WidthSearchError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_targets_are_validated() -> None:
    with pytest.raises(WidthSearchError, match="unknown latency backend"):
        Target(backend="tvm")
    with pytest.raises(WidthSearchError, match="at least 1"):
        Target(threads=0)
    if not torch.cuda.is_available():
        with pytest.raises(WidthSearchError, match="no CUDA"):
            Target(device="cuda")


def test_layer_shapes_rebuild_the_exported_layers(tiny: ws.Supernet, generator) -> None:
    """A timed layer is the layer the export makes: same class, sizes and groups."""
    cfg = tiny.space.sample(generator)
    sub = tiny.export(cfg)
    w = tiny.space.to_vector(cfg).astype(float)
    for record in tiny.cost_model.graph.layers:
        shape = layer_shape(record, tiny.model.get_submodule(record.name))
        (a_in, c_in), (a_out, c_out) = tiny.cost_model.layer_forms(record)
        built = shape.build(round(w @ a_in + c_in), round(w @ a_out + c_out))
        exported = sub.get_submodule(record.name)
        assert type(built) is type(exported)
        assert built.weight.shape == exported.weight.shape
        assert getattr(built, "groups", 1) == getattr(exported, "groups", 1)


def test_onnxruntime_backend(tiny: ws.Supernet) -> None:
    table = measure_table(tiny, Target(backend="onnxruntime", min_run_time=0.002, warmup=1),
                          samples=2, rounds=1)
    assert table.device["backend"] == "onnxruntime" and table.device["onnxruntime"]
    assert table.full_latency > 0 and table.error["samples"] == 2


def test_cli_writes_a_table(tmp_path, capsys) -> None:
    out = tmp_path / "table.json"
    code = main(["latency-table", "resnet20", "--min-ratio", "0.5", "--divisions", "2",
                 "--samples", "2", "--rounds", "1", "-o", str(out)])
    assert code == 0
    table = LatencyTable.load(out)
    assert table.error["samples"] == 2 and "MAPE" in capsys.readouterr().out
    net = ws.Supernet(ws.models.get("resnet20"), torch.zeros(1, *ws.models.default_input_size(
        "resnet20")), min_ratio=0.5, divisions=2)
    net.cost_model.attach_latency(table)
    assert 0 < net.cost(net.space.min()).latency < net.cost().latency
    assert main(["latency-table", "resnet20", "--backend", "torch", "--threads", "0",
                 "-o", str(out)]) == 2


@pytest.mark.slow
def test_the_table_predicts_exported_models_within_its_reported_error() -> None:
    """On fresh random configs, the error stays near the one the table reported (a shared
    machine is noisy: within twice the reported MAPE, or 15%)."""
    torch.manual_seed(0)
    shape = ws.models.default_input_size("resnet20")
    net = ws.Supernet(ws.models.get("resnet20"), torch.zeros(1, *shape), divisions=4).eval()
    table = measure_table(net, Target(), samples=10)
    fresh = check_table(net, table, Target(), samples=10, seed=1)
    assert fresh["mape"] <= max(2 * table.error["mape"], 0.15)


def test_single_layer_onnx_models_compute_the_layer(tiny: ws.Supernet) -> None:
    """The one-node ONNX models timed for onnxruntime compute what the torch layer does."""
    import onnxruntime

    from widthsearch.search.latency import _layer_onnx

    for record in tiny.cost_model.graph.layers:
        shape = layer_shape(record, tiny.model.get_submodule(record.name))
        layer = shape.build(4 * 36 if shape.op == "linear" else 4, 4)
        x = shape.example(layer.in_features if shape.op == "linear" else 4, 2)
        session = onnxruntime.InferenceSession(_layer_onnx(layer, x),
                                               providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = layer(x).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cli_on_a_trained_run_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A run directory is read back with its own width space; the table fits its supernet."""
    from test_trainer import make, tiny_config, write_tiny_fashion

    from widthsearch.build import load_supernet

    root = write_tiny_fashion(tmp_path_factory.mktemp("data") / "fashion-mnist")
    run = tmp_path_factory.mktemp("runs") / "tiny"
    make(tiny_config(root, optim={"epochs": 1}), run).fit()
    out = run / "latency.json"
    assert main(["latency-table", str(run), "--samples", "1", "--rounds", "1",
                 "-o", str(out)]) == 0
    net = load_supernet(run).net
    net.cost_model.attach_latency(LatencyTable.load(out))
    assert net.cost().latency > 0


def _proportional(table: LatencyTable, tiny: ws.Supernet) -> LatencyTable:
    """The measured table with every time set to in x out: on a model this small, timing
    noise can put the smallest subnet within a few percent of the full one."""
    data = table.to_json()
    for entry in data["shapes"].values():
        entry["times"] = [[i, o, 1e-6 * i * o] for i, o, _ in entry["times"]]
    data["constant"], data["per_element"] = 0.0, 0.0
    proportional = LatencyTable.from_json(data)
    full = tiny.space.to_vector(tiny.space.max())[None].astype(float)
    data["full_latency"] = float(proportional.predict(tiny.cost_model, full)[0])
    return LatencyTable.from_json(data)


def test_search_prices_latency_budgets_with_a_table(tiny: ws.Supernet, tiny_table: LatencyTable,
                                                    tmp_path) -> None:
    """`search_widths(..., latency_table=path)` (`widthsearch search --latency-table`)."""
    net = ws.Supernet(Tiny(), torch.randn(1, 3, 6, 6), min_ratio=0.5, divisions=2)
    path = _proportional(tiny_table, tiny).save(tmp_path / "latency.json")

    class Scores:  # accuracy grows with the width: the search picks the widest within budget
        def evaluate(self, configs):
            from widthsearch.evaluate import Score

            return [Score(net.space.validate(c), float(sum(c.values())), 0.0, {})
                    for c in configs]

    result = ws.search_widths(net, ["latency=80%"], "random", evaluator=Scores(),
                              latency_table=path, samples=8)
    (chosen,) = result.chosen
    limit = chosen.target.limits["latency"]
    assert limit == pytest.approx(0.8 * net.cost_model.full.latency)
    assert chosen.record.costs["latency"] <= limit * (1 + 1e-9)
    with pytest.raises(WidthSearchError, match="latency"):
        ws.search_widths(ws.Supernet(Tiny(), torch.randn(1, 3, 6, 6), min_ratio=0.5,
                                     divisions=2), ["latency=1ms"], "random",
                         evaluator=Scores(), samples=2)
