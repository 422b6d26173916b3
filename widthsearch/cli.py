"""The `widthsearch` command.

Subcommands live in one table (`COMMANDS`): each is a function taking the parsed
arguments and returning an exit code, registered with `@command(name, help, arguments)`
where `arguments(parser)` declares its options. Adding a subcommand is one decorated
function; `main` dispatches, and turns every failure into one line on stderr:

    exit 2    `error: ...`: a mistake a user can make (WidthSearchError: bad config, missing
              file or dataset, unknown model, damaged or foreign checkpoint, a run locked by
              another process) or an OS error (full disk, permissions)
    exit 130  Ctrl-C (during training a checkpoint is saved first; also during start-up)
    exit 1    `internal error: ...`: a bug; `--debug` (anywhere on the line) shows the
              traceback of any failure instead
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from .errors import WidthSearchError

__all__ = ["COMMANDS", "Command", "build_parser", "command", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1
QUICKSTART_DIR = Path("runs/quickstart")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, argument declarations and implementation."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str,
            arguments: Callable[[argparse.ArgumentParser], None] | None = None
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register `fn(args) -> exit code` as subcommand `name`."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"subcommand {name!r} is already registered")
        COMMANDS[name] = Command(name, help, arguments, fn)
        return fn

    return register


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (the usage is one --help away)."""

    def error(self, message: str) -> Any:  # argparse's hook; never returns
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="widthsearch",
        description="Find how many channels each layer of a CNN should keep under a budget.")
    parser.add_argument("--version", action="version", version=f"widthsearch {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure (may be given anywhere)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.arguments is not None:
            cmd.arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code."""
    from ._startup import restore_interrupt

    restore_interrupt()
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    args_list = [a for a in args_list if a != "--debug"]
    try:
        return _dispatch(args_list)
    except BaseException as e:  # noqa: BLE001 (every failure becomes one line)
        if debug and not isinstance(e, SystemExit):
            raise
        return _report(e)


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    return int(args._run(args))


def _report(error: BaseException) -> int:
    """Print `error` as one line and return the exit code it deserves."""
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else EXIT_USAGE
    trainer = sys.modules.get("widthsearch.train.trainer")  # loaded if training ran
    if trainer is not None and isinstance(error, trainer.TrainingInterrupted):
        if error.run_dir is not None:
            _err(f"interrupted at step {error.step}; checkpoint saved in {error.run_dir}. "
                 f"Resume with: widthsearch train --resume {error.run_dir}")
        else:
            _err(f"interrupted at step {error.step}")
        return EXIT_INTERRUPTED
    if isinstance(error, KeyboardInterrupt):
        _err("interrupted; a run resumes from its last checkpoint with "
             "widthsearch train --resume RUN_DIR")
        return EXIT_INTERRUPTED
    if isinstance(error, (WidthSearchError, OSError, yaml.YAMLError)):
        message = _one_line(error)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            message += " (the disk is full; files written before are intact)"
        _err(f"error: {message}")
        return EXIT_USAGE
    if isinstance(error, MemoryError):
        _err("error: out of memory; use a smaller data.batch_size or model")
        return EXIT_USAGE
    _err(f"internal error: {type(error).__name__}: {_one_line(error)} "
         "(rerun with --debug for the traceback)")
    return EXIT_INTERNAL


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.strerror}: {error.filename}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


# ------------------------------------------------------------------------------ train


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config (default: all defaults)")
    p.add_argument("--run-dir", type=Path,
                   help="new run directory (default: runs/<model>-<strategy>-<time>)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend",
                   default=[], help="override config entries, e.g. optim.lr=0.05 data.subset=1000")
    p.add_argument("--data", type=Path, help="dataset folder (sets data.root)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


@command("train", "Train a weight-sharing supernet (torchrun --nproc_per_node N -m widthsearch "
         "train ... for several processes).", _train_arguments)
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.distributed import broadcast_object, cleanup, init_distributed
    from .train.trainer import Trainer

    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    progress = False if args.no_progress else None
    try:
        if args.resume is not None:
            if args.config is not None or args.run_dir is not None:
                raise WidthSearchError("--resume takes the run's own config and directory; "
                                       "drop --config / --run-dir")
            trainer = Trainer.resume(args.resume, overrides=overrides, progress=progress)
            if trainer.dist.is_main:
                state = "finished" if trainer.finished else "resuming"
                _err(f"{args.resume}: {state} at step {trainer.step}/{trainer.total_steps}")
        else:
            config = load_config(args.config, overrides)
            dist = init_distributed(config.train.device)
            run_dir = args.run_dir
            if run_dir is None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                name = f"{config.model.name.replace(':', '-')}-{config.strategy.name}-{stamp}"
                run_dir = Path(str(broadcast_object(str(Path("runs") / name))))
            trainer = Trainer(config, run_dir, dist=dist, progress=progress)
        result = trainer.fit()
        if trainer.dist.is_main:
            print_results(result.val, title=f"{result.run_dir} (step {result.step}/"
                                            f"{result.total_steps})")
        return 0
    finally:
        cleanup()


def print_results(val: dict[str, dict[str, float]], *, title: str = "",
                  console: Console | None = None) -> None:
    """The val accuracy and MACs of the evaluated widths as a table on stdout."""
    console = console or Console()
    if not val:
        console.print("no evaluation yet (it runs at the end of every epoch)")
        return
    table = Table(title=f"val accuracy: {title}" if title else "val accuracy")
    for col in ("width", "accuracy", "loss", "MACs", "MACs / full"):
        table.add_column(col, justify="left" if col == "width" else "right")
    for label, m in val.items():
        table.add_row(label, f"{m['accuracy']:.2%}", f"{m['loss']:.4f}", _human(m["macs"]),
                      f"{m['macs_ratio']:.3f}")
    console.print(table)


# ------------------------------------------------------------------------------ quickstart


def _quickstart_arguments(p: argparse.ArgumentParser) -> None:
    from .quickstart import SIZES

    p.add_argument("--run-dir", type=Path, default=QUICKSTART_DIR,
                   help=f"where the run goes (default: {QUICKSTART_DIR}); running again "
                        "resumes it")
    p.add_argument("--data", type=Path, help="Fashion-MNIST folder (default: the Debian "
                   "package location or $WIDTHSEARCH_DATA)")
    p.add_argument("--size", choices=tuple(SIZES), default="default",
                   help="default: sized for under 10 minutes on 2 CPU cores; tiny: a smoke test in "
                        "seconds whose numbers mean nothing")
    p.add_argument("--tiny", dest="size", action="store_const", const="tiny",
                   help="the same as --size tiny")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.epilog = ("example: widthsearch quickstart   (then open runs/quickstart/report.html)")


@command("quickstart", "Fashion-MNIST end to end: train a CafeNet supernet (ResNet-20), "
         "search widths at 1/2 and 1/4 of its MACs, fine-tune them, train the uniform multiplier "
         "at the same MACs, test all once, print one table, write the report and exports.",
         _quickstart_arguments)
def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import print_summary, run_quickstart

    record = run_quickstart(args.run_dir, size=args.size, data=args.data,
                            progress=False if args.no_progress else None)
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the table
        console = Console(width=120)
    print_summary(record, console)
    return 0


# ------------------------------------------------------------------------------ inspect


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help='a zoo name (resnet20, ...), "torchvision:<name>", or a run '
                                 "directory (shows where its supernet was trained)")
    p.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="with a run directory: mark this budget on the trained-cost plot")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="example input (default: the model's own)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--in-channels", type=int, help="input channels (default: C of --input-size)")
    p.add_argument("--pattern", default="leftmost", choices=("leftmost", "cafenet", "bcnet"),
                   help="width pattern (default: leftmost)")
    p.add_argument("--min-ratio", type=float, default=0.25, help="smallest width ratio")
    p.add_argument("--divisions", type=int, default=16, help="about this many widths per group")
    p.add_argument("--bins", action="store_true",
                   help="show the FLOPs-sensitive bin space that training searches")


@command("inspect", "Show a model's channel groups, their allowed widths and its cost range.",
         _inspect_arguments)
def cmd_inspect(args: argparse.Namespace) -> int:
    if Path(args.model).is_dir():
        return _inspect_run(Path(args.model), args.budget)
    import torch

    from . import models
    from .supernet import Supernet

    if args.divisions < 1:
        raise WidthSearchError(f"--divisions must be at least 1, got {args.divisions}")
    if not 0 < args.min_ratio <= 1:
        raise WidthSearchError(f"--min-ratio must be in (0, 1], got {args.min_ratio}")
    for flag, value in (("--num-classes", args.num_classes), ("--in-channels", args.in_channels)):
        if value is not None and not 1 <= value <= 100_000:
            raise WidthSearchError(f"{flag} must be between 1 and 100000, got {value}")
    in_channels = args.in_channels
    if args.input_size is not None:
        c, h, w = args.input_size
        if min(args.input_size) < 1 or max(args.input_size) > 8192:
            raise WidthSearchError(f"--input-size must be between 1 and 8192, got {c} {h} {w}")
        if in_channels is not None and in_channels != c:
            raise WidthSearchError(f"--in-channels {in_channels} disagrees with --input-size C={c}")
        in_channels = c
    else:
        c, h, w = models.default_input_size(args.model, in_channels)
    kwargs: dict[str, Any] = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    model = models.get(args.model, **kwargs)
    model.eval()
    console = Console()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = Supernet(model, torch.zeros(1, c, h, w), pattern=args.pattern,
                       min_ratio=args.min_ratio, divisions=args.divisions)
        if args.bins:
            from .bins import apply_bins

            apply_bins(net, min_ratio=args.min_ratio)
    space = net.space

    table = Table(title=f"{args.model}: {len(space)} channel groups, "
                        f"{len(space.searchable)} searchable (input {c}x{h}x{w}, "
                        f"pattern {args.pattern})")
    for col in ("group", "size", "members", "producers", "widths"):
        table.add_column(col, justify="right" if col in ("size", "members") else "left",
                         overflow="fold")
    for g in space.groups:
        if g.fixed:
            widths = f"fixed: {g.fixed}"
        else:
            widths = _compact(g.choices) + (f" (step {g.step})" if g.step > 1 else "")
        table.add_row(g.name, str(g.size), str(len(g.members)),
                      ", ".join(g.producers) or "-", widths)
    console.print(table)

    full, small = net.cost(space.max()), net.cost(space.min())
    costs = Table(title="cost range (batch 1; MACs = multiply-accumulates)")
    for col in ("", "min config", "max config", "min / full"):
        costs.add_column(col, justify="left" if not col else "right")
    ratio = small.ratio(full)
    costs.add_row("MACs", _human(small.macs), _human(full.macs), f"{ratio['macs']:.3f}")
    costs.add_row("params", _human(small.params), _human(full.params), f"{ratio['params']:.3f}")
    costs.add_row("memory (bytes)", _human(small.memory), _human(full.memory),
                  f"{ratio['memory']:.3f}")
    console.print(costs)
    for w in caught:
        _err(f"warning: {w.message}")
    return 0


def _inspect_run(run_dir: Path, extra_budgets: Sequence[str]) -> int:
    """Where a trained run's widths went: per-epoch quantiles of their cost, the share inside
    each budget's 0.8-1.0 window, and RUN_DIR/trained_costs.png with the budgets marked."""
    import numpy as np

    from .runs import RunDir
    from .search.budgets import parse_budget
    from .train.costs import plot_trained_costs, share_in_window

    run = RunDir.open(run_dir)
    records = [r for r in run.metrics.read() if r.get("kind") == "trained_costs"]
    if not records:
        raise WidthSearchError(
            f"{run_dir} records no trained widths yet (costs are recorded at the end of each "
            "epoch)")
    metric = records[0]["metric"]
    specs = list((run.read_config().get("train") or {}).get("budgets") or []) + list(extra_budgets)
    budgets = []
    for spec in specs:
        b = parse_budget(spec)
        if b.metric == metric:
            budgets.append((b.spec, b.fraction if b.fraction is not None
                            else b.value / float(records[-1]["full"])))
    table = Table(title=f"Widths trained in {run_dir} ({metric} / full model)")
    for col in ("epoch", "widths", "1%", "median", "99%", *(s for s, _ in budgets)):
        table.add_column(col, justify="right")
    for r in records:
        counts = np.asarray(r["counts"], dtype=np.float64)
        cum = np.cumsum(counts) / max(counts.sum(), 1.0)
        q = [(np.searchsorted(cum, p) + 0.5) / len(counts) for p in (0.01, 0.5, 0.99)]
        shares = [share_in_window([r], metric, 0.8 * ratio, ratio) for _, ratio in budgets]
        table.add_row(str(r.get("epoch")), str(int(counts.sum())), *(f"{v:.3f}" for v in q),
                      *(f"{100 * (v or 0.0):.1f}%" for v in shares))
    Console().print(table)
    out = plot_trained_costs(records, run.path / "trained_costs.png", budgets)
    print(f"wrote {out}")
    return 0


def _coverage_arguments(p: argparse.ArgumentParser) -> None:
    from .coverage import add_arguments

    add_arguments(p)


@command("coverage", "Convert and verify every torchvision classification model (or, with "
         "--zoo timm, every timm CNN family) and write the coverage table (docs/coverage.md, "
         "docs/coverage-timm.md).", _coverage_arguments)
def cmd_coverage(args: argparse.Namespace) -> int:
    from .coverage import main_args

    return main_args(args)


def _latency_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_DIR_OR_MODEL",
                   help='a run directory, a zoo name (resnet20, ...) or "torchvision:<name>"')
    p.add_argument("-o", "--output", required=True, help="where to write the table (JSON)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                   help="runtime to time (default: torch)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size timed (default: 1)")
    p.add_argument("--samples", type=int, default=20,
                   help="random configs whose exported models check the table (default: 20)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds of the end-to-end checks (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the checked configs")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="a model's example input (default: the model's own)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--min-ratio", type=float, default=0.25, help="smallest width ratio")
    p.add_argument("--divisions", type=int, default=16, help="about this many widths per group")
    p.add_argument("--bins", action="store_true", help="the FLOPs-sensitive bin space")


