"""One registry for every model widthsearch can build (timm style: `get`, `list`).

Zoo builders register themselves with `@register`; names of the form "torchvision:<name>"
resolve to torchvision's classification models (see `tv.py`), "timm:<name>" to timm's
(`timm.py`, an optional extra). Every model built by `get`
remembers how it was built in `model.widthsearch_spec`, so a saved subnet can be rebuilt
from JSON alone: `get(spec["name"], **spec["kwargs"])`.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from widthsearch.errors import WidthSearchError
from widthsearch.models import timm as timm_zoo
from widthsearch.models import tv

__all__ = [
    "register",
    "get",
    "list_models",
    "default_input_size",
    "smallest_input_size",
    "is_registered",
]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    default_input_size: tuple[int, int, int]
    smallest_input_size: int


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    default_input_size: tuple[int, int, int],
    smallest_input_size: int | None = None,
) -> Callable[[Builder], Builder]:
    """Register a model builder under `name`.

    `default_input_size` is (C, H, W) for the builder's default `in_channels`.
    `smallest_input_size` is the smallest square side the model runs at (defaults to H);
    it lets callers trace or test a model as cheaply as possible.
    """
    if not name or ":" in name:
        raise WidthSearchError(
            f"invalid model name {name!r}: it must be non-empty and must not contain ':' "
            "(the 'torchvision:' and 'timm:' prefixes are reserved)"
        )
    size = tuple(int(v) for v in default_input_size)
    if len(size) != 3 or min(size) < 1:
        raise WidthSearchError(
            f"default_input_size for {name!r} must be (C, H, W) of positive ints, got "
            f"{default_input_size!r}"
        )
    smallest = size[1] if smallest_input_size is None else int(smallest_input_size)

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise WidthSearchError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, size, smallest)  # type: ignore[arg-type]
        return builder

    return decorator


def is_registered(name: str) -> bool:
    """True if `get(name)` can build this model (zoo name or known torchvision name)."""
    if name.startswith(tv.PREFIX):
        return name[len(tv.PREFIX) :] in tv.model_names()
    if name.startswith(timm_zoo.PREFIX):
        return timm_zoo.is_known(name[len(timm_zoo.PREFIX) :])
    return name in _REGISTRY


def list_models(pattern: str | None = None) -> list[str]:
    """Every model name `get` accepts: zoo names, "torchvision:<name>", "timm:<name>".

    `pattern` is an optional shell-style filter, e.g. `list("torchvision:resnet*")`.
    """
    names = sorted(_REGISTRY) + [tv.PREFIX + n for n in tv.model_names()]
    names += [timm_zoo.PREFIX + n for n in timm_zoo.model_names()]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build model `name` with the builder's keyword arguments.

    The model carries `widthsearch_spec = {"name": ..., "kwargs": ...}` (JSON-serializable)
    so it can be rebuilt with `get(spec["name"], **spec["kwargs"])`. For zoo models the
    recorded kwargs include the builder's defaults, so a spec does not depend on them.
    """
    _json_kwargs(name, kwargs)  # reject unserializable kwargs before building anything
    if name.startswith(tv.PREFIX):
        model = tv.build(name[len(tv.PREFIX) :], **kwargs)
        recorded = dict(kwargs)
    elif name.startswith(timm_zoo.PREFIX):
        model = timm_zoo.build(name[len(timm_zoo.PREFIX) :], **kwargs)
        recorded = dict(kwargs)
    else:
        entry = _entry(name)
        try:
            bound = inspect.signature(entry.builder).bind(**kwargs)
        except TypeError as e:
            raise WidthSearchError(f"bad arguments for model {name!r}: {e}") from None
        bound.apply_defaults()
        recorded = dict(bound.arguments)
        try:
            model = entry.builder(**kwargs)
        except WidthSearchError:
            raise
        except (TypeError, ValueError) as e:
            raise WidthSearchError(f"bad arguments for model {name!r}: {e}") from e
    model.widthsearch_spec = {"name": name, "kwargs": _json_kwargs(name, recorded)}
    return model


def default_input_size(name: str, in_channels: int | None = None) -> tuple[int, int, int]:
    """The (C, H, W) input the model is meant for; C is `in_channels` when given."""
    if name.startswith(tv.PREFIX):
        size = tv.default_input_size(_tv_name(name))
    elif name.startswith(timm_zoo.PREFIX):
        size = timm_zoo.default_input_size(name[len(timm_zoo.PREFIX) :])
    else:
        size = _entry(name).default_input_size
    if in_channels is not None:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise WidthSearchError(f"in_channels must be a positive int, got {in_channels!r}")
        size = (in_channels, size[1], size[2])
    return size


def smallest_input_size(name: str) -> int:
    """A small square side (pixels) the model runs at, in train and eval mode."""
    if name.startswith(tv.PREFIX):
        return tv.smallest_input_size(_tv_name(name))
    if name.startswith(timm_zoo.PREFIX):
        return timm_zoo.smallest_input_size(name[len(timm_zoo.PREFIX) :])
    return _entry(name).smallest_input_size


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WidthSearchError(_unknown_message(name)) from None


def _tv_name(name: str) -> str:
    short = name[len(tv.PREFIX) :]
    if short not in tv.model_names():
        raise WidthSearchError(tv.unknown_message(short))
    return short


def _unknown_message(name: str) -> str:
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known + tv.model_names(), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown model {name!r}.{hint} Known models: {', '.join(known)}. "
        f'Any torchvision classification model is also available as "{tv.PREFIX}<name>" '
        f'(e.g. "{tv.PREFIX}resnet18"), and any timm model as "{timm_zoo.PREFIX}<name>" '
        f'(pip install widthsearch[timm]); see widthsearch.models.list().'
    )


def _json_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A JSON round trip of kwargs, so the spec holds exactly what a rebuild will see."""
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise WidthSearchError(
            f"arguments for model {name!r} must be JSON-serializable so the model can be "
            f"rebuilt from a saved spec ({e}); build the module yourself and pass it to "
            "widthsearch directly instead"
        ) from None
