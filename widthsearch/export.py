"""Saving, loading and ONNX export of exported (plain, smaller) models.

A saved model is two files: `NAME.safetensors` (weights, no pickle) and `NAME.json` (how to
rebuild the architecture: registry name and constructor arguments, the width config, and the
shapes of every resized layer). Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from . import __version__
from .dynamic import resize
from .errors import WidthSearchError

FORMAT = "widthsearch-export/1"


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save(module: nn.Module, path: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write `module`'s weights (safetensors) and its rebuild recipe (JSON); returns the weights path."""
    weights, sidecar = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    spec = dict(getattr(module, "widthsearch_spec", {}) or {})
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(_dedupe_shared(state), str(weights))
    record = {
        "format": FORMAT,
        "widthsearch_version": __version__,
        "model": spec.get("name"),
        "model_kwargs": spec.get("kwargs", {}),
        "width_config": spec.get("width_config"),
        "choice": spec.get("choice", {}),
        "shapes": spec.get("shapes", {}),
        "metadata": metadata or {},
    }
    sidecar.write_text(json.dumps(record, indent=2, sort_keys=True))
    return weights


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): store copies."""
    seen: set[int] = set()
    out = {}
    for key, t in state.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        out[key] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def read_sidecar(path: str | Path) -> dict[str, Any]:
    _, sidecar = _paths(path)
    if not sidecar.exists():
        raise WidthSearchError(f"{sidecar} is missing: a saved model needs its JSON sidecar")
    record = json.loads(sidecar.read_text())
    if record.get("format") != FORMAT:
        raise WidthSearchError(f"{sidecar} is not a widthsearch export ({record.get('format')!r})")
    return record


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved model: from the registry by name, or from a full-size `model` you pass."""
    weights, _ = _paths(path)
    record = read_sidecar(path)
    if model is None:
        if not record["model"]:
            raise WidthSearchError(
                f"{weights} does not name a registered model; pass the full-size model: "
                "ws.load(path, model=MyModel())"
            )
        from .models import get

        model = get(record["model"], **record["model_kwargs"])
    for name, spec in record["shapes"].items():
        try:
            layer = model.get_submodule(name) if name else model
        except AttributeError:
            raise WidthSearchError(
                f"{weights} resizes layer {name!r}, which {type(model).__name__} does not "
                "have; pass the full-size model the subnet was exported from"
            ) from None
        if not isinstance(spec, dict):
            raise WidthSearchError(f"{weights}: the shapes of {name!r} are not a mapping")
        resize(layer, spec, where=name)
    if not weights.exists():
        raise WidthSearchError(f"{weights} is missing")
    state = load_file(str(weights))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WidthSearchError(f"{weights} does not fit the rebuilt model: {err}") from None
    if missing or unexpected:
        raise WidthSearchError(
            f"{weights} does not fit the rebuilt model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.widthsearch_spec = {
        "name": record["model"], "kwargs": record["model_kwargs"],
        "width_config": record["width_config"], "choice": record["choice"],
        "shapes": record["shapes"],
    }
    return model


def to_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export to ONNX with a dynamic batch axis (legacy TorchScript exporter: no extra deps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        torch.onnx.export(
            module, (example_input,), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
        )
    finally:
        module.train(was_training)
    return path
