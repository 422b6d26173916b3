"""Saving, loading and ONNX export of exported (plain, smaller) models.

A saved model is two files: `NAME.safetensors` (weights, no pickle, their sha256 in its
metadata) and `NAME.json` (how to rebuild the architecture: registry name and constructor
arguments, the width config, and the shapes of every resized layer). Loading never
unpickles anything.

The sidecar decides what gets built, so it is treated as untrusted input: it is validated
against `ExportRecord` (bounded numbers and strings, known keys only), a resized layer may
only shrink, the full-size model is first built on the meta device and refused above
`MAX_PARAMS`, and a constructor argument that names a file must stay inside the export's
own folder. Every failure is one ExportError (or UntrustedFileError) naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .dynamic import resize
from .errors import ExportError, UntrustedFileError, WidthSearchError
from .safeio import (
    SAFETENSORS_DIGEST_KEY,
    atomic_write_text,
    load_safetensors_verified,
    save_safetensors_verified,
)

FORMAT = "widthsearch-export/1"
MAX_PARAMS = 2_000_000_000
"""The largest full-size model (parameters and buffers) a sidecar may ask to build."""
MAX_SIDECAR_BYTES = 16 * 2**20
_MAX_DIM = 2**20
_PATH_HINTS = ("path", "file", "dir", "root")

Dim = Annotated[int, Field(strict=True, ge=0, le=_MAX_DIM)]
Name = Annotated[str, Field(max_length=512)]
Scalar = (Annotated[int, Field(strict=True, ge=-_MAX_DIM, le=_MAX_DIM)]
          | Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e6, le=1e6)]
          | Annotated[bool, Field(strict=True)] | Annotated[str, Field(max_length=1024)] | None)
KwargValue = Scalar | Annotated[list[Scalar], Field(max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShapeSpec(_Strict):
    """The sizes of one resized layer: constructor-level sizes and its tensors' shapes."""

    attrs: Annotated[dict[Name, Dim | Annotated[list[Dim], Field(max_length=8)]],
                     Field(max_length=16)] = {}
    tensors: Annotated[dict[Name, Annotated[list[Dim], Field(max_length=8)]],
                       Field(max_length=64)] = {}


