"""Joslim: joint optimization of the widths and the weights of a slimmable supernet.

Instead of training every width equally (slimmable networks) or random widths followed by
a search (two stages), Joslim trains the widths a multi-objective Bayesian optimizer
expects on the loss-vs-cost Pareto front, and keeps a history of them (Chin et al.,
ECML-PKDD 2021). Per training step:

    every tau steps:  re-score every width of the history on one fresh VAL batch with the
                      current weights (batch statistics; the BN running statistics training
                      uses are snapshotted and restored), tell the proposer, ask it for M
                      new widths (rank 0 asks, every rank receives them)
    every step:       full width on the labels; the M current widths and the smallest width
                      by in-place distillation from the full width's detached logits; the
                      gradients are summed for one optimizer step

The baselines share the loop and the deliverable: `slim` draws M one-multiplier widths per
step (conventional slimmable training: the sandwich rule with in-place distillation) and
`two-stage` draws M random per-group widths per step (BigNAS-style); both record the widths
of every tau-th step as their history, so `widthsearch slimmable` peels and searches the
same way after any of the three.

The Trainer calls `attach(total_steps=..., val=...)` once: tau follows the run's length
and the val loader is the source of re-scoring batches (never the test split).
"""

from __future__ import annotations

import abc
import itertools
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..cost import COST_METRICS
from ..errors import WidthSearchError
from ..space import WidthConfig
from .bn import bn_modules, bn_state, load_bn_state
from .distributed import is_distributed
from .nsga2_proposer import NSGA2Proposer
from .proposers import (
    JoslimProposer,
    RandomProposer,
    WidthEncoder,
    WidthOptimizer,
    classifier_inputs,
)
from .strategies import (
    STRATEGIES,
    Strategy,
    _check_bool,
    _check_int,
    _check_positive,
)

log = logging.getLogger("widthsearch.joslim")

__all__ = ["Joslim", "Slim", "TwoStage", "history_widths", "rescore"]


