"""Training strategies: which widths one step trains, and with which losses.

A Strategy is the research logic of supernet training, kept apart from the loop (Lightning's
split): the Trainer zeroes the gradients, calls `strategy.step(net, x, y, ...)`, then steps
the optimizer. `step` runs the forward and backward of every width of the step; gradients
accumulate in the parameters.

Gradient scaling (the same for every strategy): each width's loss is its batch mean, and the
gradients of the widths of one step are *summed* (as US-Nets, BigNAS and Joslim do), so
adding a width to a step adds its gradient at full weight. The two sides of BCNet's
bilateral pair count as one width (0.5 each).

Distributed training: every rank gets the same `generator` state, so every rank samples the
same widths; `net` may be the DistributedDataParallel wrapper (forwards go through it, the
Supernet inside is found by `unwrap`). Any decision that depends on data (CafeNet's min-min
pick) is taken on losses averaged across ranks with `reduce_mean`, so ranks agree.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import WidthSearchError
from ..patterns import Bilateral, LocallyFree
from ..space import WidthConfig, WidthSpace
from .bn import bn_state, load_bn_state, unwrap
from .distill import distill_loss
from .samplers import PerGroupWidths, WidthSampler

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ReduceMean = Callable[[torch.Tensor], torch.Tensor]


def identity(t: torch.Tensor) -> torch.Tensor:
    """The single-process `reduce_mean`."""
    return t


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise WidthSearchError(f"option {name} must be true or false, got {value!r}")
    return value


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise WidthSearchError(f"option {name} must be an integer >= {low}, got {value!r}")
    return value


def _check_ratio(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise WidthSearchError(f"option {name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise WidthSearchError(f"option {name} must be a positive number, got {value!r}")
    return float(value)


class Strategy(abc.ABC):
    """Base class. Subclasses set `name` and `defaults` (option -> default value) and
    implement `_step`; options are validated by `_validate` into attributes."""

    name: ClassVar[str] = "strategy"
    needs_pattern: ClassVar[tuple[type, str] | None] = None  # the pattern class it needs, named
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise WidthSearchError(
                f"unknown option(s) {', '.join(unknown)} for strategy {self.name!r}; "
                f"its options: {', '.join(self.defaults) or 'none'}"
            )
        self.options: dict[str, Any] = {**self.defaults, **options}
        self._validate()
        self.last_config: WidthConfig | None = None
        self.sampler: WidthSampler = PerGroupWidths()
        """Where the random widths aim (train.sampler); the Trainer sets it."""
        self.trained: list[WidthConfig] = []
        """Every width config trained since the caller last cleared it (for cost records)."""

    def _validate(self) -> None:  # noqa: B027  (optional hook: a strategy without options)
        """Check `self.options` and copy them into attributes."""

    def check(self, net: nn.Module) -> None:
        """Raise WidthSearchError if this strategy cannot train `net` (the wrong pattern)."""
        pattern = unwrap(net).pattern
        if self.needs_pattern is not None and not isinstance(pattern, self.needs_pattern[0]):
            raise WidthSearchError(
                f"the {self.name} strategy needs the {self.needs_pattern[1]} pattern "
                f"(pattern={self.name!r}), but the supernet uses {pattern!r}"
            )

    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: LossFn,
             generator: torch.Generator, reduce_mean: ReduceMean = identity) -> dict[str, float]:
        """Forward and backward every width of one training step; returns metrics.

        Metrics always hold "loss" (the max width's loss, or the step's first width when it
        trains no max width); the widths stay as they were after the step.
        """
        self.check(net)
        supernet = unwrap(net)
        with supernet.activate(supernet.config, supernet.choice):
            return self._step(net, supernet, x, y, loss_fn, generator, reduce_mean)

    @abc.abstractmethod
    def _step(self, net: nn.Module, supernet: Any, x: torch.Tensor, y: torch.Tensor,
              loss_fn: LossFn, generator: torch.Generator,
              reduce_mean: ReduceMean) -> dict[str, float]:
        """The strategy's own forwards and backwards, run by `step` inside its width guard."""

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (plain Python values, safe for torch.load(weights_only=True))."""
        return {"name": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise WidthSearchError(
                f"strategy state is for {state.get('name')!r}, not {self.name!r}"
            )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    # -- shared pieces -------------------------------------------------------------------
    def _validate_sampling(self) -> None:
        """Check `uniform` and `min_ratio`, the options every strategy passes to `_sample`."""
        o = self.options
        self.uniform = _check_bool("uniform", o["uniform"])
        self.min_ratio = _check_ratio("min_ratio", o["min_ratio"])

    def _validate_distill_sampling(self) -> None:
        """Check `distill`, the sampling options and `temperature`, in that order: the
        distilling strategies share them, so each is checked (and worded) in one place."""
        self.distill = _check_bool("distill", self.options["distill"])
        self._validate_sampling()
        self.temperature = _check_positive("temperature", self.options["temperature"])

    def _train_max(self, net: nn.Module, supernet: Any, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: LossFn, metrics: dict[str, float]) -> torch.Tensor:
        """Train the max width, whose loss is the step's `loss`; its logits can teach."""
        loss_max, logits = self._train(net, supernet, supernet.space.max(), None, x, y, loss_fn)
        metrics["loss"] = float(loss_max)
        return logits

    def _train(self, net: nn.Module, supernet: Any, config: WidthConfig, choice: Any,
               x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
               teacher: torch.Tensor | None = None, weight: float = 1.0,
               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward one width; returns (its loss, its logits), both detached.

        With a teacher the trained loss is the distillation loss; the reported loss is then
        still the label loss of the same logits (comparable across widths and strategies).
        """
        supernet.activate(config, choice)
        self.trained.append(supernet.config)
        logits = net(x)
        label_loss = loss_fn(logits, y)
        trained = label_loss if teacher is None else distill_loss(logits, teacher, temperature)
        (trained * weight).backward()
        return label_loss.detach(), logits.detach()


    def _sample(self, space: WidthSpace, generator: torch.Generator) -> WidthConfig:
        """A random config: one ratio for all groups (`uniform`), or the sampler's draw."""
        return _sample(space, generator, self.uniform, self.min_ratio, self.sampler)


def _sample(space: WidthSpace, generator: torch.Generator, same_ratio: bool,
            min_ratio: float | None, sampler: WidthSampler | None = None) -> WidthConfig:
    """A random config: one ratio for all groups, or each group's width drawn on its own;
    `sampler` (per-group widths by default) says where either aims."""
    sampler = sampler or PerGroupWidths()
    if not same_ratio:
        return sampler.sample(space, generator)
    low = _smallest_ratio(space) if min_ratio is None else min_ratio
    return sampler.sample_uniform(space, generator, low)


def _smallest_ratio(space: WidthSpace) -> float:
    groups = space.searchable
    return min((g.choices[0] / g.size for g in groups), default=1.0)


class Sandwich(Strategy):
    """US-Nets / BigNAS sandwich rule: max, min and `n` random widths per step.

    The max width learns from the labels; the others (with `distill`) from its detached
    logits (in-place distillation). `uniform`: True samples one width multiplier r in
    [min_ratio, 1] for all groups (slimmable networks), False samples every group's width
    on its own (BigNAS). `min_ratio` None: the space's smallest ratio. The leftmost
    assignment (choice None) is trained, whatever the supernet's pattern.
    """

    name = "sandwich"
    defaults: ClassVar[dict[str, Any]] = {
        "n": 2, "distill": True, "uniform": True, "min_ratio": None, "temperature": 1.0,
    }

    def _validate(self) -> None:
        self.n = _check_int("n", self.options["n"], 0)
        self._validate_distill_sampling()

    def _step(self, net, supernet, x, y, loss_fn, generator, reduce_mean):  # type: ignore[no-untyped-def]
        space = supernet.space
        loss_max, teacher = self._train(net, supernet, space.max(), None, x, y, loss_fn)
        teacher = teacher if self.distill else None
        opts = {"teacher": teacher, "temperature": self.temperature}
        loss_min, _ = self._train(net, supernet, space.min(), None, x, y, loss_fn, **opts)
        randoms = []
        for _ in range(self.n):
            cfg = self._sample(space, generator)
            randoms.append(self._train(net, supernet, cfg, None, x, y, loss_fn, **opts)[0])
            self.last_config = cfg
        metrics = {"loss": float(loss_max), "loss_min": float(loss_min)}
        if randoms:
            metrics["loss_random"] = float(torch.stack(randoms).mean())
        return metrics


class SinglePath(Strategy):
    """Single path: one random width per step (per-group sampling, or one ratio with
    `uniform`); `random_choice` also draws a random pattern assignment. (Not the uniform
    width-multiplier baseline of the papers: that is a plain model trained at one width.)"""

    name = "single-path"
    defaults: ClassVar[dict[str, Any]] = {"uniform": False, "min_ratio": None,
                                          "random_choice": False}

    def _validate(self) -> None:
        self._validate_sampling()
        self.random_choice = _check_bool("random_choice", self.options["random_choice"])

    def _step(self, net, supernet, x, y, loss_fn, generator, reduce_mean):  # type: ignore[no-untyped-def]
        cfg = self._sample(supernet.space, generator)
        choice = supernet.sample_choice(cfg, generator) if self.random_choice else None
        loss, _ = self._train(net, supernet, cfg, choice, x, y, loss_fn)
        self.last_config = cfg
        return {"loss": float(loss)}


class ForwardRng:
    """The global RNG state (CPU, and the CUDA device's when the data is there) captured
    once, to replay before each of several forwards: dropout masks, stochastic depth and
    any other forward randomness are then the same in every one of them."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device if device.type == "cuda" else None
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda is not None and self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.cuda)


class CafeNet(Strategy):
    """CafeNet min-min training (locally free pattern).

    Per step: (with `max_width_step`) train the max width; sample a width config c; evaluate
    K candidate assignments of its free channels without gradients (the leftmost one, choice
    None, is always candidate 0; the others come from `net.sample_choice`; duplicates are
    dropped); average their losses across ranks with `reduce_mean` (called once, on the
    stacked candidate losses); backpropagate only the lowest (ties: the earliest). The
    global RNG state is captured once and replayed before every candidate and before the
    trained pass, so all of them see the same dropout masks: the loss compared is the loss
    backpropagated. The loss
    compared is the loss trained: the distillation loss with `distill`, else the label loss.
    Candidate forwards run in train mode (batch statistics, like the trained forward) and
    leave the BN running statistics untouched.

    Metrics: "loss", "loss_min" (the winner's label loss), "loss_leftmost", "winner" (the
    candidate index), "candidates". `last_candidates` / `last_losses` keep the last step's
    candidates (config, choice) and their reduced losses, for inspection.
    """

    name = "cafenet"
    needs_pattern = (LocallyFree, "locally free")
    defaults: ClassVar[dict[str, Any]] = {
        "K": 3, "max_width_step": True, "distill": False, "uniform": False, "min_ratio": None,
        "temperature": 1.0,
    }

    def _validate(self) -> None:
        o = self.options
        self.K = _check_int("K", o["K"], 1)
        self.max_width_step = _check_bool("max_width_step", o["max_width_step"])
        self._validate_distill_sampling()
        self.last_candidates: list[tuple[WidthConfig, dict[str, int]]] = []
        self.last_losses: list[float] = []

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                   teacher: torch.Tensor | None) -> torch.Tensor:
        if teacher is None:
            return loss_fn(logits, y)
        return distill_loss(logits, teacher, self.temperature)

    def _step(self, net, supernet, x, y, loss_fn, generator, reduce_mean):  # type: ignore[no-untyped-def]
        space = supernet.space
        metrics: dict[str, float] = {}
        teacher = None
        if self.max_width_step:
            teacher = self._train_max(net, supernet, x, y, loss_fn, metrics)
        elif self.distill:
            with torch.no_grad():
                supernet.activate(space.max(), None)
                teacher = net(x)
        teacher = teacher if self.distill else None

        cfg = self._sample(space, generator)
        candidates: list[dict[str, int]] = [{}]
        for _ in range(self.K - 1):  # always K-1 draws: the generator advances the same way
            pick = {k: v for k, v in supernet.sample_choice(cfg, generator).items() if v}
            if pick not in candidates:
                candidates.append(pick)

        snapshot = bn_state(supernet)
        rng = ForwardRng(x.device)  # every candidate and the trained pass: the same masks
        losses = []
        with torch.no_grad():
            for pick in candidates:
                rng.replay()
                supernet.activate(cfg, pick)
                losses.append(self._objective(net(x), y, loss_fn, teacher).detach())
        load_bn_state(supernet, snapshot)  # candidates must not move the running statistics
        reduced = reduce_mean(torch.stack(losses).float())
        winner = int(torch.argmin(reduced))

        rng.replay()
        loss_min, _ = self._train(net, supernet, cfg, candidates[winner], x, y, loss_fn,
                                  teacher=teacher, temperature=self.temperature)
        self.last_config = cfg
        self.last_candidates = [(cfg, dict(p)) for p in candidates]
        self.last_losses = [float(v) for v in reduced]
        metrics.setdefault("loss", float(loss_min))
        metrics.update(loss_min=float(loss_min), loss_leftmost=float(losses[0]),
                       winner=float(winner), candidates=float(len(candidates)))
        return metrics


def complementary(space: WidthSpace, config: Mapping[str, int]) -> WidthConfig:
    """Per group n - c (the full width's complement is the full width), snapped to the
    nearest allowed width (ties: the wider) when n - c is not allowed."""
    out = {}
    for g in space.groups:
        c = config[g.name]
        target = g.size if c >= g.size else g.size - c
        out[g.name] = min(g.choices, key=lambda w, t=target: (abs(w - t), -w))
    return WidthConfig(out)


def balanced_space(space: WidthSpace, include_full: bool) -> WidthSpace:
    """The widths c of each group whose complement n - c is allowed too (plus n itself with
    `include_full`: the full width uses every channel, so it stays balanced on its own).

    A bilateral pair at c uses channel i once if i < c and once if i >= n - c; with the pair
    at n - c the two steps use every channel exactly twice of four passes. Training only such
    pairs keeps every channel's usage at exactly 0.5; a width whose complement is not allowed
    (above n minus the smallest width) would leave the middle channels under-trained. A group
    with no such width keeps all its widths (its complements are then snapped).
    """
    choices = {}
    for g in space.searchable:
        allowed = set(g.choices)
        keep = [w for w in g.choices if w < g.size and g.size - w in allowed]
        if include_full:
            keep.append(g.size)
        if keep:
            choices[g.name] = keep
    return space.with_choices(choices)


class BCNet(Strategy):
    """BCNet bilateral training (bilateral pattern).

    Per step a width config c is trained with its left channels (choice 0) and its right
    channels (choice 1), loss 0.5 each; the next step trains the complementary config (per
    group n - c), then a fresh random one, and so on. c is drawn from `balanced_space`, so
    every complement is exact and every channel is trained equally often (usage 0.5 per
    bilateral pass). With `max_width_step` the max width is trained too (and with `distill`
    the bilateral pair learns from its logits); without it the full width is one of the
    widths a pair may take.
    """

    name = "bcnet"
    needs_pattern = (Bilateral, "bilateral")
    defaults: ClassVar[dict[str, Any]] = {
        "max_width_step": True, "distill": False, "uniform": False, "min_ratio": None,
        "temperature": 1.0,
    }

    def _validate(self) -> None:
        self.max_width_step = _check_bool("max_width_step", self.options["max_width_step"])
        self._validate_distill_sampling()
        if self.distill and not self.max_width_step:
            raise WidthSearchError("bcnet: distill needs max_width_step (the max width teaches)")
        self.pending: WidthConfig | None = None
        self._balanced: tuple[WidthSpace, WidthSpace] | None = None

    def _pair_space(self, space: WidthSpace) -> WidthSpace:
        if self._balanced is None or self._balanced[0] is not space:
            self._balanced = (space, balanced_space(space, not self.max_width_step))
        return self._balanced[1]

    def _step(self, net, supernet, x, y, loss_fn, generator, reduce_mean):  # type: ignore[no-untyped-def]
        space = supernet.space
        metrics: dict[str, float] = {}
        teacher = None
        if self.max_width_step:
            logits = self._train_max(net, supernet, x, y, loss_fn, metrics)
            teacher = logits if self.distill else None
        if self.pending is not None:
            cfg, self.pending = space.validate(self.pending), None
        else:
            pairs = self._pair_space(space)
            cfg = space.validate(self._sample(pairs, generator))
            self.pending = complementary(pairs, cfg)
        opts = {"teacher": teacher, "weight": 0.5, "temperature": self.temperature}
        left, _ = self._train(net, supernet, cfg, 0, x, y, loss_fn, **opts)
        right, _ = self._train(net, supernet, cfg, 1, x, y, loss_fn, **opts)
        self.last_config = cfg
        metrics.setdefault("loss", float(0.5 * (left + right)))
        metrics.update(loss_left=float(left), loss_right=float(right))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        pending = None if self.pending is None else self.pending.to_dict()
        return {"name": self.name, "pending": pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        pending = state.get("pending")
        self.pending = None if pending is None else WidthConfig(pending)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Sandwich, CafeNet, BCNet, SinglePath)
}
RENAMED = {"uniform": "single-path"}
"""Old strategy names -> their new names (an old name is an error that says the new one)."""


def build_strategy(name: str, **options: Any) -> Strategy:
    """The strategy registered as `name` with `options` (unknown names / options raise)."""
    if name in RENAMED:
        raise WidthSearchError(
            f"the strategy {name!r} is now called {RENAMED[name]!r} (it trains one random "
            f"width per step, not the uniform width multiplier); use strategy.name="
            f"{RENAMED[name]}")
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise WidthSearchError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        ) from None
    return cls(**options)