@command("latency-table", "Measure a per-layer latency lookup table for every width of a "
         "supernet's space on this machine and report its error on exported models.",
         _latency_arguments)
def cmd_latency_table(args: argparse.Namespace) -> int:
    import torch

    from .search.latency import Target, measure_table

    if args.samples < 0 or args.rounds < 1:
        raise WidthSearchError("--samples must be >= 0 and --rounds >= 1")
    target = Target(backend=args.backend, device=args.device, threads=args.threads,
                    batch_size=args.batch_size)
    source = Path(args.source)
    if source.is_dir():
        from .build import load_supernet

        net = load_supernet(source).net
    else:
        from . import models
        from .supernet import Supernet

        c, h, w = args.input_size or models.default_input_size(args.source)
        kwargs: dict[str, Any] = {"in_channels": c} if args.input_size else {}
        if args.num_classes is not None:
            kwargs["num_classes"] = args.num_classes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = Supernet(models.get(args.source, **kwargs), torch.zeros(1, c, h, w),
                           min_ratio=args.min_ratio, divisions=args.divisions)
        if args.bins:
            from .bins import apply_bins

            apply_bins(net, min_ratio=args.min_ratio)
    net.eval()
    console = Console(stderr=True)
    table = measure_table(net, target, samples=args.samples, rounds=args.rounds,
                          seed=args.seed, progress=console.print)
    path = table.save(args.output)
    err = table.error
    summary = (f"{path}: full width {table.full_latency * 1e3:.3f} ms, built in "
               f"{table.build_seconds:.0f} s")
    if err:
        summary += (f"; on {err['samples']} exported models MAPE {err['mape'] * 100:.1f}%, "
                    f"{err['within_10pct'] * 100:.0f}% within +-10%")
    print(summary)
    return 0
