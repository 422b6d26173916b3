"""timm resolver: "timm:<name>" -> `timm.create_model(name, pretrained=False, ...)`.

timm is an optional extra (`pip install widthsearch[timm]`). Models are built with timm's
trace-friendly layer config (`exportable=True, no_jit=True`: plain activation modules instead
of custom-autograd ones, so torch.fx can trace them); where a trace still fails, discovery
traces again with the modules timm registers as fx leaves
(`timm.layers.get_notrace_modules()`, see discovery/ops/timm.py).
Weights are never downloaded: `pretrained_path` loads a local state dict instead, and
`pretrained=True` without one is an error.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import os
from types import ModuleType
from typing import Any

from torch import nn

from widthsearch.errors import WidthSearchError
from widthsearch.models.tv import load_state_dict_file

__all__ = [
    "PREFIX",
    "available",
    "model_names",
    "build",
    "default_input_size",
    "smallest_input_size",
    "unknown_message",
]

PREFIX = "timm:"

# Smallest square side (batch 1 and 2, eval and train) for families that need more than the
# default; first match wins. Measured with timm 1.0.31.
_SMALLEST: tuple[tuple[str, int], ...] = (
    ("inception_v3", 75),
    ("inception_v4", 75),
    ("inception_resnet_v2", 75),
    ("tf_*", 64),
)
_DEFAULT_SMALLEST = 64
_BUILD_FLAGS = {"exportable": True, "no_jit": True}


def _timm() -> ModuleType:
    """Import timm or say how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise WidthSearchError(
            "timm models need the optional dependency timm: pip install 'widthsearch[timm]'"
        ) from None


def available() -> bool:
    """True when timm can be imported."""
    try:
        importlib.import_module("timm")
    except ImportError:
        return False
    return True


@functools.cache
def _names() -> tuple[str, ...]:
    return tuple(_timm().list_models()) if available() else ()


def model_names() -> list[str]:
    """Every model name timm can build (empty when timm is not installed)."""
    return list(_names())


def _base(name: str) -> str:
    """A name without its pretrained tag ("resnet18.a1_in1k" -> "resnet18")."""
    return name.split(".", 1)[0]


def is_known(name: str) -> bool:
    return _base(name) in _names()


def unknown_message(name: str) -> str:
    if not available():
        return f"cannot build {PREFIX}{name}: " + (
            "timm is not installed: pip install 'widthsearch[timm]'")
    close = difflib.get_close_matches(_base(name), _names(), n=3)
    hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    return (f"unknown timm model {name!r}.{hint} See widthsearch.models.list('{PREFIX}*') "
            "for all of them.")


def _check_name(name: str) -> None:
    _timm()
    if not is_known(name):
        raise WidthSearchError(unknown_message(name))


def default_input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input of the model's default pretrained config (no download)."""
    _check_name(name)
    size = _timm().get_pretrained_cfg_value(name, "input_size")
    if not size or len(size) != 3:
        return (3, 224, 224)
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def smallest_input_size(name: str) -> int:
    """A small square side the model runs at; fixed-size models keep their default size."""
    _check_name(name)
    if _timm().get_pretrained_cfg_value(name, "fixed_input_size"):
        return default_input_size(name)[1]
    for pattern, side in _SMALLEST:
        if fnmatch.fnmatchcase(_base(name), pattern):
            return side
    return _DEFAULT_SMALLEST


def build(
    name: str,
    *,
    in_channels: int | None = None,
    pretrained: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build timm model `name` with random weights, or weights from a local file.

    `in_channels` is timm's `in_chans`; other keywords (num_classes, drop_rate, ...) go to
    `timm.create_model`. `pretrained=True` needs `pretrained_path` (.safetensors or a torch
    state dict); the file must match the model as built with these arguments.
    """
    _check_name(name)
    for key in ("in_chans", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
        if key in kwargs:
            hint = "use in_channels=" if key == "in_chans" else "use pretrained_path="
            raise WidthSearchError(f"{PREFIX}{name}: {key}= is not accepted; {hint}")
    if pretrained and pretrained_path is None:
        raise WidthSearchError(
            f"{PREFIX}{name}: weight downloads are not available; pass "
            "pretrained_path='<local .safetensors or state-dict file>' to load weights you "
            "already have")
    if in_channels is not None:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise WidthSearchError(f"in_channels must be a positive int, got {in_channels!r}")
        kwargs["in_chans"] = in_channels
    try:
        model = _timm().create_model(name, pretrained=False, **_BUILD_FLAGS, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise WidthSearchError(f"bad arguments for model '{PREFIX}{name}': {e}") from e
    if pretrained_path is not None:
        state = load_state_dict_file(pretrained_path)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WidthSearchError(
                f"weights in {os.fspath(pretrained_path)!r} do not fit '{PREFIX}{name}' "
                f"with these arguments: {e}") from None
    return model

