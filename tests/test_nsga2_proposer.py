"""NSGA-II behind ask / tell: generations handed out n widths at a time, told once scored,
and a resumed proposer that proposes exactly what the uninterrupted one does."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

import widthsearch as ws
from widthsearch.space import WidthConfig
from widthsearch.train.nsga2_proposer import NSGA2Proposer
from widthsearch.train.proposers import WidthEncoder


@pytest.fixture(scope="module")
def encoder() -> WidthEncoder:
    torch.manual_seed(0)
    model = ws.models.get("resnet20", num_classes=10, in_channels=1, width_mult=0.5)
    return WidthEncoder(ws.Supernet(model, torch.randn(2, 1, 28, 28)).space, 0.42, [])


def make(encoder: WidthEncoder, population: int = 4) -> NSGA2Proposer:
    def cost(widths: np.ndarray) -> np.ndarray:
        return widths.sum(axis=1).astype(np.float64)

    return NSGA2Proposer(encoder, cost, population=population, seed=1)


def loss_of(encoder: WidthEncoder, config: WidthConfig) -> float:
    """Wider is better, with a bump: enough for the two objectives to disagree."""
    m = encoder.to_widths([config])[0].astype(float)
    return float(10.0 / (1.0 + m.sum()) + 0.01 * np.sin(m).sum())


def drive(p: NSGA2Proposer, encoder: WidthEncoder, rounds: range,
          current: list[WidthConfig] | None = None) -> tuple[list[Any], list[WidthConfig]]:
    """Joslim's loop: re-score history + current widths, tell, ask 3 more."""
    proposed, current = [], list(current or [])
    for _ in rounds:
        history = list(dict.fromkeys([*p.history, *current]))
        if history:
            p.tell(history, [loss_of(encoder, c) for c in history])
        current = p.ask(3)
        proposed.append([c.to_dict() for c in current])
    return proposed, current


def test_generations_are_handed_out_and_told_once_scored(encoder: WidthEncoder) -> None:
    p = make(encoder)
    first = p.ask(3)  # the initial population: 3 of its 4
    second = p.ask(3)  # 1 left, not all scored: the other 2 are random, nothing is told
    assert len(first) == len(second) == 3 and p.generations == 0
    p.tell([*first, *second], [loss_of(encoder, c) for c in [*first, *second]])
    third = p.ask(3)  # the generation is scored: told to pymoo, the next one asked
    assert p.generations == 1
    drive(p, encoder, range(12), third)
    assert p.generations >= 4 and len(p.history) > 20


@pytest.mark.parametrize("cut", [1, 4, 5, 8])
def test_a_resumed_proposer_proposes_what_the_whole_run_does(encoder: WidthEncoder,
                                                              cut: int) -> None:
    whole, _ = drive(make(encoder), encoder, range(12))
    part = make(encoder)
    first, current = drive(part, encoder, range(cut))
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)  # plain values: loads with weights_only
    buffer.seek(0)
    resumed = make(encoder)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    rest, _ = drive(resumed, encoder, range(cut, 12), current)
    assert first + rest == whole


def test_a_population_below_two_is_refused(encoder: WidthEncoder) -> None:
    with pytest.raises(ws.WidthSearchError, match="population >= 2"):
        make(encoder, population=1)