def _search_arguments(p: argparse.ArgumentParser) -> None:
    from .search.cli import add_arguments

    add_arguments(p)


@command("search", "Search the widths of a trained supernet under budgets; writes search/"
         "front.json, chosen.json and front.png.", _search_arguments)
def cmd_search(args: argparse.Namespace) -> int:
    from .search.cli import run

    return run(args)


# ------------------------------------------------------------------------------ finetune, retrain


def _finish_arguments(mode: str) -> Callable[[argparse.ArgumentParser], None]:
    example = f"""examples:
  widthsearch {mode} runs/cafenet --pick 0            # the first config of search/chosen.json
  widthsearch {mode} runs/cafenet --config widths.json --name mine
  widthsearch {mode} runs/cafenet --pick 1 --set optim.epochs=3 optim.lr=0.02
  widthsearch {mode} runs/cafenet --pick 0            # again: resumes, or prints the result

widths.json holds {{"group": width, ...}} or {{"config": {{...}}, "choice": {{...}}}}. The run
goes to RUN_DIR/{mode}/NAME (default pick-K or the file's name); the TEST split is measured
once, when training ends; the model is exported to exports/model.safetensors/.json/.onnx."""

    def arguments(p: argparse.ArgumentParser) -> None:
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = example
        p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained supernet run")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--pick", type=int, metavar="K",
                           help="entry K of RUN_DIR/search/chosen.json (0 = the first)")
        which.add_argument("--config", type=Path, metavar="JSON", help="a width config file")
        p.add_argument("--name", help="sub-run name (default: pick-K or the file's stem)")
        p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+",
                       action="extend", default=[],
                       help="override the sub-run's config, e.g. optim.epochs=3")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    return arguments


