"""The configuration of a training run: typed, every field defaulted, unknown keys refused.

A run is described by one `RunConfig` (sections model, data, supernet, strategy, optim,
train). It comes from a YAML file or a dict plus command-line overrides ("optim.lr=0.05"),
and is stored in the run directory as plain YAML (`RunConfig.to_dict()`), so a resumed run
rebuilds exactly the same objects. Mistakes (a misspelt key, a value out of range, a
strategy that needs another pattern) become one `WidthSearchError` naming the field.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, WidthSearchError

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "StrategyConfig",
    "SupernetConfig", "TrainConfig", "apply_overrides", "load_config", "parse_override",
]

DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
STRATEGY_PATTERNS = {"cafenet": "cafenet", "bcnet": "bcnet"}
"""Strategies that only make sense with one width pattern: strategy name -> pattern."""
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Strict scalars: YAML's `true` is not the batch size 1, `0.5` is not a count, and `.inf` /
# `.nan` are not learning rates. Ints are accepted where floats are expected.
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which network to slim. num_classes / in_channels default to the dataset's."""

    name: str = "resnet20"
    num_classes: Int | None = Field(None, ge=1)
    in_channels: Int | None = Field(None, ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Section):
    """The dataset. `batch_size` is per process (the global batch is batch_size x ranks).

    `split_seed` picks the val images held out of train (and is what `build_data` receives
    as its seed); the order of training batches follows `train.seed`.
    """

    name: str = "fashion-mnist"
    root: str | None = None
    batch_size: Int = Field(128, ge=1)
    val_size: Int | Float | None = 5000
    split_seed: Int = Field(0, ge=0, le=2**63 - 1)
    subset: Int | None = Field(None, ge=1)
    val_subset: Int | None = Field(None, ge=1)
    augment: Bool = True
    workers: Int = Field(2, ge=0)
    image_size: Int | tuple[Int, Int] | None = None

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"a float val_size is a fraction in (0, 1), not {value!r}")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"val_size must be at least 0, not {value!r}")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sizes = (value,) if isinstance(value, int) else value or ()
        if any(size < 1 for size in sizes):
            raise ValueError(f"image_size must be positive, not {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {value!r}; known: {', '.join(DATASET_NAMES)}")
        return value


class SupernetConfig(_Section):
    """How the model becomes a supernet: its width pattern and allowed widths.

    With `bins` on, widths move in FLOPs-sensitive bins (CafeNet) between `min_bin` and
    `max_bin` channels; `r` is the CafeNet free-zone offset in bins.
    """

    pattern: Literal["leftmost", "cafenet", "bcnet"] = "cafenet"
    min_ratio: Float = Field(0.25, gt=0.0, le=1.0)
    divisions: Int = Field(16, ge=1)
    bins: Bool = True
    min_bin: Int = Field(1, ge=1)
    max_bin: Int | None = Field(None, ge=1)
    r: Int = Field(1, ge=0)

    @model_validator(mode="after")
    def _bin_range(self) -> SupernetConfig:
        if self.max_bin is not None and self.max_bin < self.min_bin:
            raise ValueError(f"max_bin ({self.max_bin}) is below min_bin ({self.min_bin})")
        return self


class StrategyConfig(_Section):
    """The training method (`train.strategies.build_strategy(name, **options)`)."""

    name: str = "cafenet"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buildable(self) -> StrategyConfig:
        """Unknown strategies and options fail here, before any data is loaded."""
        from .train.strategies import build_strategy

        try:
            build_strategy(self.name, **self.options)
        except WidthSearchError as e:
            raise ValueError(str(e)) from None
        return self


