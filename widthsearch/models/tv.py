"""torchvision resolver: "torchvision:<name>" -> `torchvision.models.get_model(name, weights=None)`.

Weights are never downloaded (the sandbox and many clusters are offline, and silent
downloads make runs irreproducible); `pretrained_path` loads a local state dict instead.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import math
import os
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from widthsearch.errors import WidthSearchError

__all__ = [
    "PREFIX",
    "model_names",
    "build",
    "default_input_size",
    "smallest_input_size",
    "replace_input_channels",
    "load_state_dict_file",
]

PREFIX = "torchvision:"

# Smallest square side at which each family runs in train mode (batch 2) and eval mode
# (batch 1), measured with torchvision 0.29.1 and floored at 32 px (below that most layers
# see 1x1 maps). First match wins; unknown models get 32.
_SMALLEST: tuple[tuple[str, int], ...] = (
    ("vit_*", 224),  # checks H == W == image_size (224 by default)
    ("maxvit_t", 224),  # window partitions are fixed by input_size (224 by default)
    ("inception_v3", 299),  # train-mode aux classifier; 75 with aux_logits=False or in eval
    ("alexnet", 64),  # measured minimum 63
    ("squeezenet*", 32),  # measured minimum 21 (1_0) / 24 (1_1)
    ("vgg*", 32),  # five 2x2 max-pools
    ("densenet*", 32),
    ("googlenet", 32),  # measured minimum 15
)
_DEFAULT_SIZE: dict[str, int] = {"inception_v3": 299}


@functools.cache
def _names() -> tuple[str, ...]:
    return tuple(tvm.list_models(module=tvm))


def model_names() -> list[str]:
    """torchvision's classification model names (no detection/segmentation/video)."""
    return list(_names())


def unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, _names(), n=3)
    hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    return (
        f"unknown torchvision classification model {name!r}.{hint} "
        f"See widthsearch.models.list('{PREFIX}*') for all of them."
    )


def default_input_size(name: str) -> tuple[int, int, int]:
    side = _DEFAULT_SIZE.get(name, 224)
    return (3, side, side)


def smallest_input_size(name: str) -> int:
    for pattern, side in _SMALLEST:
        if fnmatch.fnmatchcase(name, pattern):
            return side
    return 32


def build(
    name: str,
    *,
    in_channels: int | None = None,
    pretrained_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build torchvision model `name` with random weights, or weights from a local file.

    `in_channels` replaces the first 3-channel conv (the stem) with one taking
    `in_channels`. `pretrained_path` (.safetensors or a torch state dict) is loaded after
    that, so it must match the model as built with these arguments.
    """
    for key in ("weights", "pretrained"):
        if key in kwargs:
            raise WidthSearchError(
                f"{PREFIX}{name}: weight downloads are not available ({key}= is not "
                "accepted); pass pretrained_path='<local .safetensors or state-dict file>' "
                "to load weights you already have"
            )
    if name not in _names():
        raise WidthSearchError(unknown_message(name))
    try:
        model = tvm.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as e:
        raise WidthSearchError(f"bad arguments for model '{PREFIX}{name}': {e}") from e
    if in_channels is not None:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise WidthSearchError(f"in_channels must be a positive int, got {in_channels!r}")
        if in_channels != 3:
            replace_input_channels(model, in_channels)
    if pretrained_path is not None:
        state = load_state_dict_file(pretrained_path)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WidthSearchError(
                f"weights in {os.fspath(pretrained_path)!r} do not fit '{PREFIX}{name}' "
                f"with these arguments: {e}"
            ) from None
    return model


def replace_input_channels(model: nn.Module, in_channels: int) -> nn.Conv2d:
    """Swap the first nn.Conv2d with 3 input channels for one taking `in_channels`.

    Output channels, kernel, stride, padding, dilation, groups and bias are kept. The new
    weight is drawn with the old weight's mean and std, so the model's own init scale is
    kept whatever scheme it used; the bias is copied. Returns the new conv.
    """
    found = next(
        (
            (qualname, module)
            for qualname, module in model.named_modules()
            if type(module) is nn.Conv2d and module.in_channels == 3
        ),
        None,
    )
    if found is None:
        raise WidthSearchError(
            f"cannot set in_channels={in_channels}: the model has no nn.Conv2d with 3 input "
            "channels to replace"
        )
    qualname, module = found
    if module.groups != 1:
        raise WidthSearchError(
            f"cannot set in_channels={in_channels}: the input conv {qualname!r} is grouped "
            f"(groups={module.groups})"
        )
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        kernel_size=module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    with torch.no_grad():
        std = module.weight.std().item()
        mean = module.weight.mean().item()
        if not math.isfinite(std) or std == 0.0:
            std = 1.0 / math.sqrt(in_channels * math.prod(module.kernel_size))
        new.weight.normal_(mean, std)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    parent_name, _, attr = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return new


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load tensors from .safetensors or a torch file, never unpickling arbitrary objects."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WidthSearchError(f"pretrained_path {path!r} does not exist or is not a file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise WidthSearchError(f"cannot load weights from {path!r}: not a readable "
                                   f"safetensors file ({' '.join(str(e).split())})") from None
    from ..safeio import safe_torch_load

    state = safe_torch_load(path, f"pretrained_path {path!r}", damaged=WidthSearchError)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WidthSearchError(f"{path!r} does not hold a state dict (name -> tensor)")
    return state