def _finish(args: argparse.Namespace, mode: str) -> int:
    from .finish import describe, finish
    from .train.distributed import cleanup

    try:
        result = finish(args.run_dir, mode, pick=args.pick, config_file=args.config,  # type: ignore[arg-type]
                        name=args.name, overrides=args.overrides,
                        progress=False if args.no_progress else None)
        if result:
            print(describe(result))
        return 0
    finally:
        cleanup()


@command("finetune", "Fine-tune a searched width from the supernet's weights, test it once "
         "and export it.", _finish_arguments("finetune"))
def cmd_finetune(args: argparse.Namespace) -> int:
    return _finish(args, "finetune")


@command("retrain", "Retrain a searched width from scratch, test it once and export it.",
         _finish_arguments("retrain"))
def cmd_retrain(args: argparse.Namespace) -> int:
    return _finish(args, "retrain")


# ------------------------------------------------------------------------------ fidelity


def _fidelity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained supernet run")
    p.add_argument("--samples", type=int, required=True, metavar="N",
                   help="widths drawn near the budget, each trained stand-alone")
    p.add_argument("--budget", default="macs=25%", metavar="METRIC=VALUE",
                   help="draw widths within --low..--high of this budget (default: macs=25%%)")
    p.add_argument("--low", type=float, default=0.8, help="window start, share of the budget")
    p.add_argument("--high", type=float, default=1.0, help="window end, share of the budget")
    p.add_argument("--epochs", type=int, help="stand-alone training epochs (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the widths drawn and scored")
    p.add_argument("--name", help="output folder under RUN_DIR/fidelity (default: the budget)")
    p.add_argument("--standalone-from", type=Path, metavar="RUN_DIR2",
                   help="train the stand-alone runs under this run (same model, data, optim) "
                        "to share them between supernets")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+",
                   action="extend", default=[],
                   help="override the stand-alone recipe, e.g. data.subset=5000")
    p.add_argument("--recal-batches", type=int, help="BN recalibration batches per config")
    p.add_argument("--val-batches", type=int, help="val batches per config (default: all)")
    p.add_argument("--max-choices", type=int, help="cafenet: assignments tried per config")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


