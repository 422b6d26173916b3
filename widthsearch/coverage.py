"""The coverage table: every torchvision classification model converted, verified, tabulated.

For each model of `torchvision.models.list_models(module=torchvision.models)`, at its
smallest valid input (batch 1, `models.smallest_input_size`), `check_model` builds the
supernet and checks the core invariants at the smallest, the largest and a few random
width configurations with random channel assignments (the CafeNet pattern):

- export equivalence: the exported plain model's output equals the supernet's (eval mode);
- exact MACs: `net.cost(cfg).macs` equals torch's FlopCounterMode on the export / 2;
- the training-mode graph runs (auxiliary heads) at the smallest widths, batch 2.

`write_table` renders docs/coverage.md: the groups found, the share of the full model's
MACs that slimmable groups reach, the MACs range, and the status: *full* when only the
model input and output are fixed, else *partial* with what is fixed and why.

    python -m widthsearch coverage --out docs/coverage.md     # or: make coverage
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

INHERENT = ("the model input", "the model output", "a constant input")
"""Fixed-group reasons that do not make a model partial: its input and output, and a
layer's input that no width changes (a coordinate table)."""

TOLERANCE = 1e-5


@dataclass
class ModelReport:
    """What converting and verifying one model found."""

    name: str
    input_size: int
    groups: int = 0
    searchable: int = 0
    slimmable_share: float = 0.0  # of the full model's MACs, reached by slimmable groups
    macs_min: int = 0
    macs_max: int = 0
    fixed: dict[str, int] = field(default_factory=dict)  # reason -> fixed groups
    warnings: list[str] = field(default_factory=list)
    max_error: float = 0.0
    full_error: float = 0.0  # supernet at full width against the original model
    macs_exact: bool = True
    train_ok: bool = True
    configs: int = 0
    seconds: float = 0.0
    error: str | None = None
    where: str | None = None  # the model's own code a failure came from

    @property
    def verified(self) -> bool:
        return (self.error is None and self.macs_exact and self.train_ok
                and self.max_error <= TOLERANCE and self.full_error <= TOLERANCE)

    @property
    def silently_wrong(self) -> bool:
        """Converted without an error, yet at full width it computes something else."""
        return self.error is None and self.full_error > TOLERANCE

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "partial" if self.fixed else "full"


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct per-channel norm statistics and affine parameters, so that slicing the wrong
    channels changes the output (fresh norms are identical on every channel)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.75)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def reason_of(fixed: str) -> str:
    """A fixed group's reason without the op name in front ("conv3: why" -> "why")."""
    return re.sub(r"^[\w.#\-]+: ", "", fixed)


def layer_groups(net: object) -> list:
    """The groups that hold some layer's or parameter's channels (the space also has fixed
    groups that only ops without layers touch, such as an attention's intermediate axes)."""
    graph, space = net.graph, net.space  # type: ignore[attr-defined]
    layers = set(graph.bindings) | set(graph.parameters)
    return [g for g in space.groups
            if any(n in layers for n in (*g.producers, *g.consumers, *g.members))]


