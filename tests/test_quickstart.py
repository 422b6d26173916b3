"""`widthsearch quickstart --tiny` end to end: every artifact exists, loads and agrees with
the table it prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import write_tiny_fashion

import widthsearch as ws
from widthsearch.cli import main
from widthsearch.quickstart import BUDGETS, SIZES, quickstart_config, uniform_at


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("qs")
    data = write_tiny_fashion(root / "fashion-mnist", n_train=400, n_test=40)
    run = root / "run"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    out = io.StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        code = main(["quickstart", "--tiny", "--run-dir", str(run), "--data", str(data),
                     "--no-progress"])
    finally:
        capture.undo()
    assert code == 0
    return run, out.getvalue()


def test_every_artifact_exists_loads_and_agrees_with_the_table(
        finished: tuple[Path, str]) -> None:
    import onnxruntime as ort

    run, printed = finished
    record = json.loads((run / "quickstart.json").read_text())
    rows = record["rows"]
    assert [r["budget"] for r in rows] == [b for b in BUDGETS for _ in range(2)]
    assert [r["name"].split()[0] for r in rows] == ["searched", "uniform"] * 2
    full_macs = record["full_model"]["macs"]
    for r in rows:
        limit = float(r["budget"].split("=")[1].rstrip("%")) / 100 * full_macs
        assert r["macs"] <= limit
        assert f"{100 * r['test_accuracy']:.2f}%" in printed
        assert f"{r['macs'] / 1e6:.2f}M" in printed
        result = json.loads((Path(r["sub_run"]) / "result.json").read_text())
        assert result["test_accuracy"] == r["test_accuracy"] and result["macs"] == r["macs"]
        weights = Path(r["exports"]["weights"])
        assert weights.is_file() and Path(r["exports"]["sidecar"]).is_file()
        model = ws.load(weights.with_suffix("")).eval()
        assert sum(p.numel() for p in model.parameters()) == r["params"]
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            expected = model(x).numpy()
        session = ort.InferenceSession(r["exports"]["onnx"], providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        assert r["latency_ms"] > 0
    for searched, uniform in zip(rows[::2], rows[1::2], strict=True):
        assert searched["vs_uniform"] == pytest.approx(
            searched["test_accuracy"] - uniform["test_accuracy"])
    chosen = json.loads((run / "search" / "chosen.json").read_text())["chosen"]
    for k, entry in enumerate(chosen):
        finish = json.loads((run / "finetune" / f"searched-{k}" / "finish.json").read_text())
        assert finish["config"] == entry["config"]
    html = (run / "report.html").read_text()
    for title in ("Final models (TEST split, measured once)", "Training",
                  "Width search (VAL split)", "Chosen widths per layer group", "Provenance"):
        assert title in html
    assert html.count("data:image/png;base64,") >= 3
    assert (run / "report.md").is_file() and (run / "search" / "front.png").is_file()
    assert str(run / "report.html") in printed


def test_uniform_steps_equal_the_searched_models_steps(finished: tuple[Path, str]) -> None:
    run, _ = finished
    record = json.loads((run / "quickstart.json").read_text())
    for searched, uniform in zip(record["rows"][::2], record["rows"][1::2], strict=True):
        s = json.loads((Path(searched["sub_run"]) / "result.json").read_text())["steps"]
        u = json.loads((Path(uniform["sub_run"]) / "result.json").read_text())["steps"]
        supernet = int(searched["training"].split()[0])
        assert u == supernet + s


def test_running_again_reuses_every_finished_step(finished: tuple[Path, str],
                                                  capsys: pytest.CaptureFixture) -> None:
    run, _ = finished
    before = json.loads((run / "quickstart.json").read_text())
    results = sorted(run.glob("*/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert main(["quickstart", "--tiny", "--run-dir", str(run), "--no-progress"]) == 0
    assert "searched widths vs the uniform multiplier" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in results] == stamps  # nothing trained or tested again
    after = json.loads((run / "quickstart.json").read_text())
    assert [r["test_accuracy"] for r in after["rows"]] == \
        [r["test_accuracy"] for r in before["rows"]]


def test_tiny_config_is_valid_and_small() -> None:
    from widthsearch.config import load_config

    cfg = load_config(quickstart_config(SIZES["tiny"]))
    assert cfg.data.subset == 96 and cfg.optim.epochs == 1
    assert cfg.strategy.name == cfg.supernet.pattern == "cafenet"


def test_uniform_at_picks_the_nearest_multiplier_within_the_limit() -> None:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    net = ws.Supernet(model, torch.zeros(1, 1, 28, 28), pattern="leftmost")
    full = net.cost(net.space.max()).macs
    ratio, cfg = uniform_at(net.space, net.cost, 0.5 * full, 0.45 * full)
    macs = net.cost(cfg).macs
    assert macs <= 0.5 * full and cfg == net.space.uniform(ratio)
    others = [net.cost(net.space.uniform(r)).macs for r in np.linspace(0.25, 1, 61)]
    assert all(abs(m - 0.45 * full) >= abs(macs - 0.45 * full) - 1e-9
               for m in others if m <= 0.5 * full)
