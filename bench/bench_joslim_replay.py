"""Joslim's bisection on a real training history: how often a proposal hits its target cost.

    python bench/bench_joslim_replay.py RUN_DIR [RUN_DIR ...] --proposals 100 \
        --out bench/results/joslim-replay.json

Each RUN_DIR is a Joslim run (`strategy.name=joslim`). Its newest checkpoint holds the
proposer's history (widths, exact costs, re-scored losses); the GP is fitted on it once,
then `--proposals` BO proposals are drawn with the target levels as drawn and with a level
no candidate comes within the tolerance of moved to the nearest candidate cost
(`snap_targets`). Proposal i uses a generator seeded with i under both settings, so both
draw the same target levels. Counted per setting: hits (the proposal's cost within the
tolerance of its target), misses and snapped targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from widthsearch.build import load_supernet
from widthsearch.runs import RunDir
from widthsearch.safeio import atomic_write_text
from widthsearch.train.proposers import JoslimProposer, WidthEncoder, classifier_inputs

SETTINGS = {"as drawn": False, "snapped to a candidate cost": True}


def replay(run: Path, proposals: int) -> dict[str, Any]:
    loaded = load_supernet(run)
    strategy = loaded.config.strategy
    options = strategy.options
    state = RunDir(run).load_checkpoint()["strategy"]["proposer"]
    net = loaded.net
    metric = options.get("cost", "macs")
    keep = classifier_inputs(net) if options.get("keep_last_full", True) else []
    encoder = WidthEncoder(net.space, float(options.get("lo", 0.42)), keep)

    def cost_fn(widths: Any) -> Any:
        return net.cost_model.evaluate(widths, metric)

    out: dict[str, Any] = {"metric": metric, "history": int(len(state["losses"]))}
    for label, snap in SETTINGS.items():
        proposer = JoslimProposer(encoder, cost_fn, snap_targets=snap,
                                  prior_points=int(options.get("prior_points", 20)))
        proposer.load_state_dict(state)
        model = proposer._fit(torch.Generator().manual_seed(0))
        before = proposer.stats.to_dict()
        seconds = []
        for i in range(proposals):
            start = time.perf_counter()
            proposer._bo_proposal(model, torch.Generator().manual_seed(i))
            seconds.append(time.perf_counter() - start)
        after = proposer.stats.to_dict()
        counts = {k: after[k] - before[k] for k in ("proposals", "hits", "misses",
                                                    "snapped")}
        out[label] = {**counts, "median_seconds": round(statistics.median(seconds), 4)}
        print(run.name, label, out[label], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/joslim-replay.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "command": ("python bench/bench_joslim_replay.py "
                    + " ".join(str(r) for r in args.runs)
                    + f" --proposals {args.proposals} --threads {args.threads}"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads},
        "runs": {str(run): replay(run, args.proposals) for run in args.runs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