def check_model(name: str, *, zoo: str = "torchvision", input_size: int | None = None,
                configs: int = 2, pattern: str = "cafenet", seed: int = 0, train: bool = True
                ) -> ModelReport:
    """Convert model `zoo:name` and verify it; never raises (errors are reported).

    Besides export equivalence and exact MACs, the supernet at full width must reproduce
    the original model's output (a conversion that changes the computation is not
    verified, whatever the export says)."""
    from . import models
    from .supernet import Supernet, macs_of

    side = input_size or models.smallest_input_size(f"{zoo}:{name}")
    report = ModelReport(name, side)
    start = time.perf_counter()
    try:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torchvision's init notices
            model = randomize_norms(models.get(f"{zoo}:{name}", num_classes=10), seed)
        x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(seed))
        model.eval()
        with torch.no_grad():
            reference = _detached(model(x))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = Supernet(model, x, pattern=pattern)
        report.warnings = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        space = net.space
        groups = layer_groups(net)
        report.groups, report.searchable = len(groups), sum(g.slimmable for g in groups)
        report.fixed = dict(Counter(
            reason_of(g.fixed or "") for g in groups
            if not g.slimmable and reason_of(g.fixed or "") not in INHERENT))
        full = net.cost_model.full.macs
        widths = np.array([0 if g.slimmable else g.size for g in space.groups], dtype=np.float64)
        fixed_macs = float(net.cost_model.macs(widths)[0])
        report.slimmable_share = 1.0 - fixed_macs / full if full else 0.0
        report.macs_min, report.macs_max = net.cost(space.min()).macs, full

        gen = torch.Generator().manual_seed(seed)
        cfgs = [space.min(), space.max()] + [space.sample(gen) for _ in range(configs)]
        net.eval()
        with torch.no_grad(), net.activate(space.max()):
            report.full_error = _max_error(reference, net(x))
        for cfg in cfgs:
            choice = net.sample_choice(cfg, gen)
            with torch.no_grad(), net.activate(cfg, choice):
                expected = net(x)
            sub = net.export(cfg, choice).eval()
            with torch.no_grad():
                got = sub(x)
            report.max_error = max(report.max_error, _max_error(expected, got))
            report.macs_exact &= net.cost(cfg).macs == macs_of(sub, x)
            report.configs += 1
        if train:  # the training graph (auxiliary heads) at the smallest widths
            net.train()
            batch = torch.randn(2, 3, side, side, generator=gen)
            try:
                with torch.no_grad(), net.activate(space.min()):
                    net(batch)
            except Exception as err:  # reported, not raised: the table lists it
                report.train_ok = False
                report.warnings.append(f"training-mode forward failed: {err}")
    except Exception as err:
        report.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        report.where = _origin(err)
        report.warnings.append(traceback.format_exc(limit=3))
    report.seconds = time.perf_counter() - start
    return report


