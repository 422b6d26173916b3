"""In-place distillation: narrower widths learn the full width's soft predictions.

US-Nets / BigNAS / Joslim train every non-max width against the detached logits of the max
width of the same step, which needs no separate teacher and regularizes small widths.
The KL divergence and the soft cross-entropy differ by the teacher's entropy, a constant
for the student, so both give the same gradients; KL is reported by default because it is
0 when the student matches the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import WidthSearchError

KINDS = ("kl", "soft_ce")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                 kind: str = "kl") -> torch.Tensor:
    """Mean over the batch of KL(teacher || student) (or the soft cross-entropy) at
    `temperature`, scaled by T^2 so gradient magnitudes do not depend on T. The teacher
    logits are detached here, so no gradient reaches the teacher's forward."""
    if temperature <= 0:
        raise WidthSearchError(f"the distillation temperature must be > 0, got {temperature}")
    if kind not in KINDS:
        raise WidthSearchError(f"unknown distillation loss {kind!r}; choose one of {KINDS}")
    if student.shape != teacher.shape:
        raise WidthSearchError(f"student logits {tuple(student.shape)} and teacher logits "
                               f"{tuple(teacher.shape)} differ in shape")
    t = float(temperature)
    log_p = F.log_softmax(student / t, dim=-1)
    log_q = F.log_softmax(teacher.detach() / t, dim=-1)
    q = log_q.exp()
    per_sample = (q * ((log_q if kind == "kl" else 0.0) - log_p)).sum(dim=-1)
    return per_sample.mean() * (t * t)
