"""What a model's forward returns in training mode, turned into logits and a loss.

Strategies work on one logits tensor per forward. Most classifiers return exactly that;
torchvision's GoogLeNet and Inception v3 return named tuples with auxiliary heads in
training mode. `MainLogits` hands the strategy the main logits and keeps the auxiliary ones
for `AuxLoss`, which adds them with the weights their papers train them with (GoogLeNet:
0.3 per head, Szegedy et al. 2015; Inception v3: 0.4 on its one head, as torchvision's
reference recipe). Any other output (a plain tuple, a dict, a feature map) is one clear
ModelError at the first step instead of a traceback inside the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelError

AUX_WEIGHTS: dict[str, dict[str, float]] = {
    "GoogLeNetOutputs": {"aux_logits1": 0.3, "aux_logits2": 0.3},
    "InceptionOutputs": {"aux_logits": 0.4},
}
"""Named-tuple type name -> auxiliary field -> its weight in the training loss."""

__all__ = ["AUX_WEIGHTS", "AuxLoss", "MainLogits", "split_outputs"]


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a dict with keys {sorted(map(str, out))[:5]}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"


def split_outputs(out: Any) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
    """(main logits, [(weight, auxiliary logits)]) of one training-mode forward."""
    if isinstance(out, tuple) and hasattr(out, "_fields") and "logits" in out._fields:
        weights = AUX_WEIGHTS.get(type(out).__name__, {})
        unknown = [f for f in out._fields
                   if f != "logits" and f not in weights and getattr(out, f) is not None]
        if not unknown:
            aux = [(w, getattr(out, f)) for f, w in weights.items()
                   if getattr(out, f, None) is not None]
            return _check_logits(out.logits), [(w, _check_logits(a)) for w, a in aux]
    if isinstance(out, torch.Tensor):
        return _check_logits(out), []
    raise ModelError(
        f"the model returns {_describe(out)} in training mode; widthsearch trains on one "
        "logits tensor (batch, classes), or torchvision's GoogLeNetOutputs / "
        "InceptionOutputs: wrap the model so its forward returns the logits")


def _check_logits(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ModelError(
            f"the model returns {_describe(t)} where logits (batch, classes) are needed; "
            "end it with global pooling and a linear layer, or wrap it")
    return t


class MainLogits(nn.Module):
    """Wraps the supernet for the strategy: forward returns the main logits only.

    `module` is the supernet itself (strategies find it through `.module`); the auxiliary
    logits of the last forward wait in `pending` for `AuxLoss`.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.pending: list[tuple[float, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.pending = split_outputs(self.module(x))
        return logits


class AuxLoss:
    """`loss(logits, y)` plus the weighted loss of the auxiliary logits of the same forward."""

    def __init__(self, base: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 net: MainLogits) -> None:
        self.base, self.net = base, net

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, y)
        pending, self.net.pending = self.net.pending, []
        for weight, aux in pending:
            loss = loss + weight * self.base(aux, y)
        return loss
