"""examples/custom_model.py runs end to end on its tiny generated data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx

import widthsearch as ws

SCRIPT = Path(__file__).parent.parent / "examples" / "custom_model.py"


def test_custom_model_and_dataset_end_to_end(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("custom_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(steps=6, out=tmp_path)
    assert 0 < result["macs_ratio"] <= 0.5
    assert 0.0 <= result["test_accuracy"] <= 1.0
    model = ws.load(tmp_path / "exports" / "tinynet-half", model=module.TinyNet())
    assert isinstance(model, module.TinyNet)
    onnx.checker.check_model(str(tmp_path / "exports" / "tinynet-half.onnx"))
    assert (tmp_path / "search" / "chosen.json").is_file()
