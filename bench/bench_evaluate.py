"""Evaluator speed: seconds per scored subnet against the floor, one forward of the exported
model over the same recalibration + val images (eval mode, no grad).

    python bench/bench_evaluate.py --out bench/results/evaluate.json

Fashion-MNIST, zoo resnet20 (untrained: speed does not depend on the weights), batch 128,
one intra-op thread. Each subnet's evaluator time and its exported forward are measured
interleaved, per config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import widthsearch as ws
from widthsearch.data import build_data
from widthsearch.evaluate import Evaluator, candidate_choices


def _floor(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            model(x)
    return time.perf_counter() - start


def run(pattern: str, configs: int, recal: int, val: int, batch: int) -> dict:
    data = build_data("fashion-mnist", batch_size=batch, val_size=val * batch, augment=False)
    torch.manual_seed(0)
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    net = ws.Supernet(model, torch.zeros(1, 1, 28, 28), pattern=pattern)
    ev = Evaluator(net, data.recal, data.val, recal_batches=recal, max_choices=4, seed=0)
    images = list(ev._recal) + [x for x, _ in ev._val]
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(configs):
        cfg = net.space.sample(g)
        choices = candidate_choices(net, cfg, 4, 0)
        ev.clear()
        start = time.perf_counter()
        ev(cfg)
        seconds = time.perf_counter() - start
        floor = sum(_floor(net.export(cfg, ch or None), images) for ch in choices)
        rows.append({"macs_ratio": net.cost(cfg).macs / net.cost(net.space.max()).macs,
                     "subnets": len(choices), "evaluator_s": seconds, "floor_s": floor,
                     "ratio": seconds / floor})
    return {"pattern": pattern, "recal_batches": recal, "val_batches": val, "batch": batch,
            "configs": rows,
            "median_ratio": statistics.median(r["ratio"] for r in rows),
            "s_per_subnet": statistics.median(r["evaluator_s"] / r["subnets"] for r in rows),
            "floor_s_per_subnet": statistics.median(r["floor_s"] / r["subnets"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/evaluate.json"))
    p.add_argument("--configs", type=int, default=5)
    p.add_argument("--recal", type=int, default=20)
    p.add_argument("--val", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = [run(pattern, args.configs, args.recal, args.val, args.batch)
               for pattern in ("leftmost", "cafenet", "bcnet")]
    for r in results:
        print(f"{r['pattern']:9s} {r['s_per_subnet']:.3f} s/subnet, floor "
              f"{r['floor_s_per_subnet']:.3f} s, ratio {r['median_ratio']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
