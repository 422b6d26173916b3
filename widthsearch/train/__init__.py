"""Supernet training: strategies (which widths a step trains), distillation, BN recalibration.

The loop itself (checkpoints, devices, DDP) lives in `widthsearch.train.trainer`.
"""

from .bn import bn_state, evaluate, load_bn_state, recalibrate_bn, unwrap
from .distill import distill_loss
from .strategies import (
    STRATEGIES,
    BCNet,
    CafeNet,
    Sandwich,
    SinglePath,
    Strategy,
    build_strategy,
    complementary,
    identity,
)

__all__ = [
    "STRATEGIES", "BCNet", "CafeNet", "Sandwich", "SinglePath", "Strategy", "bn_state",
    "build_strategy", "complementary", "distill_loss", "evaluate", "identity",
    "load_bn_state", "recalibrate_bn", "unwrap",
]