def _check_lo(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise WidthSearchError(f"option lo must be a number in (0, 1], got {value!r}")
    return float(value)


def rescore(net: nn.Module, configs: Iterable[Mapping[str, int]], x: torch.Tensor,
            y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every config on one batch, without gradients, with batch statistics
    in the norms and no dropout; the BN running statistics are restored afterwards."""
    from .bn import unwrap

    supernet = unwrap(net)
    snapshot = bn_state(supernet)
    modes = {m: m.training for m in supernet.modules()}
    losses = []
    try:
        supernet.eval()
        for _, module, _ in bn_modules(supernet):
            module.training = True  # batch statistics: the running ones mix every width
        with torch.no_grad(), supernet.activate(supernet.config, supernet.choice):
            for cfg in configs:
                supernet.activate(cfg, None)
                losses.append(F.cross_entropy(net(x).float(), y))
    finally:
        for m, mode in modes.items():
            m.training = mode
        load_bn_state(supernet, snapshot)
    if not losses:
        return torch.zeros(0, device=x.device)
    return torch.stack(losses)


class _HistoryStrategy(Strategy):
    """The shared loop of Joslim and its baselines (see the module docstring)."""

    defaults: ClassVar[dict[str, Any]] = {
        "M": 2, "tau": None, "widths_total": 1000, "tau_min": 10, "lo": 0.42, "cost": "macs",
        "keep_last_full": True, "distill": True, "temperature": 1.0, "seed": 0,
    }

    def _validate(self) -> None:
        o = self.options
        self.M = _check_int("M", o["M"], 1)
        self.tau_option = None if o["tau"] is None else _check_int("tau", o["tau"], 1)
        self.widths_total = _check_int("widths_total", o["widths_total"], 1)
        self.tau_min = _check_int("tau_min", o["tau_min"], 1)
        self.lo = _check_lo(o["lo"])
        if not isinstance(o["cost"], str) or not o["cost"]:
            raise WidthSearchError(f"option cost must name a cost of the cost model "
                                   f"({', '.join(COST_METRICS)}, or latency once a table is "
                                   f"attached), got {o['cost']!r}")
        self.cost_metric = str(o["cost"])
        self.keep_last_full = _check_bool("keep_last_full", o["keep_last_full"])
        self.distill = _check_bool("distill", o["distill"])
        self.temperature = _check_positive("temperature", o["temperature"])
        self.seed = _check_int("seed", o["seed"], 0)
        self.tau = self.tau_option or self.tau_min
        self.steps = 0
        self.current: list[WidthConfig] = []
        self.proposer: WidthOptimizer | None = None
        self.encoder: WidthEncoder | None = None
        self._pending_state: Mapping[str, Any] | None = None
        self._val: Any = None

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, *, total_steps: int, val: Any = None) -> None:
        """Called by the Trainer: the run's length (sets tau so that about `widths_total`
        widths are sampled, at least `tau_min` steps apart) and the VAL loader."""
        if self.tau_option is None:
            self.tau = max(self.tau_min, math.floor(total_steps * self.M / self.widths_total))
        self._val = val

    def _setup(self, supernet: Any) -> None:
        if self.proposer is not None:
            return
        keep = classifier_inputs(supernet) if self.keep_last_full else []
        self.encoder = WidthEncoder(supernet.space, self.lo, keep)
        model, metric = supernet.cost_model, self.cost_metric
        try:  # an unknown cost fails here, before any training
            model.evaluate(self.encoder.full()[None, :], metric)
        except KeyError:
            raise WidthSearchError(f"unknown cost {metric!r}; known: "
                                   f"{', '.join(COST_METRICS)}") from None
        self.proposer = self.make_proposer(self.encoder,
                                            lambda w: model.evaluate(w, metric))
        if self._pending_state is not None:
            self._load(self._pending_state)
            self._pending_state = None

    @abc.abstractmethod
    def make_proposer(self, encoder: WidthEncoder, cost_fn: Any) -> WidthOptimizer:
        """The proposer of this strategy's widths: any `WidthOptimizer` (a subclass that
        returns its own, a pymoo algorithm behind ask / tell say, trains its widths)."""

    def smallest(self) -> WidthConfig:
        assert self.encoder is not None
        return self.encoder.configs(self.encoder.smallest()[None, :])[0]

    # -- the step ----------------------------------------------------------------------------
    def _step(self, net, supernet, x, y, loss_fn, generator, reduce_mean):  # type: ignore[no-untyped-def]
        self._setup(supernet)
        self._update(net, supernet, generator, reduce_mean)
        loss_max, teacher = self._train(net, supernet, supernet.space.max(), None, x, y, loss_fn)
        opts = {"teacher": teacher if self.distill else None, "temperature": self.temperature}
        losses = [self._train(net, supernet, cfg, None, x, y, loss_fn, **opts)[0]
                  for cfg in self.current]
        loss_min, _ = self._train(net, supernet, self.smallest(), None, x, y, loss_fn, **opts)
        self.last_config = self.current[-1]
        self.steps += 1
        return {"loss": float(loss_max), "loss_min": float(loss_min),
                "loss_widths": float(torch.stack(losses).mean())}

    @abc.abstractmethod
    def _update(self, net: nn.Module, supernet: Any, generator: torch.Generator,
                reduce_mean: Any) -> None:
        """Choose `self.current`, the widths this step trains (and update the history)."""

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"name": self.name, "steps": self.steps, "tau": self.tau,
                 "current": [c.to_dict() for c in self.current]}
        if self.proposer is not None:
            state["proposer"] = self.proposer.state_dict()
        elif self._pending_state is not None:
            state["proposer"] = self._pending_state.get("proposer")
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps, self.tau = int(state["steps"]), int(state["tau"])
        self.current = [WidthConfig(c) for c in state["current"]]
        if self.proposer is None:
            self._pending_state = state  # applied once the supernet is known
        else:
            self._load(state)

    def _load(self, state: Mapping[str, Any]) -> None:
        assert self.proposer is not None
        if state.get("proposer") is not None:
            self.proposer.load_state_dict(state["proposer"])


class Joslim(_HistoryStrategy):
    """Joslim (see the module docstring). Options: M new widths every tau steps (tau None:
    about `widths_total` widths over the run, at least `tau_min` steps apart), the first
    `prior_points` proposals one-multiplier widths, b / beta the scalarization's ideal point
    and confidence width, lo the smallest multiplier, cost "macs" | "params" | "memory";
    proposer "bo" (the Bayesian optimizer) or, with the same training and re-scoring,
    "nsga2" (pymoo's NSGA-II, generations of `population` widths), "random" (per-group
    widths) or "uniform" (one multiplier)."""

    name = "joslim"
    defaults: ClassVar[dict[str, Any]] = {
        **_HistoryStrategy.defaults, "prior_points": 20, "b": -3.0, "beta": 0.1,
        "proposer": "bo", "population": 16,
    }
    proposers: ClassVar[tuple[str, ...]] = ("bo", "nsga2", "random", "uniform")

    def _validate(self) -> None:
        super()._validate()
        o = self.options
        self.prior_points = _check_int("prior_points", o["prior_points"], 0)
        if isinstance(o["b"], bool) or not isinstance(o["b"], (int, float)):
            raise WidthSearchError(f"option b must be a number, got {o['b']!r}")
        self.b = float(o["b"])
        self.beta = _check_positive("beta", o["beta"])
        if o["proposer"] not in self.proposers:
            raise WidthSearchError(f"option proposer must be one of {', '.join(self.proposers)},"
                                   f" got {o['proposer']!r}")
        self.proposer_name = str(o["proposer"])
        self.population = _check_int("population", o["population"], 2)
        self.updates = 0

    def make_proposer(self, encoder: WidthEncoder, cost_fn: Any) -> WidthOptimizer:
        if self.proposer_name == "nsga2":
            return NSGA2Proposer(encoder, cost_fn, population=self.population, seed=self.seed)
        if self.proposer_name != "bo":
            return RandomProposer(encoder, cost_fn, uniform=self.proposer_name == "uniform",
                                  seed=self.seed)
        return JoslimProposer(encoder, cost_fn, prior_points=self.prior_points, b=self.b,
                              beta=self.beta, seed=self.seed)

    def _update(self, net: nn.Module, supernet: Any, generator: torch.Generator,
                reduce_mean: Any) -> None:
        if self.steps % self.tau and self.current:
            return
        assert self.proposer is not None
        if self._val is None:
            raise WidthSearchError("the joslim strategy re-scores widths on val batches: "
                                   "call strategy.attach(total_steps=..., val=loader) first")
        history = list(dict.fromkeys([*self.proposer.history, *self.current]))
        if history:
            x, y = self._val_batch(net)
            losses = reduce_mean(rescore(net, history, x, y))
            self.proposer.tell(history, losses.cpu().double().tolist())
        self.current = self._broadcast(self.proposer.ask(self.M) if _rank() == 0 else [],
                                       net, supernet)
        self.updates += 1

    def _val_batch(self, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch (updates * world + rank) of the val loader: fresh at every update, and a
        different one on every rank (their losses are averaged)."""
        count = len(self._val)
        if count == 0:
            raise WidthSearchError("the joslim strategy needs a non-empty val split")
        world = dist.get_world_size() if is_distributed() else 1
        k = (self.updates * world + _rank()) % count
        x, y = next(itertools.islice(iter(self._val), k, None))
        device = next(net.parameters()).device
        return x.to(device), y.to(device)

    def _broadcast(self, configs: list[WidthConfig], net: nn.Module,
                   supernet: Any) -> list[WidthConfig]:
        """Rank 0's proposals on every rank (widths as one int64 tensor, no pickling)."""
        if not is_distributed():
            return configs
        space = supernet.space
        device = next(net.parameters()).device
        if configs:
            w = torch.as_tensor(np.stack([space.to_vector(c) for c in configs]), device=device)
        else:
            w = torch.zeros((self.M, len(space)), dtype=torch.int64, device=device)
        dist.broadcast(w, src=0)
        return [space.from_vector(row) for row in w.cpu().numpy()]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates = int(state["updates"])