class ExportRecord(_Strict):
    """The schema of an export's JSON sidecar."""

    format: Literal["widthsearch-export/1"]
    widthsearch_version: Annotated[str, Field(max_length=64)]
    model: Annotated[str, Field(max_length=256, pattern=r"^[\w.:\-]+$")] | None
    model_kwargs: Annotated[dict[Name, KwargValue], Field(max_length=64)] = {}
    width_config: Annotated[dict[Name, Dim], Field(max_length=100_000)] | None = None
    choice: Annotated[dict[Name, Dim], Field(max_length=100_000)] = {}
    shapes: Annotated[dict[Name, ShapeSpec], Field(max_length=100_000)] = {}
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    metadata: dict[Name, Any] = {}


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
    save_safetensors_verified(weights, _dedupe_shared(state))
    _, saved_meta = load_safetensors_verified(weights, damaged=ExportError)
    record = {
        "format": FORMAT,
        "widthsearch_version": __version__,
        "model": spec.get("name"),
        "model_kwargs": _without_files(spec.get("kwargs", {})),
        "width_config": spec.get("width_config"),
        "choice": spec.get("choice", {}),
        "shapes": spec.get("shapes", {}),
        "metadata": metadata or {},
        "weights_sha256": saved_meta[SAFETENSORS_DIGEST_KEY],
    }
    atomic_write_text(sidecar, json.dumps(record, indent=2, sort_keys=True))
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
    """The validated JSON sidecar of a saved model (ExportError when malformed)."""
    _, sidecar = _paths(path)
    if not sidecar.is_file():
        raise ExportError(f"{sidecar} is missing: a saved model needs its JSON sidecar")
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise ExportError(f"{sidecar} is larger than {MAX_SIDECAR_BYTES} bytes; not a sidecar")
    try:
        record = json.loads(sidecar.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ExportError(f"{sidecar} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{sidecar} is not valid JSON (line {e.lineno}, column "
                          f"{e.colno}: {e.msg})") from None
    except RecursionError:
        raise ExportError(f"{sidecar} nests too deeply to be a sidecar") from None
    if not isinstance(record, dict):
        raise ExportError(f"{sidecar} must hold a JSON object, not {type(record).__name__}")
    if record.get("format") != FORMAT:
        raise ExportError(f"{sidecar} is not a widthsearch export ({record.get('format')!r})")
    try:
        checked = ExportRecord.model_validate(record)
    except ValidationError as e:
        from .config import format_validation_error

        raise ExportError(f"{sidecar} is malformed: {format_validation_error(e)}") from None
    out = checked.model_dump()
    _confine_paths(out["model_kwargs"], sidecar)  # refuse a path out now, resolve on build
    return out


def _is_file_argument(key: str, value: Any) -> bool:
    return isinstance(value, str) and any(h in key.lower() for h in _PATH_HINTS)


def _without_files(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments without the files they loaded (pretrained_path): the saved
    weights replace whatever those files held, and a sidecar that names no file cannot be
    turned into a way to read one."""
    return {k: None if _is_file_argument(k, v) else v for k, v in kwargs.items()}


def _confine_paths(kwargs: dict[str, Any], sidecar: Path) -> dict[str, Any]:
    """Resolve constructor arguments that name files inside the export's folder, refusing
    any that reach outside it (an absolute path, `..`, a symlink out)."""
    folder = sidecar.parent.resolve()
    out = dict(kwargs)
    for key, value in kwargs.items():
        if not _is_file_argument(key, value):
            continue
        target = (folder / value).resolve()
        if Path(value).is_absolute() or not target.is_relative_to(folder):
            raise UntrustedFileError(
                f"{sidecar}: model_kwargs.{key} names {value!r}, outside the export's folder "
                f"{folder}; a sidecar may only name files beside it")
        out[key] = str(target)
    return out


def _build_bounded(name: str, kwargs: dict[str, Any], sidecar: Path) -> nn.Module:
    """The registry model, built on the meta device first so that a sidecar asking for an
    enormous model is refused before anything is allocated."""
    from .models import get

    file_kwargs = {k for k in kwargs if any(h in k.lower() for h in _PATH_HINTS)}
    probe_kwargs = {k: v for k, v in kwargs.items() if k not in file_kwargs}
    try:
        with torch.device("meta"):
            probe = get(name, **probe_kwargs)
    except WidthSearchError as e:
        raise ExportError(f"{sidecar}: {e}") from None
    except Exception:  # a builder that cannot run on meta tensors: the bounds above hold
        probe = None
    if probe is not None:
        count = sum(t.numel() for t in [*probe.parameters(), *probe.buffers()])
        if count > MAX_PARAMS:
            raise ExportError(f"{sidecar} asks for a {name} of {count:,} parameters (more "
                              f"than {MAX_PARAMS:,}); refusing to build it")
    try:
        return get(name, **kwargs)
    except WidthSearchError as e:
        raise ExportError(f"{sidecar}: {e}") from None


def _check_shrinks(layer: nn.Module, name: str, spec: dict[str, Any], sidecar: Path) -> None:
    """A sidecar may only make a layer's sizes smaller than the full-size model's (its
    tensors are checked the same way by `resize`)."""
    for key, value in spec.get("attrs", {}).items():
        full = getattr(layer, key, None)
        if isinstance(value, int) and isinstance(full, int) and value > full:
            raise ExportError(f"{sidecar}: {name}.{key}={value} exceeds the full model's "
                              f"{full}; an export only shrinks")
        if isinstance(value, list) and isinstance(full, (tuple, list)) and (
                len(value) != len(full) or any(v > f for v, f in zip(value, full, strict=True))):
            raise ExportError(f"{sidecar}: {name}.{key}={value} does not shrink {list(full)}")


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved model: from the registry by name, or from a full-size `model` you pass.

    The weights' checksum is verified and must match the one the sidecar recorded.
    """
    weights, sidecar = _paths(path)
    record = read_sidecar(path)
    if model is None:
        if not record["model"]:
            raise ExportError(
                f"{weights} does not name a registered model; pass the full-size model: "
                "ws.load(path, model=MyModel())"
            )
        kwargs = _confine_paths(record["model_kwargs"], sidecar)
        model = _build_bounded(record["model"], kwargs, sidecar)
    for name, spec in record["shapes"].items():
        try:
            layer = model.get_submodule(name) if name else model
        except AttributeError:
            raise ExportError(
                f"{weights} resizes layer {name!r}, which {type(model).__name__} does not "
                "have; pass the full-size model the subnet was exported from"
            ) from None
        _check_shrinks(layer, name, spec, sidecar)
        try:
            resize(layer, spec, where=name)
        except WidthSearchError as e:
            raise ExportError(f"{sidecar}: {e}") from None
        except (TypeError, ValueError, RuntimeError) as e:
            raise ExportError(f"{sidecar}: cannot resize {name!r} as it says "
                              f"({' '.join(str(e).split())[:200]})") from None
    state, meta = load_safetensors_verified(weights, damaged=ExportError)
    expected = record.get("weights_sha256")
    if expected is not None and meta.get(SAFETENSORS_DIGEST_KEY) != expected:
        raise ExportError(f"{weights} is not the weights file {sidecar.name} was saved with "
                          "(their checksums differ)")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: torch lists each on its own line
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        more = f" (and {len(details) - 2} more)" if len(details) > 2 else ""
        raise ExportError(f"{weights} does not fit the rebuilt model: "
                          + "; ".join(details[:2] or [str(err)]) + more) from None
    if missing or unexpected:
        raise ExportError(
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