@command("fidelity", "Kendall tau / Spearman between the supernet's val scores and stand-alone "
         "short training of widths drawn near a budget; writes RUN_DIR/fidelity/.",
         _fidelity_arguments)
def cmd_fidelity(args: argparse.Namespace) -> int:
    from .fidelity import describe, fidelity

    ev = {k: v for k, v in (("recal_batches", args.recal_batches),
                            ("val_batches", args.val_batches),
                            ("max_choices", args.max_choices)) if v is not None}
    result = fidelity(args.run_dir, args.samples, budget=args.budget, low=args.low,
                      high=args.high, seed=args.seed, epochs=args.epochs,
                      overrides=args.overrides, standalone_run=args.standalone_from,
                      name=args.name, evaluator_options=ev,
                      progress=False if args.no_progress else None)
    print(describe(result))
    return 0


def _compact(values: Sequence[int]) -> str:
    if len(values) <= 6:
        return ", ".join(map(str, values))
    return f"{values[0]}, {values[1]}, ..., {values[-2]}, {values[-1]} ({len(values)} widths)"


# ------------------------------------------------------------------------------ slimmable


def _slimmable_arguments(p: argparse.ArgumentParser) -> None:
    from .slimmable import add_arguments

    add_arguments(p)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = """examples:
  widthsearch export runs/cafenet --pick 0              # config 0 of search/chosen.json
  widthsearch export runs/cafenet --config widths.json --out exports/mine

The subnet is cut from the trained supernet and its BN statistics recalibrated on
training batches; nothing is trained (widthsearch finetune trains it further)."""
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a trained supernet run")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pick", type=int, metavar="K",
                       help="entry K of RUN_DIR/search/chosen.json (0 = the first)")
    which.add_argument("--config", type=Path, metavar="JSON", help="a width config file")
    p.add_argument("--out", type=Path, help="folder (default RUN_DIR/exports/pick-K)")
    p.add_argument("--recal-batches", type=int, default=20,
                   help="training batches for BN recalibration (0: keep the supernet's)")