def _detached(out: object) -> object:
    """A model output with every tensor cloned, so later in-place ops cannot change it."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_detached(o) for o in out)
    return out


def _origin(err: BaseException) -> str | None:
    """Where a failure came from: the innermost frame of the model's own code (its
    package, not torch's or widthsearch's), e.g. "timm/layers/padding.py:41 pad_same"."""
    found = None
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for frame in traceback.extract_tb(current.__traceback__):
            path = frame.filename.replace(os.sep, "/")
            if "/site-packages/" in path and "/torch/" not in path:
                short = path.split("/site-packages/", 1)[1]
                found = f"{short}:{frame.lineno} {frame.name}"
        current = current.__cause__ or current.__context__
    return found


def _max_error(a: object, b: object) -> float:
    """Largest absolute difference, relative to the output's scale when it exceeds 1
    (random-weight networks without normalization produce large logits)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return math.inf
        if not a.numel():
            return 0.0
        scale = max(1.0, float(a.abs().max()))
        return float((a - b).abs().max()) / scale
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((_max_error(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return 0.0 if a == b else math.inf


def _worker(name: str, kwargs: dict) -> ModelReport:
    torch.set_num_threads(1)  # one model per core: the pool runs them side by side
    return check_model(name, **kwargs)


def model_names(patterns: Sequence[str] = ()) -> list[str]:
    """torchvision's classification models, optionally filtered by shell patterns."""
    import torchvision

    names = list(torchvision.models.list_models(module=torchvision.models))
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return names


def run(names: Sequence[str], *, workers: int = 2, log: bool = True,
        on_report: Callable[[ModelReport], None] | None = None, tasks_per_child: int = 1,
        **kwargs: object) -> list[ModelReport]:
    """Check `names` in `workers` processes (`tasks_per_child` models per process, so a
    model's memory is returned when its process ends; 0: processes live on); results in
    order. `on_report` sees each report as soon as it is done (to cache it)."""
    reports: dict[str, ModelReport] = {}
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             max_tasks_per_child=tasks_per_child or None) as pool:
        futures = {pool.submit(_worker, n, kwargs): n for n in names}
        for future in as_completed(futures):
            name = futures[future]
            try:
                rep = future.result()
            except Exception as err:  # the worker died (out of memory, ...)
                rep = ModelReport(name, 0, error=f"{type(err).__name__}: {err}")
            reports[name] = rep
            if on_report is not None:
                on_report(rep)
            if log:
                ok = "verified" if rep.verified else "NOT VERIFIED"
                print(f"[{len(reports)}/{len(names)}] {name}: {rep.status}, {ok}, "
                      f"{rep.searchable}/{rep.groups} groups, {rep.seconds:.0f}s",
                      file=sys.stderr, flush=True)
    return [reports[n] for n in names]


def _macs(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _status(rep: ModelReport) -> str:
    if rep.error is not None:
        return f"**failed**: {rep.error}"
    if not rep.fixed:
        return "full"
    reasons = "; ".join(f"{count} {'group' if count == 1 else 'groups'}: {why}"
                        for why, count in sorted(rep.fixed.items(), key=lambda kv: -kv[1]))
    return f"partial ({reasons})"


def _verified(rep: ModelReport) -> str:
    if rep.verified:
        return "yes"
    problems = []
    if rep.full_error > TOLERANCE:
        problems.append(f"full width differs from the original by {rep.full_error:.1e}")
    if rep.max_error > TOLERANCE:
        problems.append(f"export error {rep.max_error:.1e}")
    if not rep.macs_exact:
        problems.append("MACs differ")
    if not rep.train_ok:
        problems.append("training forward fails")
    return "**no**" + (f" ({', '.join(problems)})" if problems else "")


def render(reports: Sequence[ModelReport]) -> str:
    """docs/coverage.md for `reports`."""
    import torchvision

    counts = Counter(r.status for r in reports)
    verified = sum(r.verified for r in reports)
    lines = [
        "# Coverage: torchvision classification models",
        "",
        "<!-- Generated by `make coverage` (python -m widthsearch coverage --out "
        "docs/coverage.md). Do not edit by hand. -->",
        "",
        f"Every model of `torchvision.models.list_models(module=torchvision.models)` "
        f"(torch {torch.__version__.split('+')[0]}, torchvision "
        f"{torchvision.__version__.split('+')[0]}), converted with "
        "`ws.Supernet(model, example_input, pattern=\"cafenet\")` at its smallest valid "
        "input (`models.smallest_input_size`, batch 1, 10 classes, random weights).",
        "",
        f"**{len(reports)} models: {counts.get('full', 0)} full, {counts.get('partial', 0)} "
        f"partial, {counts.get('failed', 0)} failed; {verified} verified.**",
        "",
        "- *groups*: slimmable channel groups / all groups that hold a layer's channels (the "
        "model input and the logits are always fixed).",
        "- *slimmable MACs*: the share of the full model's MACs that involve a slimmable group "
        "(a conv or linear layer with a slimmable input or output).",
        "- *MACs min / max*: at the smallest widths and at full width (exact, batch 1).",
        "- *verified*: at the smallest, the largest and random widths with random channel "
        f"assignments, the exported plain model matches the supernet to {TOLERANCE:g} and "
        "its FlopCounterMode MACs / 2 equal `net.cost(cfg).macs`; a training-mode forward "
        "(auxiliary heads included) runs at the smallest widths.",
        "- *status*: **full** when every group but the model input and output slims, else "
        "**partial** with the fixed groups and why (see docs/rules.md to teach discovery an "
        "op).",
        "",
        "| model | input | groups | slimmable MACs | MACs min / max | verified | status |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.name} | {r.input_size} | {r.searchable} / {r.groups} | "
            f"{100 * r.slimmable_share:.1f}% | {_macs(r.macs_min)} / {_macs(r.macs_max)} | "
            f"{_verified(r)} | {_status(r)} |")
    notes = _notes(reports)
    if notes:
        lines += ["", "## Why some models are partial", "", *notes]
    return "\n".join(lines) + "\n"


def _notes(reports: Sequence[ModelReport]) -> list[str]:
    text = {
        "vit": "ViT: nn.MultiheadAttention ties its heads to the embedding width, and the "
        "class token and position embedding are added to it, so the embedding width stays "
        "full; the MLP hidden width of every block slims.",
        "swin": "Swin: the window attention splits the embedding width into heads, so the "
        "stage widths stay full; every block's MLP hidden width slims (and Swin V2's "
        "continuous position bias MLP). At 32 px the attention runs on windows padded from "
        "8x8 to 14x14 tokens, so it holds most of the MACs; at 224 px the MLPs hold more.",
        "maxvit": "MaxViT: the attention reshapes its output to the input width, so the "
        "stage widths stay full; the MBConv expansions, squeeze-excitations and MLP hidden "
        "widths slim.",
    }
    partial = {r.name for r in reports if r.status == "partial"}
    return [f"- {note}" for key, note in text.items()
            if any(n.startswith(key) for n in partial)]


def write_table(reports: Sequence[ModelReport], out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(reports))
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", choices=("torchvision", "timm"), default="torchvision",
                   help="torchvision: every classification model; timm: one default variant "
                   "of every CNN family (needs widthsearch[timm])")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown file to write (default: docs/coverage.md, or "
                   "docs/coverage-timm.md with --zoo timm)")
    p.add_argument("--models", nargs="+", default=[], metavar="PATTERN",
                   help="only these models (torchvision names, or timm family names with "
                   "--zoo timm; shell patterns, e.g. 'resnet*')")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="models checked in parallel, one process and thread each")
    p.add_argument("--configs", type=int, default=2,
                   help="random width configurations per model besides min and max")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="--zoo timm: keep one JSON report per variant in DIR and reuse those "
                   "that are full and verified (rerun only the others)")


