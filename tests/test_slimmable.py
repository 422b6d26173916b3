"""The slimmable deliverable: peeling, one file, levels sorted by cost that switch at run
time (outputs equal the exported plain models), budgets, ONNX, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import widthsearch_classes
from test_trainer import make, tiny_config, write_tiny_fashion

import widthsearch as ws
from widthsearch.cli import main
from widthsearch.errors import WidthSearchError
from widthsearch.slimmable import load_slimmable, make_slimmable, peel, save_slimmable


@pytest.fixture(scope="module")
def joslim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slim")
    root = write_tiny_fashion(base / "fashion-mnist")
    config = tiny_config(root, supernet={"pattern": "leftmost"},
                         strategy={"name": "joslim", "options": {"tau": 1, "prior_points": 2}})
    make(config, base / "run").fit()
    return base / "run"


@pytest.fixture(scope="module")
def built(joslim_run: Path) -> ws.SlimmableNet:
    return make_slimmable(joslim_run, recal_batches=2)


def test_peel_takes_fronts_until_the_top_of_the_cost_range() -> None:
    losses = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 0.5])
    costs = np.array([5.0, 3.0, 1.0, 6.0, 3.5, 9.0])
    # first front: (0.5, 9), (1, 5), (2, 3), (3, 1) -- it reaches the top cost (9)
    assert peel(losses, costs, min_fronts=1).tolist() == [0, 1, 2, 5]
    assert peel(losses, costs, min_fronts=2).tolist() == [0, 1, 2, 3, 4, 5]
    # the most expensive point is on the third front: peeling continues until it is taken
    losses2 = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 9.0])
    assert 5 in peel(losses2, costs, min_fronts=1).tolist()


def test_run_yields_one_file_whose_levels_switch_exactly(built: ws.SlimmableNet,
                                                         tmp_path: Path) -> None:
    slim = built
    path = save_slimmable(slim, tmp_path / "net.safetensors")
    loaded = load_slimmable(path)
    levels = loaded.levels
    assert len(levels) >= 2
    macs = [lv.costs["macs"] for lv in levels]
    assert macs == sorted(macs)
    acc = [lv.val["accuracy"] for lv in levels]
    assert all(b > a for a, b in zip(acc, acc[1:], strict=False))  # Pareto-efficient on val
    assert [lv.config for lv in levels] == [lv.config for lv in slim.levels]

    loaded.eval()
    x = torch.randn(3, 1, 28, 28)
    weights = {k: v.data_ptr() for k, v in loaded.net.named_parameters()}
    outputs = []
    for i, lv in enumerate(levels):
        loaded.set_level(i)
        assert loaded.net.config == lv.config
        assert loaded.net.cost().macs == lv.costs["macs"]
        with torch.no_grad():
            y = loaded(x)
            plain = loaded.export(i).eval()
            assert widthsearch_classes(plain) == []
            assert torch.allclose(y, plain(x), atol=1e-5)
            assert loaded.level == i  # export restores the active level
        outputs.append(y)
    # no weight was copied to switch, and levels really differ
    assert weights == {k: v.data_ptr() for k, v in loaded.net.named_parameters()}
    assert not torch.allclose(outputs[0], outputs[-1])
    # per-level BN statistics: the same level loaded twice gives the same output
    loaded.set_level(-1)
    loaded.set_level(0)
    with torch.no_grad():
        assert torch.equal(loaded(x), outputs[0])

    # the file is safetensors + JSON metadata, no pickle
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        record = json.loads(f.metadata()["widthsearch"])
    assert record["format"] == "widthsearch-slimmable/1" and len(record["levels"]) == len(levels)


def test_budgets_pick_the_best_level_that_fits(built: ws.SlimmableNet, tmp_path: Path) -> None:
    slim = built
    levels = slim.levels
    assert slim.set_budget(macs=levels[-1].costs["macs"]) == len(levels) - 1
    assert slim.set_budget(macs=levels[0].costs["macs"]) == 0
    assert slim.set_budget(macs="100%", memory=levels[-1].costs["memory"]) == len(levels) - 1
    assert slim.level == len(levels) - 1
    with pytest.raises(WidthSearchError, match="no level fits"):
        slim.set_budget(macs=levels[0].costs["macs"] - 1)
    with pytest.raises(WidthSearchError, match="no latency"):
        slim.set_budget(latency=1.0)
    with pytest.raises(WidthSearchError, match="percentage"):
        slim.set_budget(macs="half")
    with pytest.raises(WidthSearchError, match="does not exist"):
        slim.set_level(len(levels))
    onnx_path = slim.to_onnx(0, tmp_path / "level0.onnx")
    import onnxruntime as ort

    x = torch.randn(2, 1, 28, 28)
    session = ort.InferenceSession(str(onnx_path))
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = slim.export(0).eval()(x)
    assert np.allclose(out, expected.numpy(), atol=1e-4)


def test_cli_builds_prints_and_plots(joslim_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slimmable", str(joslim_run), "--recal-batches", "1", "--val-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "slimmable levels" in out and "MACs %" in out
    assert (joslim_run / "slimmable.png").stat().st_size > 0
    assert isinstance(ws.load_slimmable(joslim_run / "slimmable.safetensors"), ws.SlimmableNet)
    assert main(["slimmable", str(joslim_run), "--recal-batches", "0"]) == 2


def test_damaged_or_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WidthSearchError, match="does not exist"):
        load_slimmable(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WidthSearchError, match="not a readable slimmable file"):
        load_slimmable(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(other))
    with pytest.raises(WidthSearchError, match="not a widthsearch slimmable file"):
        load_slimmable(other)
