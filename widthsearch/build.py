"""Data and supernet from a RunConfig, shared by training, search and finishing.

Training builds them to train; search and finishing rebuild the same objects from a run
directory (`load_supernet`): the model from config.yaml, the width space from space.json
(written when training starts, so the space is read back, not recomputed), and the weights
plus BN statistics from supernet.safetensors of a finished run or the newest checkpoint of
an unfinished one. Nothing is unpickled.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import models
from .bins import apply_bins
from .config import RunConfig, load_config
from .data import DataBundle, build_data, example_input
from .errors import WidthSearchError
from .patterns import LocallyFree, Pattern
from .runs import RunDir, atomic_write_text
from .seeds import SEED_SHUFFLE, derive_seed
from .space import WidthSpace
from .supernet import Supernet

__all__ = ["LoadedRun", "SPACE_FILE", "WEIGHTS_FILE", "build_run_data", "build_supernet",
           "load_supernet", "read_space", "write_space"]

SPACE_FILE = "space.json"
WEIGHTS_FILE = "supernet.safetensors"
SPACE_FORMAT = "widthsearch-space/1"


def build_run_data(config: RunConfig, *, rank: int = 0, world_size: int = 1,
                   device: str | torch.device = "cpu") -> DataBundle:
    """The run's loaders on `device`. The val split is drawn with data.split_seed; the train
    loader is then reseeded from train.seed, so changing the run seed changes the batch
    order but not which images are val."""
    d = config.data
    bundle = build_data(d.name, d.root, batch_size=d.batch_size, val_size=d.val_size,
                        seed=d.split_seed, subset=d.subset, val_subset=d.val_subset,
                        augment=d.augment, image_size=d.image_size, workers=d.workers,
                        rank=rank, world_size=world_size, device=device)
    if bundle.train.generator is not None:
        bundle.train.generator.manual_seed(derive_seed(config.train.seed, SEED_SHUFFLE))
    return bundle


def build_model(config: RunConfig, data: DataBundle) -> torch.nn.Module:
    """The full-size model of `config.model`, sized for the data's classes and channels."""
    m = config.model
    kwargs = dict(m.kwargs)
    for key in ("num_classes", "in_channels"):
        if key in kwargs:
            raise WidthSearchError(f"set model.{key}, not model.kwargs.{key}")
    if m.num_classes is not None and m.num_classes < data.num_classes:
        raise WidthSearchError(f"model.num_classes={m.num_classes} but {data.name} "
                               f"has {data.num_classes} classes")
    kwargs["num_classes"] = m.num_classes or data.num_classes
    kwargs["in_channels"] = m.in_channels or data.in_channels
    if kwargs["in_channels"] != data.in_channels:
        raise WidthSearchError(f"model.in_channels={kwargs['in_channels']} but "
                               f"{data.name} images have {data.in_channels}")
    return models.get(m.name, **kwargs)


def run_pattern(config: RunConfig) -> str | Pattern:
    """The supernet pattern of `config` (CafeNet's with its free-zone offset r)."""
    s = config.supernet
    return LocallyFree(s.r) if s.pattern == "cafenet" else s.pattern


def build_supernet(config: RunConfig, data: DataBundle, *, device: str | torch.device = "cpu",
                   quiet: bool = False, space: dict[str, Any] | None = None,
                   model: torch.nn.Module | None = None) -> Supernet:
    """The supernet of `config` on `device`. With `space` (a space.json record) the trained
    space is read back instead of rebuilt (FLOPs-sensitive bins are not recomputed).
    `model` replaces the config's model; `quiet` silences discovery warnings (ranks > 0)."""
    s = config.supernet
    model = build_model(config, data) if model is None else model
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        net = Supernet(model, example_input(data), pattern=run_pattern(config),
                       min_ratio=s.min_ratio, divisions=s.divisions)
    if space is not None:
        if space["pattern"] != net.pattern.name or space.get("r") != getattr(net.pattern, "r", None):
            raise WidthSearchError(f"{SPACE_FILE} records pattern {space['pattern']!r} but "
                                   f"the config gives {net.pattern.name!r}")
        net.set_space(space_from_json(net.space, space))
    elif s.bins:
        apply_bins(net, min_ratio=s.min_ratio, min_bin=s.min_bin, max_bin=s.max_bin)
    return net.to(device)


