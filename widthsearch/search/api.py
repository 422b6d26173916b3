"""`ws.search_widths(...)`: a trained run (or a supernet and an evaluator) in, chosen widths out.

    import widthsearch as ws
    result = ws.search_widths("runs/resnet20-cafenet", budgets=["macs=50%"], method="evolution")
    result.chosen[0].record.config      # the widths to keep, group -> channels

With a run directory, the supernet is loaded with `ws.load_supernet`, scored on the VAL
split by `ws.Evaluator`, and the search keeps its resumable state and writes front.json,
chosen.json and front.png in the run's search/ folder.
"""

from __future__ import annotations

import warnings

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WidthSearchError
from .base import EvaluatorLike, Searcher, SearchResult, writer_rank
from .budgets import Budget
from .evolution import Evolution
from .greedy import Greedy
from .nsga2 import NSGA2
from .output import write_outputs
from .random import RandomSearch

SEARCHERS: dict[str, type[Searcher]] = {
    "nsga2": NSGA2, "evolution": Evolution, "greedy": Greedy, "random": RandomSearch,
}
UNIFORM_RATIOS = tuple(float(r) for r in np.linspace(0.25, 1.0, 7))


def searcher_options(method: str) -> dict[str, Any]:
    """The options a method takes and their defaults (for --help and error messages)."""
    cls = _searcher_class(method)
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _searcher_class(method: str) -> type[Searcher]:
    try:
        return SEARCHERS[method]
    except KeyError:
        raise WidthSearchError(
            f"unknown search method {method!r}; known: {', '.join(SEARCHERS)}"
        ) from None


def make_searcher(method: str, space: Any, cost_model: Any, evaluator: EvaluatorLike,
                  budgets: Sequence[str | Budget], **options: Any) -> Searcher:
    """A searcher by name; an option the method does not take is one clear error."""
    cls = _searcher_class(method)
    base = set(inspect.signature(Searcher.__init__).parameters)
    allowed = set(searcher_options(method)) | base
    unknown = sorted(set(options) - allowed)
    if unknown:
        own = sorted(set(searcher_options(method)) - base)
        raise WidthSearchError(
            f"method {method!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(own) or '(none)'}"
        )
    return cls(space, cost_model, evaluator, budgets, **options)


def search_widths(
    run_or_net: str | Path | Any,
    budgets: Sequence[str | Budget],
    method: str = "evolution",
    *,
    evaluator: EvaluatorLike | None = None,
    out_dir: str | Path | None = None,
    align: int | None = None,
    seed: int = 0,
    resume: bool = True,
    uniform: Sequence[float] = UNIFORM_RATIOS,
    progress: bool = False,
    max_steps: int | None = None,
    evaluator_options: dict[str, Any] | None = None,
    **options: Any,
) -> SearchResult:
    """Search widths under `budgets` (["macs=50%", "latency=2.5ms"], all hard constraints).

    `run_or_net`: a run directory (the supernet and its VAL data are loaded from it; output
    goes to its search/ folder unless `out_dir` says otherwise) or a `Supernet`, then with
    an `evaluator` (a `ws.Evaluator` or anything with `evaluate(configs) -> scores`) and
    output only where `out_dir` points. `align`: every searched width a multiple of it.
    `options` go to the method (population, generations, samples, step, ...).
    """
    from ..supernet import Supernet

    if isinstance(run_or_net, (str, Path)):
        from ..build import load_supernet
        from ..evaluate import Evaluator

        loaded = load_supernet(run_or_net)
        net = loaded.net
        if evaluator is None:
            evaluator = Evaluator(net, loaded.data.recal, loaded.data.val, seed=seed,
                                  progress=progress, **(evaluator_options or {}))
        if out_dir is None:
            out_dir = loaded.run.search_dir
    elif isinstance(run_or_net, Supernet):
        net = run_or_net
        if evaluator is None:
            raise WidthSearchError(
                "searching a Supernet needs evaluator=ws.Evaluator(net, recal_loader, "
                "val_loader) (or pass a run directory)"
            )
    else:
        raise WidthSearchError(
            f"search takes a run directory or a Supernet, got {type(run_or_net).__name__}"
        )
    space = net.space if align is None else net.space.aligned(align)
    searcher = make_searcher(method, space, net.cost_model, evaluator, budgets, seed=seed,
                             state_dir=out_dir, progress=progress, **options)
    if isinstance(run_or_net, (str, Path)):
        _warn_untrained(loaded.run, searcher.targets)
    result = searcher.search(max_steps=max_steps, resume=resume)
    result.uniform = searcher.baseline([space.uniform(r) for r in uniform])
    if out_dir is not None and searcher.finished and writer_rank():
        write_outputs(result, out_dir)
    return result


def _warn_untrained(run: Any, targets: Sequence[Any]) -> None:
    """One line per budget the run's training never went near (train/costs.py)."""
    from ..train.costs import untrained_budgets

    records = [r for r in run.metrics.read() if r.get("kind") == "trained_costs"]
    for line in untrained_budgets(records, targets):
        warnings.warn(line, stacklevel=3)