@command("export", "Export a searched width of a trained supernet as a plain model "
         "(safetensors + JSON + ONNX), BN recalibrated, without training.", _export_arguments)
def cmd_export(args: argparse.Namespace) -> int:
    from .finish import export_target

    if args.recal_batches < 0:
        raise WidthSearchError(f"--recal-batches must be >= 0, got {args.recal_batches}")
    paths = export_target(args.run_dir, pick=args.pick, config_file=args.config, out=args.out,
                          recal_batches=args.recal_batches)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


@command("slimmable", "Build the run-time slimmable network of a trained run (joslim, slim, "
         "two-stage): levels along the val accuracy-vs-cost front, one file, a plot.",
         _slimmable_arguments)
def cmd_slimmable(args: argparse.Namespace) -> int:
    from .slimmable import main_args

    return main_args(args)


# ------------------------------------------------------------------------------ report


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run directory (training, search, finishing, slimmable results)")
    p.add_argument("--title", help="the report's title (default: the run directory's name)")
    p.epilog = "example: widthsearch report runs/quickstart   (writes report.md, report.html)"


@command("report", "Write report.md and one self-contained report.html (plots inlined) "
         "from whatever a run directory holds.", _report_arguments)
def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .runs import RunDir

    RunDir.open(args.run_dir)  # a folder that is no run is one clear error, not an empty report
    paths = write_report(args.run_dir, title=args.title)
    print(f"wrote {paths['html']} and {paths['markdown']}")
    return 0
