"""Finite-value checks of everything a checkpoint holds.

A loss can stay finite while a parameter, a momentum buffer or a BatchNorm running
statistic has already overflowed; a checkpoint written then would carry the damage into
every resume. The trainer asks `non_finite_report` before each checkpoint and refuses to
write one that is not entirely finite, so the newest checkpoint is always a good place to
resume from with a lower learning rate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = ["non_finite_report", "non_finite_tensors"]


def _tensors(prefix: str, obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(f"{prefix}[{i}]", v)


def non_finite_tensors(net: nn.Module, optimizer: torch.optim.Optimizer | None = None
                       ) -> list[tuple[str, int]]:
    """(name, count of non-finite entries) of every floating tensor that has some:
    parameters and buffers (BN statistics) of `net`, and the optimizer's state."""
    found = []
    sources: list[tuple[str, Any]] = [("", net.state_dict())]
    if optimizer is not None:
        sources.append(("optimizer", optimizer.state_dict()["state"]))
    for prefix, source in sources:
        for name, t in _tensors(prefix, source):
            if t.is_floating_point() or t.is_complex():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    found.append((name, bad))
    return found


def non_finite_report(net: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """'' when all is finite, else a short summary naming the first tensors affected."""
    found = non_finite_tensors(net, optimizer)
    if not found:
        return ""
    total = sum(n for _, n in found)
    names = ", ".join(f"{name} ({n})" for name, n in found[:3])
    more = f" and {len(found) - 3} more tensors" if len(found) > 3 else ""
    return f"values: {total} entries in {names}{more}"