class OptimConfig(_Section):
    """Optimizer and schedule: cosine decay after a linear warm-up, stepped per iteration.

    Weight decay is not applied to norms and biases (parameters with ndim <= 1).
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: Float = Field(0.1, gt=0.0)
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: Bool = True
    weight_decay: Float = Field(5e-4, ge=0.0)
    epochs: Int = Field(5, ge=1)
    warmup_epochs: Float = Field(0.5, ge=0.0)
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: Float | None = Field(None, gt=0.0)


class TrainConfig(_Section):
    """The loop: seed, device, checkpointing, evaluation and logging cadence.

    `checkpoint_every_steps` = 0 keeps only the end-of-epoch checkpoints. `amp` runs mixed
    precision where the device supports it (CUDA); on CPU it is ignored with a warning.
    `channels_last` stores the 4-d weights NHWC, which oneDNN convolves faster on CPU
    (1.4-2x per training step on the zoo models, bench/README.md); the result is the same
    network, up to float rounding.
    """

    seed: Int = Field(0, ge=0, le=2**63 - 1)
    device: str = "auto"
    amp: Bool = False
    channels_last: Bool = False
    checkpoint_every_steps: Int = Field(200, ge=0)
    keep_checkpoints: Int = Field(3, ge=1)
    eval_recal_batches: Int = Field(20, ge=0)
    eval_max_batches: Int | None = Field(None, ge=1)
    log_every_steps: Int = Field(10, ge=1)
    threads: Int | None = Field(None, ge=1)
    sampler: Literal["widths", "cost-uniform", "budgets"] = "widths"
    sampler_metric: str = "macs"
    budgets: list[str] = Field(default_factory=list)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: list[str]) -> list[str]:
        from .search.budgets import parse_budget

        for text in value:
            try:
                parse_budget(text)
            except WidthSearchError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _sampler_budgets(self) -> TrainConfig:
        if self.sampler == "budgets" and not self.budgets:
            raise ValueError("sampler=budgets needs train.budgets, e.g. [macs=10%, macs=25%]")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {value!r}")
        return value


class RunConfig(_Section):
    """Everything a training run needs; `to_dict()` is what config.yaml holds."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        needed = STRATEGY_PATTERNS.get(self.strategy.name)
        if needed is not None and self.supernet.pattern != needed:
            raise ValueError(
                f"strategy {self.strategy.name!r} needs supernet.pattern={needed!r}, "
                f"not {self.supernet.pattern!r}"
            )
        if self.optim.name == "sgd" and self.optim.nesterov and self.optim.momentum == 0:
            raise ValueError("Nesterov SGD needs optim.momentum > 0 (or set optim.nesterov=false)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data (lists for tuples) that `load_config` turns back into this."""
        return self.model_dump(mode="json")


# ------------------------------------------------------------------------------ loading


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | RunConfig | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """A validated RunConfig from a YAML file, a dict (or nothing: all defaults), then overrides.

    `overrides` are "section.key=value" strings; the value is parsed as YAML, so
    `optim.lr=0.05`, `data.subset=null`, `data.augment=false`, `model.kwargs.width_mult=0.5`
    and `data.image_size=[32,32]` all do what they say.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, RunConfig):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = _plain(source)
    else:
        data = _read_yaml(Path(source))
    data = apply_overrides(data, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config: {format_validation_error(e)}") from None
    except (TypeError, ValueError) as e:  # a value pydantic cannot even compare
        raise ConfigError(f"invalid config: {' '.join(str(e).split())}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not a {type(data).__name__}")
    return data


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of nested mappings as dicts, so overrides never touch the caller's data."""
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def parse_override(text: str) -> tuple[list[str], Any]:
    """"a.b=value" -> (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"override {text!r} has an empty key in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text (e.g. a path with a colon and spaces)
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each "a.b=value" override set (creating nested mappings)."""
    out = _plain(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def format_validation_error(error: ValidationError) -> str:
    """pydantic's report shortened to "field.path: message" items on one line."""
    items = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc) or "config"
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(loc)
        else:
            message = err["msg"]
            if message.startswith("Value error, "):  # our own validators name the value
                message = message[len("Value error, "):]
            elif loc and not _is_container(err.get("input")):
                message += f" (got {err.get('input')!r})"
        items.append(f"{where}: {message}" if loc else message)
    return "; ".join(dict.fromkeys(items))


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple))


def _suggestion(loc: list[str]) -> str:
    """" (did you mean 'lr'?)" for a misspelt key, from the fields of its section."""
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    known = ", ".join(model.model_fields)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {known})"
