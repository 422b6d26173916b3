"""Batch-norm recalibration and subnet evaluation.

Every width shares the supernet's BN running statistics, which training accumulates over a
mix of widths: they match no single subnet, so a subnet evaluated with them can score far
below what it is worth. Before a subnet is evaluated, its BN statistics are recomputed on a
few training batches at that width (cumulative average, as US-Nets / AutoSlim / BigNAS do).
The statistics are shared buffers, so `bn_state` / `load_bn_state` snapshot and restore them
around an evaluation and training continues unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import WidthSearchError

if TYPE_CHECKING:
    from ..supernet import Choice, Supernet

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def unwrap(net: nn.Module) -> Supernet:
    """The Supernet inside a DistributedDataParallel (or similar `.module`) wrapper."""
    from ..supernet import Supernet

    seen = net
    while not isinstance(seen, Supernet):
        inner = getattr(seen, "module", None)
        if not isinstance(inner, nn.Module):
            raise WidthSearchError(f"expected a widthsearch.Supernet, got {type(net).__name__}")
        seen = inner
    return seen


def _device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def bn_modules(net: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """(name, module holding the buffers, module holding momentum) for every batch norm.

    A sliced BN keeps its own class (dynamic.py), so both are the module itself.
    """
    for name, module in unwrap(net).named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            yield name, module, module


def bn_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BN running statistic (mean, var, batches tracked), by module name."""
    state = {}
    for name, module, _ in bn_modules(net):
        for buf in _BUFFERS:
            value = module._buffers.get(buf)  # full size: the attribute is the active slice
            if value is not None:
                state[f"{name}.{buf}"] = value.detach().clone()
    return state


def load_bn_state(net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a `bn_state` snapshot back in place (the buffers stay shared with the model)."""
    expected = set()
    with torch.no_grad():
        for name, module, _ in bn_modules(net):
            for buf in _BUFFERS:
                value = module._buffers.get(buf)  # full size: the attribute is the active slice
                if value is None:
                    continue
                key = f"{name}.{buf}"
                expected.add(key)
                if key not in state:
                    raise WidthSearchError(f"BN state has no entry for {key}")
                value.copy_(state[key])
    extra = set(state) - expected
    if extra:
        raise WidthSearchError(f"BN state has entries this model lacks: {sorted(extra)[:5]}")


def recalibrate_bn(net: nn.Module, config: Mapping[str, int] | None = None,
                   choice: Choice = None, batches: Iterable[Any] = (),
                   num_batches: int = 1) -> int:
    """Recompute the BN statistics of subnet (config, choice) on up to `num_batches` batches.

    Every BN runs in train mode with momentum None (the cumulative average over the batches:
    the first batch replaces the old statistics of the active channels, later ones are
    averaged in; inactive channels keep theirs). Every other module is in eval mode (no
    dropout), no gradients are taken, and the modes, momenta and active widths are restored
    afterwards. `batches` yields `(x, y)` (or x alone). Returns the batches used.
    """
    if num_batches < 1:
        raise WidthSearchError(f"num_batches must be >= 1, got {num_batches}")
    supernet = unwrap(net)
    modes = {m: m.training for m in supernet.modules()}
    norms = [(m, owner) for _, m, owner in bn_modules(supernet)
             if owner.track_running_stats and getattr(m, "running_mean", None) is not None]
    momenta = [owner.momentum for _, owner in norms]
    device = _device(supernet)
    used = 0
    try:
        supernet.eval()
        for m, owner in norms:
            m.training = True
            owner.momentum = None
            m.num_batches_tracked.zero_()
        with torch.no_grad(), supernet.activate(config, choice):
            for batch in batches:
                if used >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                supernet(x.to(device, non_blocking=True))
                used += 1
    finally:
        for (_, owner), momentum in zip(norms, momenta, strict=True):
            owner.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if used == 0:
        raise WidthSearchError("BN recalibration got no batches (empty loader)")
    return used


def evaluate(net: nn.Module, config: Mapping[str, int] | None, choice: Choice,
             loader: Iterable[Any], recal_batches: int = 0,
             recal_loader: Iterable[Any] | None = None, max_batches: int | None = None, *,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             restore_bn: bool = True) -> dict[str, float]:
    """Loss and accuracy of subnet (config, choice) on `loader`, in eval mode.

    With `recal_batches` > 0 the BN statistics are first recalibrated on that many batches
    of `recal_loader` (training images; a loader whose position the training loop does not
    depend on). With `restore_bn` the supernet's BN statistics are restored afterwards, so
    training continues as if nothing happened. `loss_fn` returns a batch mean (default:
    cross-entropy). Returns {"loss": mean per sample, "accuracy": fraction, "samples": n}.
    """
    supernet = unwrap(net)
    if recal_batches > 0 and recal_loader is None:
        raise WidthSearchError("recal_batches > 0 needs a recal_loader of training batches")
    snapshot = bn_state(supernet) if restore_bn and recal_batches > 0 else None
    modes = {m: m.training for m in supernet.modules()}
    device = _device(supernet)
    total_loss, correct, seen = 0.0, 0, 0
    try:
        if recal_batches > 0:
            assert recal_loader is not None
            recalibrate_bn(supernet, config, choice, recal_loader, recal_batches)
        supernet.eval()
        with torch.no_grad(), supernet.activate(config, choice):
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = supernet(x)
                if loss_fn is None:
                    total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
                else:
                    total_loss += float(loss_fn(logits, y)) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
    finally:
        for m, mode in modes.items():
            m.training = mode
        if snapshot is not None:
            load_bn_state(supernet, snapshot)
    if seen == 0:
        raise WidthSearchError("evaluation got no batches (empty loader)")
    return {"loss": total_loss / seen, "accuracy": correct / seen, "samples": float(seen)}