class _RandomHistory(_HistoryStrategy):
    """M fresh random widths every step, drawn from the step's shared generator (so every
    rank draws the same); the widths of every tau-th step join the history, unscored."""

    uniform: ClassVar[bool] = True

    def make_proposer(self, encoder: WidthEncoder, cost_fn: Any) -> WidthOptimizer:
        return RandomProposer(encoder, cost_fn, uniform=self.uniform, seed=self.seed)

    def _update(self, net: nn.Module, supernet: Any, generator: torch.Generator,
                reduce_mean: Any) -> None:
        assert self.proposer is not None
        self.current = self.proposer.ask(self.M, generator=generator)
        if self.steps % self.tau == 0:
            self.proposer.tell(self.current, [float("nan")] * len(self.current))


class Slim(_RandomHistory):
    """Conventional slimmable training: full, smallest and M one-multiplier widths per step
    with in-place distillation (US-Nets' sandwich rule)."""

    name = "slim"
    uniform = True


class TwoStage(_RandomHistory):
    """Random per-group widths during training (BigNAS-style sandwich with distillation);
    the widths are searched after training (`widthsearch slimmable`)."""

    name = "two-stage"
    uniform = False


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def history_widths(state: Mapping[str, Any], groups: int) -> np.ndarray:
    """The (n, groups) widths, in space order, of the history of a saved joslim / slim /
    two-stage strategy state (empty if it holds none)."""
    proposer = state.get("proposer") or {}
    return np.asarray(proposer.get("widths", []), dtype=np.int64).reshape(-1, groups)


STRATEGIES.update({cls.name: cls for cls in (Joslim, Slim, TwoStage)})
