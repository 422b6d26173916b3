"""Joslim proposal speed and bisection hit rate at a large history.

    python bench/bench_joslim.py --out bench/results/joslim.json

A 30-group chain of 3x3 convs (group i feeds group i+1; MACs = sum of w_i * w_{i+1} * 9 *
positions, the same bilinear form the cost model evaluates) and a synthetic loss surface
(loss falls with every group's width, with per-group importance and noise). The history is
filled with `--points` scored random widths; then `--rounds` proposal rounds of M = 2 widths
are timed (each round refits the warm-started GP, as training does after a re-score), and
the bisection's hits / misses are counted. Target: one round <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from widthsearch.space import ChannelGroup, WidthSpace, default_choices
from widthsearch.train.proposers import JoslimProposer, WidthEncoder


def chain_space(groups: int, size: int) -> WidthSpace:
    choices = default_choices(size, min_ratio=0.25, step=max(1, size // 16))
    return WidthSpace(tuple(ChannelGroup(f"g{i}", size, choices, step=size // 16)
                            for i in range(groups)))


def chain_macs(widths: np.ndarray) -> np.ndarray:
    w = np.atleast_2d(widths).astype(np.float64)
    return (w[:, :-1] * w[:, 1:]).sum(axis=1) * 9 * 64


def synthetic_loss(ratios: np.ndarray, importance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Diminishing returns per group: loss = 2 + sum_g importance_g * log(1 / ratio_g)."""
    return 2.0 - (importance * np.log(ratios)).sum(axis=1) + 0.02 * rng.standard_normal(len(ratios))


def history_widths(encoder: WidthEncoder, n: int, rng: np.random.Generator) -> np.ndarray:
    """A history shaped like Joslim's: 20 one-multiplier widths, the full network, then
    per-group widths spread over the whole cost range (BO proposals aim at cost levels
    drawn uniformly), not concentrated at the mean cost as independent draws would be."""
    prior = encoder.uniform(0.42 + 0.58 * rng.random(20))
    centers = 0.42 + 0.58 * rng.random((n - 21, 1))
    spread = centers + 0.12 * rng.standard_normal((n - 21, encoder.num_dims))
    return np.concatenate([prior, encoder.full()[None, :], encoder.widths(spread)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/joslim.json"))
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    space = chain_space(args.groups, 64)
    encoder = WidthEncoder(space, lo=0.42)
    proposer = JoslimProposer(encoder, chain_macs, seed=0)
    rng = np.random.default_rng(0)
    importance = rng.uniform(0.2, 1.0, args.groups) / args.groups
    widths = history_widths(encoder, args.points, rng)
    proposer.asked = 21  # past the prior points and the full network
    proposer.full_done = True
    proposer.tell(encoder.configs(widths), synthetic_loss(encoder.ratios(widths), importance, rng))

    times = []
    for r in range(args.rounds):
        start = time.perf_counter()
        configs = proposer.ask(2)
        times.append(time.perf_counter() - start)
        new = encoder.to_widths(configs)
        proposer.tell(configs, synthetic_loss(encoder.ratios(new), importance, rng))
        # as in training: the whole history is re-scored before the next round
        scored = np.flatnonzero(np.isfinite(proposer.losses))
        proposer.losses[scored] += 0.001 * rng.standard_normal(len(scored))
        print(f"round {r}: {times[-1]:.3f} s, history {len(proposer.history)}", flush=True)
    s = proposer.stats
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads, "cpu": platform.processor() or platform.machine()},
        "groups": args.groups, "history_points": args.points, "proposals_per_round": 2,
        "gp_points": proposer.max_points, "warm_iters": proposer.warm_iters,
        "round_seconds": times,
        "first_round_seconds": times[0],
        "median_round_seconds": statistics.median(times),
        "max_warm_round_seconds": max(times[1:]) if len(times) > 1 else times[0],
        "target_seconds": 2.0,
        "bisection": {"proposals": s.proposals, "hits": s.hits, "misses": s.misses,
                      "hit_rate": s.hits / max(1, s.proposals),
                      "mean_rounds": s.rounds / max(1, s.proposals)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "round_seconds"}, indent=2))


if __name__ == "__main__":
    main()