def main_args(args: argparse.Namespace) -> int:
    from .errors import WidthSearchError

    if args.zoo == "timm":
        return _main_timm(args)
    names = model_names(args.models)
    if not names:
        raise WidthSearchError(f"no torchvision model matches {' '.join(args.models)}")
    reports = run(names, workers=max(1, args.workers), configs=args.configs)
    path = write_table(reports, args.out or Path("docs/coverage.md"))
    print(f"wrote {path}: {sum(r.verified for r in reports)}/{len(reports)} verified",
          file=sys.stderr)
    return 0 if all(r.status != "failed" for r in reports) else 1


def _main_timm(args: argparse.Namespace) -> int:
    from . import coverage_timm
    from .errors import WidthSearchError
    from .models import timm as timm_zoo

    if not timm_zoo.available():
        raise WidthSearchError("--zoo timm needs timm: pip install 'widthsearch[timm]'")
    fams = coverage_timm.families(args.models)
    if not fams:
        raise WidthSearchError(f"no timm family matches {' '.join(args.models)}")
    variants = coverage_timm.default_variants(fams, args.cache)
    cached = {v: rep for v in variants
              if args.cache is not None and (rep := coverage_timm.load_cached(args.cache, v))}
    todo = [v for v in variants if v not in cached]
    store = None if args.cache is None else functools.partial(coverage_timm.store, args.cache)
    fresh = run(todo, workers=max(1, args.workers), configs=args.configs, zoo="timm",
                on_report=store, tasks_per_child=0)  # workers live on: timm imports slowly
    cached.update({rep.name: rep for rep in fresh})
    rows = [(f, cached[v]) for f, v in zip(fams, variants, strict=True)]
    path = Path(args.out or "docs/coverage-timm.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(coverage_timm.render(rows))
    reports = [r for _, r in rows]
    print(f"wrote {path}: {sum(r.verified for r in reports)}/{len(reports)} verified, "
          f"{len(todo)} checked, {len(variants) - len(todo)} from the cache", file=sys.stderr)
    return 0 if not any(r.silently_wrong for r in reports) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m widthsearch.coverage",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


__all__ = ["ModelReport", "check_model", "model_names", "render", "run", "write_table"]


if __name__ == "__main__":
    sys.exit(main())
