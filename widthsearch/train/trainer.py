"""The training loop: data, supernet, optimizer, schedule, checkpoints, devices, ranks.

The research logic (which widths a step trains, with which losses) lives in a Strategy
(`strategies.py`); the Trainer owns everything around it (Lightning's split):

    per step:  seed a generator with (seed, step)   -> every rank draws the same widths
               zero grads; strategy.step(...)        -> forward + backward of all its widths
               average grads and BN stats over ranks -> (no DDP wrapper: see distributed.py)
               clip, optimizer step, LR schedule step (cosine after a linear warm-up)
    per log step:   a "train" record in metrics.jsonl (and TensorBoard if installed)
    every N steps:  an atomic checkpoint (model, optimizer, scheduler, strategy, RNGs,
                    data position) that loads with torch.load(weights_only=True)
    per epoch:      val loss / accuracy at the max, middle and min widths, scored as
                    search scores them (`evaluate.Evaluator`: BN recalibration on clean
                    training images, per-pattern assignments; BN buffers restored
                    afterwards; the configs sharded over ranks), an "epoch" record and
                    a checkpoint

A run killed at any point resumes from its newest checkpoint with `Trainer.resume(run_dir)`
and ends with exactly the weights of an uninterrupted run (DESIGN invariant 5). Ctrl-C (or
SIGTERM) stops at the next step boundary, saves a checkpoint and raises
`TrainingInterrupted`; a second Ctrl-C aborts at once. The test split is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..build import build_run_data, build_supernet, write_space
from ..config import RunConfig, load_config
from ..data import DataBundle
from ..errors import CheckpointError, NumericsError, RunError, WidthSearchError
from ..evaluate import Evaluator
from ..runs import RunDir, capture_rng_state, config_identity, restore_rng_state
from ..seeds import SEED_STEP, derive_seed
from ..space import WidthConfig
from ..supernet import Supernet
from .costs import TrainedCosts
from .distributed import (
    DistInfo,
    all_reduce_mean,
    average_buffers,
    average_gradients,
    barrier,
    broadcast_module,
    init_distributed,
)
from .numerics import non_finite_report
from .outputs import AuxLoss, MainLogits
from .samplers import build_sampler
from .strategies import build_strategy, identity

__all__ = [
    "EVAL_WIDTHS", "FitResult", "Trainer", "TrainingInterrupted", "build_optimizer",
    "build_scheduler", "derive_seed", "lr_factor", "step_generator",
]

CHECKPOINT_FORMAT = 2
EVAL_WIDTHS = ("max", "mid", "min")
"""The widths evaluated after every epoch: full, every group near half, every group minimal."""
RESUME_OVERRIDABLE = {
    "train.device", "train.amp", "train.channels_last", "train.threads", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.keep_checkpoints", "train.eval_recal_batches",
    "train.eval_max_batches", "data.root", "data.workers",
}
"""Settings a resumed run may change: they do not change what the run computes."""
RESUME_ADJUSTABLE = {"optim.lr", "optim.grad_clip"}
"""Settings a resumed run may change on purpose (after a divergence, say): the new value
applies from the resumed step on, config.yaml keeps it and metrics.jsonl records the change
("config_change"). Every other setting changes what the steps so far meant."""
_CHECKPOINT_KEYS = ("format", "step", "total_steps", "identity", "model", "optimizer",
                    "scheduler", "strategy", "train_loader", "rng")

# ------------------------------------------------------------------------------ seeds, schedule


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step `step`: the same on every rank and after a resume."""
    return torch.Generator().manual_seed(derive_seed(seed, SEED_STEP, step))


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base LR at `step`: linear warm-up to 1, then cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(net: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on norms and biases (ndim <= 1)."""
    o = config.optim
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                               nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps))


# ------------------------------------------------------------------------------ results


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped training at a step boundary after saving a checkpoint."""

    def __init__(self, run_dir: Path | None, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted at step {step}")
        self.run_dir, self.step, self.checkpoint = run_dir, step, checkpoint


@dataclasses.dataclass
class FitResult:
    """Where training stands after `fit` returns."""

    run_dir: Path | None
    step: int
    total_steps: int
    epoch: int
    finished: bool
    val: dict[str, dict[str, float]]
    """Last evaluation: width label ("max"/"mid"/"min") -> loss, accuracy, macs, macs_ratio."""
    train_loss: list[float]
    """Mean training loss (the strategy's "loss" metric) of every finished epoch."""
    steps_per_second: float
    checkpoint: Path | None


class _NoTestSplit:
    """Stands in for the test loader inside the trainer: training must never read it."""

    def __iter__(self) -> Iterator[Any]:
        raise WidthSearchError("the test split is reserved for the final report "
                               "(DESIGN invariant 4); training and search use val")

    def __len__(self) -> int:
        return 0


class _Precision:
    """Mixed precision where the device has it: CUDA bf16, else fp16 with loss scaling.

    Strategies run their own backward passes, so fp16 loss scaling cannot scale "the loss";
    it scales the gradient flowing into the network's output instead (every parameter
    gradient passes through it, so the effect is the same), via a forward hook.
    """

    def __init__(self, enabled: bool, device: torch.device, net: nn.Module) -> None:
        self.dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.device = device
        if enabled and device.type != "cuda":
            warnings.warn("train.amp is ignored on CPU: mixed precision runs on CUDA only",
                          stacklevel=3)
        elif enabled:
            if torch.cuda.is_bf16_supported():
                self.dtype = torch.bfloat16
            else:
                self.dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")
                net.register_forward_hook(self._scale_output_grad)

    def _scale_output_grad(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.scaler is not None and isinstance(output, torch.Tensor) and output.requires_grad:
            scaler = self.scaler
            output.register_hook(lambda g: scaler.scale(g.float()))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scaler is None else dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class _StopFlag:
    """Turns the first SIGINT / SIGTERM into a request to stop at the next step boundary."""

    def __init__(self, console: Console, is_main: bool) -> None:
        self.requested = False
        self.console, self.is_main = console, is_main
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.is_main:
            self.console.print("[yellow]stopping after this step and saving a checkpoint "
                               "(press Ctrl-C again to abort without saving)[/yellow]")

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class _Window:
    """Running means of step metrics since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, metrics: Mapping[str, float], images: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def images_per_second(self) -> float:
        return self.images / max(1e-9, time.perf_counter() - self.start)


# ------------------------------------------------------------------------------ the trainer


class Trainer:
    """Trains one supernet as `config` says, writing into `run_dir` (rank 0 only).

    Args:
        config: a RunConfig, or a dict / YAML path for `load_config`.
        run_dir: a new run directory (refused if it already holds a run: use `resume`);
            None trains without writing anything (no checkpoints, no metrics).
        dist: this process's rank and device (default: `init_distributed(train.device)`,
            which joins the torchrun job if there is one).
        console: where progress and summaries go (rank 0 only).
        progress: show the progress bar (default: when the console is a terminal).
        build_net: builds the supernet from (config, data) instead of `build.build_supernet`
            (finishing trains an exported subnet this way); give the same one to `resume`.
    """

    def __init__(self, config: RunConfig | Mapping[str, Any] | str | Path,
                 run_dir: str | Path | None = None, *, dist: DistInfo | None = None,
                 console: Console | None = None, progress: bool | None = None,
                 build_net: Callable[[RunConfig, DataBundle], Supernet] | None = None,
                 _existing: RunDir | None = None) -> None:
        self.config = config if isinstance(config, RunConfig) else load_config(config)
        cfg = self.config
        if (run_dir is not None and _existing is None and RunDir(run_dir).config_path.exists()
                and not RunDir(run_dir).is_unstarted()):
            raise RunError(f"{run_dir} already holds a run; resume it (widthsearch "
                                   f"train --resume {run_dir}) or choose another directory")
        self.dist = dist if dist is not None else init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.console = console if console is not None else Console(stderr=True)
        self.show_progress = progress
        self.on_step: list[Callable[[Trainer, dict[str, float]], None]] = []
        """Called after every optimizer step with (trainer, step metrics); for tests/hooks."""
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        _seed_everything(cfg.train.seed)

        self._build_net = build_net
        self.data = self._build_data()
        self.net = self._build_supernet()
        self._evaluator: Evaluator | None = None
        self.strategy = build_strategy(cfg.strategy.name, **cfg.strategy.options)
        self.strategy.check(self.net)
        self.strategy.sampler = build_sampler(cfg.train.sampler, self.net.cost_model,
                                              self.net.space, budgets=cfg.train.budgets,
                                              metric=cfg.train.sampler_metric)
        self.trained_costs = TrainedCosts(self.net.cost_model, cfg.train.sampler_metric)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.net, cfg)
        self.steps_per_epoch = len(self.data.train)
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if hasattr(self.strategy, "attach"):  # strategies that re-score widths on val (joslim)
            self.strategy.attach(total_steps=self.total_steps, val=self.data.val)
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.warmup_steps)
        self.train_net = MainLogits(self.net)
        self.loss_fn = AuxLoss(nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                               self.train_net)
        self.precision = _Precision(cfg.train.amp, self.device, self.net)
        self.reduce_mean = all_reduce_mean if self.dist.distributed else identity

        self.step = 0
        self.finished = False
        self.val: dict[str, dict[str, float]] = {}
        self.last_checkpoint: Path | None = None
        self._epoch_losses: list[float] = []
        self._train_losses: list[float] = []
        self._disk_state: tuple[str, ...] = ()
        """The checkpoint files on disk when this trainer took the run: a fit refuses to
        write over a run another process moved on since."""

        if _existing is not None:
            self.run: RunDir | None = _existing
        elif run_dir is not None:
            self.run = RunDir.create(run_dir, cfg.to_dict(), rank=self.dist.rank)
            self.run.lock.acquire()
            if self.dist.is_main:
                write_space(self.run, self.net)  # what load_supernet reads back
            barrier()
        else:
            self.run = None
        self._tb = self._tensorboard()

    # -- construction ------------------------------------------------------------------------
    def _build_data(self) -> DataBundle:
        """The run's loaders on this rank's device (`build.build_run_data`); the test split
        is replaced by a guard that refuses to be read."""
        bundle = build_run_data(self.config, rank=self.dist.rank,
                                world_size=self.dist.world_size, device=self.device)
        return dataclasses.replace(bundle, test=_NoTestSplit())  # type: ignore[arg-type]

    def _build_supernet(self) -> Supernet:
        if self._build_net is not None:
            net = self._build_net(self.config, self.data)
        else:
            net = build_supernet(self.config, self.data, quiet=not self.dist.is_main)
        net.to(self.device)
        if self.config.train.channels_last:
            net.to(memory_format=torch.channels_last)
        broadcast_module(net)  # identical start on every rank (seeded alike anyway)
        return net

    def _tensorboard(self) -> Any:
        if self.run is None or not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run.path / "tensorboard"))

    # -- resume ------------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, *, overrides: Sequence[str] = (),
               dist: DistInfo | None = None, console: Console | None = None,
               progress: bool | None = None,
               build_net: Callable[[RunConfig, DataBundle], Supernet] | None = None) -> Trainer:
        """Rebuild the run in `run_dir` from its config.yaml and newest checkpoint.

        `overrides` may change only settings that do not change the computation
        (RESUME_OVERRIDABLE: device, threads, logging and checkpoint cadence, data root).
        A run without a checkpoint yet starts from step 0.
        """
        probe = RunDir.open(run_dir)
        allowed = RESUME_OVERRIDABLE | RESUME_ADJUSTABLE
        for text in overrides:
            key = text.partition("=")[0].strip()
            if key not in allowed:
                raise WidthSearchError(
                    f"cannot change {key} when resuming (it would change the run); allowed: "
                    + ", ".join(sorted(allowed)))
        original = load_config(probe.read_config())
        config = load_config(probe.read_config(), overrides)
        changes = {key: (old, new) for key in sorted(RESUME_ADJUSTABLE)
                   if (old := _get(original, key)) != (new := _get(config, key))}
        if dist is None:
            dist = init_distributed(config.train.device)
        run = RunDir.open(run_dir, rank=dist.rank)
        run.lock.acquire()
        try:
            trainer = cls(config, dist=dist, console=console, progress=progress,
                          build_net=build_net, _existing=run)
            latest = run.latest_checkpoint()
            if latest is None:
                if run.has_results():
                    raise RunError(
                        f"{run.path} has results (supernet.safetensors, an evaluated epoch "
                        "or exports) but its checkpoints are gone; refusing to train it "
                        "again over them: restore checkpoints/ or start a new run")
                run.metrics.truncate_after(0)
            else:
                run.load_checkpoint(accept=lambda state, path: trainer._accept(state, path))
                trainer._disk_state = trainer._checkpoint_names()
            if "optim.lr" in changes:
                trainer._set_base_lr(config.optim.lr)
            run.update_config(config.to_dict(), changes, trainer.step)
        except BaseException:
            run.lock.release()
            raise
        barrier()
        return trainer

    def _accept(self, state: Mapping[str, Any], path: Path) -> None:
        """Load `state` if it is a checkpoint of this run, else raise CheckpointError."""
        missing = [k for k in _CHECKPOINT_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a training "
                                  "checkpoint of this widthsearch version")
        if state["identity"] != self.identity():
            raise CheckpointError(f"{path} belongs to another run (its model, data or "
                                  "training settings differ from this run's config.yaml)")
        try:
            self.load_state(state)
        except WidthSearchError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:
            detail = " ".join(str(e).split())[:300]
            raise CheckpointError(f"{path} does not fit this run "
                                  f"({type(e).__name__}: {detail})") from None

    def identity(self) -> str:
        """The hash of this run's config without the settings a resume may change."""
        return config_identity(self.config.to_dict(), RESUME_OVERRIDABLE | RESUME_ADJUSTABLE)

    def _set_base_lr(self, lr: float) -> None:
        """A new base learning rate from the current step on (same schedule shape)."""
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * factor
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)

    def _checkpoint_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.run.list_checkpoints()) if self.run else ()

    def _advice(self) -> str:
        """What to do after non-finite values, as commands that work as printed."""
        lower = f"{self.config.optim.lr / 10:g}"
        if self.run is None:
            return f"Lower optim.lr (e.g. optim.lr={lower}) or set optim.grad_clip=1.0."
        newest = self.run.latest_checkpoint()
        if newest is None:
            return (f"No checkpoint was written yet; start again with a lower learning rate "
                    f"(--run-dir {self.run.path} can be reused): --set optim.lr={lower}")
        return (f"The last finite checkpoint is {newest.name}; continue from it with a lower "
                f"learning rate: widthsearch train --resume {self.run.path} --set "
                f"optim.lr={lower} (or --set optim.grad_clip=1.0)")

    def close(self) -> None:
        """Release the run directory for other processes (fit does so when it returns)."""
        if self.run is not None:
            while self.run.lock.held:
                self.run.lock.release()

    # -- state -------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.step // max(1, self.steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain values (weights_only-loadable)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": self.identity(),
            "step": self.step,
            "epoch": self.epoch,
            "total_steps": self.total_steps,
            "finished": self.finished,
            "world_size": self.dist.world_size,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "trained_costs": self.trained_costs.state_dict(),
            "scaler": self.precision.state_dict(),
            "train_loader": self.data.train.state_dict(),
            "rng": capture_rng_state(),
            "val": {k: dict(v) for k, v in self.val.items()},
            "epoch_losses": list(self._epoch_losses),
            "train_losses": list(self._train_losses),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()` (the RNGs last, so nothing after them draws)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise WidthSearchError(f"checkpoint format {state.get('format')!r} is not "
                                   f"{CHECKPOINT_FORMAT}; it was written by another version")
        if state["total_steps"] != self.total_steps:
            raise WidthSearchError(
                f"the checkpoint is from a run of {state['total_steps']} steps but this "
                f"config gives {self.total_steps}; resume with the run's own config")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.strategy.load_state_dict(state["strategy"])
        self.trained_costs.load_state_dict(state.get("trained_costs"))
        self.precision.load_state_dict(state.get("scaler"))
        self.data.train.load_state_dict(state["train_loader"])
        self.step = int(state["step"])
        self.finished = bool(state["finished"])
        self.val = {k: dict(v) for k, v in state.get("val", {}).items()}
        self._epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        self._train_losses = [float(v) for v in state.get("train_losses", [])]
        restore_rng_state(state["rng"])

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; other ranks return None)."""
        if self.run is None:
            return None
        problems = non_finite_report(self.net, self.optimizer)
        if problems:
            raise NumericsError(f"step {self.step}: non-finite {problems}; not saved. "
                                + self._advice())
        path = self.run.save_checkpoint(self.state_dict(), self.step,
                                        keep=self.config.train.keep_checkpoints)
        self._disk_state = self._checkpoint_names()
        self.last_checkpoint = path if path is not None else self.run.checkpoint_path(self.step)
        return path

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> FitResult:
        """Train until the configured epochs are done (or `max_steps` in total).

        Stopping at `max_steps` saves a checkpoint, so `resume` can continue the run.
        Raises TrainingInterrupted after Ctrl-C / SIGTERM (a checkpoint is saved first).
        """
        stop_at = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        start_step, start_time = self.step, time.perf_counter()
        if self.finished or self.step >= stop_at:
            self.close()
            return self._result(start_step, start_time)
        if self.run is None:
            return self._fit(stop_at, start_step, start_time)
        self.run.lock.acquire()
        try:
            on_disk = self._checkpoint_names()
            if self.dist.is_main and on_disk != self._disk_state:
                raise RunError(f"{self.run.path} changed since this trainer loaded it (another "
                               "process trained it); resume it again")
            for path in self.run.list_checkpoints():
                if _checkpoint_step(path) > self.step:  # skipped as unusable on resume
                    path.replace(path.with_name(path.name + ".unusable"))
            self.run.metrics.truncate_after(self.step)
            return self._fit(stop_at, start_step, start_time)
        finally:
            self.close()

    def _fit(self, stop_at: int, start_step: int, start_time: float) -> FitResult:
        is_main = self.dist.is_main
        if self.run is not None and is_main:
            self.run.metrics.log(kind="start", step=self.step, resumed=self.step > 0,
                                 world_size=self.dist.world_size, device=str(self.device))
        # A loader left mid-epoch (an earlier fit stopped at max_steps) would start a new
        # epoch on its next iteration; reloading its own state continues where it stopped.
        self.data.train.load_state_dict(self.data.train.state_dict())
        stop = _StopFlag(self.console, is_main)
        interrupted = False
        window = _Window()
        with stop, self._progress_bar() as bar:
            task = bar.add_task("train", total=self.total_steps, completed=self.step,
                                epoch=self.epoch + 1, loss=float("nan"), lr=self._lr(), ips=0.0)
            while self.step < stop_at and not interrupted:
                for x, y in self.data.train:
                    metrics = self._train_step(x, y)
                    self.step += 1
                    window.add(metrics, len(y) * self.dist.world_size)
                    self._epoch_losses.append(metrics["loss"])
                    for hook in self.on_step:
                        hook(self, metrics)
                    bar.update(task, completed=self.step, loss=metrics["loss"], lr=self._lr(),
                               ips=window.images_per_second(), epoch=self.epoch + 1)
                    if self.step % self.config.train.log_every_steps == 0:
                        self._log_train(window)
                        window = _Window()
                    saved = False
                    if self.step % self.steps_per_epoch == 0:
                        self._end_epoch()
                        saved = True
                    elif (self.config.train.checkpoint_every_steps
                          and self.step % self.config.train.checkpoint_every_steps == 0):
                        self.save_checkpoint()
                        saved = True
                    interrupted = self._agree(stop.requested)
                    if interrupted or self.step >= stop_at:
                        if not saved:
                            self.save_checkpoint()
                        break
        if self._tb is not None:
            self._tb.flush()
        if interrupted:
            if self.run is not None and is_main:
                self.run.metrics.log(kind="interrupted", step=self.step)
            barrier()
            raise TrainingInterrupted(self.run.path if self.run else None, self.step,
                                      self.last_checkpoint)
        barrier()
        return self._result(start_step, start_time)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        generator = step_generator(self.config.train.seed, self.step)
        with self.precision.autocast():
            metrics = self.strategy.step(self.train_net, x, y, loss_fn=self.loss_fn,
                                         generator=generator, reduce_mean=self.reduce_mean)
        self.trained_costs.add(self.strategy.trained)
        self.strategy.trained.clear()
        if not math.isfinite(metrics["loss"]):
            raise NumericsError(f"training diverged at step {self.step + 1} (loss "
                                f"{metrics['loss']}). " + self._advice())
        if self.dist.distributed:
            average_gradients(self.params)
            average_buffers(self.net)
        self.precision.unscale(self.optimizer)
        if self.config.optim.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
            metrics["grad_norm"] = float(norm)
        self.precision.step(self.optimizer)
        self.scheduler.step()
        return metrics

    def _agree(self, requested: bool) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not self.dist.distributed:
            return requested
        flag = torch.tensor([float(requested)], device=self.device)
        return bool(self.reduce_mean(flag).item() > 0)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _end_epoch(self) -> None:
        epoch_loss = float(np.mean(self._epoch_losses)) if self._epoch_losses else float("nan")
        self._epoch_losses = []
        self._train_losses.append(epoch_loss)
        started = time.perf_counter()
        self.val = self.evaluate_widths()  # every rank: the configs are sharded over ranks
        barrier()
        if self.step >= self.total_steps:
            self.finished = True
        trained_costs = self.trained_costs.flush()
        if self.run is not None and self.dist.is_main:
            self.run.metrics.log(kind="epoch", step=self.step, epoch=self.epoch,
                                 train_loss=epoch_loss, lr=self._lr(),
                                 eval_seconds=time.perf_counter() - started, val=self.val)
            self.run.metrics.log(kind="trained_costs", step=self.step, epoch=self.epoch,
                                 **trained_costs)
        if self._tb is not None:
            for label, m in self.val.items():
                self._tb.add_scalar(f"val/{label}_accuracy", m["accuracy"], self.step)
                self._tb.add_scalar(f"val/{label}_loss", m["loss"], self.step)
        if self.dist.is_main:
            parts = [f"{label} {m['accuracy']:.2%}" for label, m in self.val.items()]
            self.console.print(f"epoch {self.epoch}/{self.config.optim.epochs}: train loss "
                               f"{epoch_loss:.4f}; val accuracy " + ", ".join(parts))
        self.save_checkpoint()
        if self.finished:
            self._save_weights()
            if self._tb is not None:
                self._tb.close()

    def _log_train(self, window: _Window) -> None:
        record = {"kind": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                  "lr": self._lr(), "images_per_s": window.images_per_second(),
                  **window.means()}
        if self.run is not None:
            self.run.metrics.log(**record)
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("kind", "step"):
                    self._tb.add_scalar(f"train/{k}", v, self.step)

    def _save_weights(self) -> None:
        """The final supernet weights as safetensors (plain tensors, no pickle)."""
        if self.run is None or not self.dist.is_main:
            return
        self.run.save_supernet_weights(self.net.state_dict(), self.step)

    # -- evaluation --------------------------------------------------------------------------
    def eval_configs(self) -> dict[str, WidthConfig]:
        """The widths evaluated after each epoch (EVAL_WIDTHS)."""
        space = self.net.space
        return {"max": space.max(), "mid": space.uniform(0.5), "min": space.min()}

    @property
    def evaluator(self) -> Evaluator:
        """The val scorer, built once (it keeps the recalibration batches in memory)."""
        if self._evaluator is None:
            t = self.config.train
            self._evaluator = Evaluator(
                self.net, self.data.recal, self.data.val, recal_batches=t.eval_recal_batches,
                val_batches=t.eval_max_batches, seed=t.seed, device=self.device)
        return self._evaluator

    def evaluate_widths(self) -> dict[str, dict[str, float]]:
        """Val loss / accuracy at each of `eval_configs()`, scored as search scores them
        (`Evaluator`: BN recalibration on clean training batches; CafeNet the best of its
        free assignments, BCNet the mean of both sides). BN statistics, widths and RNGs
        are left as they were. Every rank must call it (the configs are sharded)."""
        full = self.net.cost(self.net.space.max())
        evaluator = self.evaluator
        evaluator.clear()  # the weights changed since the last evaluation
        configs = self.eval_configs()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            scores = evaluator.evaluate(list(configs.values()))
        results = {}
        for (label, cfg), score in zip(configs.items(), scores, strict=True):
            cost = self.net.cost(cfg)
            results[label] = {"loss": score.loss, "accuracy": score.accuracy,
                              "macs": float(cost.macs),
                              "macs_ratio": cost.macs / full.macs if full.macs else 0.0}
        return results

    # -- output ------------------------------------------------------------------------------
    def _progress_bar(self) -> Progress:
        show = self.show_progress
        if show is None:
            show = self.console.is_terminal
        return Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, disable=not (show and self.dist.is_main), transient=False,
        )

    def _result(self, start_step: int, start_time: float) -> FitResult:
        elapsed = time.perf_counter() - start_time
        done = self.step - start_step
        return FitResult(
            run_dir=self.run.path if self.run else None, step=self.step,
            total_steps=self.total_steps, epoch=self.epoch, finished=self.finished,
            val={k: dict(v) for k, v in self.val.items()}, train_loss=list(self._train_losses),
            steps_per_second=done / elapsed if done and elapsed > 0 else 0.0,
            checkpoint=self.last_checkpoint or (self.run.latest_checkpoint() if self.run else None),
        )


def _checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (step-000000120.pt -> 120)."""
    return int(path.stem.rpartition("-")[2])


def _get(config: RunConfig, key: str) -> Any:
    section, _, field = key.partition(".")
    return getattr(getattr(config, section), field)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
