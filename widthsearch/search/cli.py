"""The `widthsearch search RUN_DIR --budget ... --method ...` subcommand."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from rich.console import Console

from .api import SEARCHERS

EXIT_INTERRUPTED = 130

# command-line flag -> searcher option (only the flags given are passed on)
_OPTION_FLAGS = {
    "population": int, "generations": int, "samples": int, "top_k": int,
    "mutation_prob": float, "step": int, "low": float,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run directory")
    p.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                   help="macs=50%%, params=1.2M, memory=800KB, latency=2.5ms; repeat for "
                        "several (different metrics hold together; several values of one "
                        "metric are separate targets)")
    p.add_argument("--method", default="evolution", choices=tuple(SEARCHERS),
                   help="search method (default: evolution)")
    p.add_argument("--objective", action="append", metavar="METRIC",
                   help="a cost to minimize beside val accuracy (nsga2; repeat for several; "
                        "default: the budgets' metrics)")
    p.add_argument("--seed", type=int, default=0, help="search seed (default: 0)")
    p.add_argument("--align", type=int, metavar="N",
                   help="keep only widths that are multiples of N (hardware-aligned)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore and overwrite a saved search state instead of resuming it")
    for name, kind in _OPTION_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name,
                       help=f"{name.replace('_', ' ')} (method option; see the method's "
                            "defaults in the docs)")
    p.add_argument("--per-cost", action="store_true",
                   help="greedy: rank shrinks by accuracy lost per cost saved")
    p.add_argument("--recal-batches", type=int, help="BN recalibration batches per config")
    p.add_argument("--val-batches", type=int, help="val batches per config (default: all)")
    p.add_argument("--max-choices", type=int, help="cafenet: assignments tried per config")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from .api import search_widths
    from .output import result_table

    options: dict[str, Any] = {n: getattr(args, n) for n in _OPTION_FLAGS
                               if getattr(args, n) is not None}
    if args.per_cost:
        options["per_cost"] = True
    if args.objective:
        options["objectives"] = [m.strip().lower() for m in args.objective]
    ev_options = {k: v for k, v in (("recal_batches", args.recal_batches),
                                     ("val_batches", args.val_batches),
                                     ("max_choices", args.max_choices)) if v is not None}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = search_widths(args.run_dir, args.budget, args.method, seed=args.seed,
                                   align=args.align, resume=not args.fresh,
                                   progress=not args.quiet, evaluator_options=ev_options,
                                   **options)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"search interrupted; run the same command again to resume it from "
              f"{args.run_dir}/search/state-{args.method}.json", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    console = Console()
    console.print(result_table(result))
    console.print(f"wrote {args.run_dir}/search/front.json, chosen.json and front.png")
    missing = len(result.targets) - len(result.chosen)
    if missing:
        print(f"warning: {missing} target(s) got no config within budget", file=sys.stderr)
    return 0