# ------------------------------------------------------------------------------ space.json


def space_to_json(net: Supernet) -> dict[str, Any]:
    """What rebuilding the trained space needs: the pattern and every group's widths and step."""
    pattern = net.pattern
    return {
        "format": SPACE_FORMAT,
        "pattern": pattern.name,
        "r": getattr(pattern, "r", None),
        "groups": {g.name: {"size": g.size, "step": g.step, "choices": list(g.choices)}
                   for g in net.space.groups},
    }


def write_space(run: RunDir, net: Supernet) -> Path:
    """Write space.json into the run directory (atomically)."""
    return atomic_write_text(run.path / SPACE_FILE,
                             json.dumps(space_to_json(net), indent=1, sort_keys=True))


def read_space(run: RunDir) -> dict[str, Any] | None:
    """space.json of the run, or None if the run predates it."""
    path = run.path / SPACE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WidthSearchError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(record, dict) or record.get("format") != SPACE_FORMAT:
        raise WidthSearchError(f"{path} is not a widthsearch space file")
    return record


def space_from_json(base: WidthSpace, record: dict[str, Any]) -> WidthSpace:
    where = SPACE_FILE
    groups = record["groups"]
    if set(groups) != set(base.names):
        raise WidthSearchError(f"{where} describes groups {sorted(groups)[:4]}... that the "
                               "rebuilt model does not have; the model code changed since "
                               "training")
    for g in base.groups:
        if int(groups[g.name]["size"]) != g.size:
            raise WidthSearchError(f"{where}: group {g.name!r} had {groups[g.name]['size']} "
                                   f"channels, the rebuilt model has {g.size}")
    choices = {g.name: [int(w) for w in groups[g.name]["choices"]] for g in base.groups
               if not g.fixed}
    space = base.with_choices(choices)
    return WidthSpace(tuple(replace(g, step=int(groups[g.name]["step"])) for g in space.groups))



# ------------------------------------------------------------------------------ loading a run


@dataclass
class LoadedRun:
    """A trained supernet read back from its run directory."""

    net: Supernet
    config: RunConfig
    data: DataBundle
    run: RunDir
    step: int
    finished: bool
    source: Path
    """The file the weights came from (supernet.safetensors or a checkpoint)."""


def load_supernet(run_dir: str | Path, *, checkpoint: str | Path | None = None,
                  device: str | torch.device = "cpu", rank: int = 0,
                  world_size: int = 1) -> LoadedRun:
    """The trained supernet of `run_dir`: model and data from config.yaml, the width space
    from space.json, weights and BN statistics from supernet.safetensors (a finished run) or
    the newest checkpoint (an unfinished one; `checkpoint` names another). The data bundle
    holds train / val / test / recalibration loaders; search must use val only."""
    run = RunDir.open(run_dir)
    config = load_config(run.read_config())
    data = build_run_data(config, rank=rank, world_size=world_size, device=device)
    record = read_space(run)
    net = build_supernet(config, data, device="cpu", quiet=True, space=record)
    weights = run.path / WEIGHTS_FILE
    if checkpoint is None and weights.is_file():
        state = run.load_supernet_weights()  # checksum verified: damage is named, not used
        step, finished, source = _weights_step(weights), True, weights
    else:
        if checkpoint is None and run.latest_checkpoint() is None:
            raise WidthSearchError(f"{run.path} has neither {WEIGHTS_FILE} nor a checkpoint: "
                                   "train it first (widthsearch train)")
        loaded = run.load_checkpoint(checkpoint)
        state = loaded["model"]
        step, finished = int(loaded["step"]), bool(loaded.get("finished", False))
        source = Path(checkpoint) if checkpoint is not None else run.latest_checkpoint()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise WidthSearchError(f"{source} does not fit the supernet of {run.path}: {e}") from None
    net.activate(net.space.max())
    return LoadedRun(net=net.to(device), config=config, data=data, run=run, step=step,
                     finished=finished, source=source)


def _weights_step(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return int(meta.get("step", -1))
