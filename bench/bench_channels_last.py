"""Training step time with contiguous (NCHW) against channels-last (NHWC) weights.

One step as the sandwich-style strategies take it (full width, two random widths, the
smallest width: a forward and backward each, then one SGD step) on a zoo supernet, at
Fashion-MNIST size. The two memory formats alternate step by step in one process, so the
machine's load falls on both alike; the ratio of the medians is the result.

    python bench/bench_channels_last.py --models resnet20 mobilenetv2 --batch 128 \
        --steps 12 --out bench/results/channels-last.json
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
import torch.nn.functional as F

import widthsearch as ws
from widthsearch.safeio import atomic_write_text


def supernet(model: str, batch: int) -> tuple[ws.Supernet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = ws.Supernet(ws.models.get(model, num_classes=10, in_channels=1),
                      torch.randn(2, 1, 28, 28))
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    return net, x, y


def step_seconds(net: ws.Supernet, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, generator: torch.Generator) -> float:
    configs = [net.space.max(), net.space.sample(generator), net.space.sample(generator),
               net.space.min()]
    start = time.perf_counter()
    optimizer.zero_grad()
    for cfg in configs:
        net.activate(cfg)
        F.cross_entropy(net(x), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(model: str, batch: int, steps: int) -> dict[str, Any]:
    nets = {}
    for fmt in ("contiguous", "channels_last"):
        net, x, y = supernet(model, batch)
        if fmt == "channels_last":
            net.to(memory_format=torch.channels_last)
        nets[fmt] = (net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), x, y,
                     torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {fmt: [] for fmt in nets}
    for i in range(steps + 1):  # the first step of each warms up and is dropped
        for fmt, (net, opt, x, y, gen) in nets.items():
            seconds = step_seconds(net, opt, x, y, gen)
            if i:
                times[fmt].append(seconds)
    medians = {fmt: statistics.median(t) for fmt, t in times.items()}
    return {"step_seconds": {fmt: round(m, 3) for fmt, m in medians.items()},
            "speedup": round(medians["contiguous"] / medians["channels_last"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/channels-last.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "command": (f"python bench/bench_channels_last.py --models {' '.join(args.models)} "
                    f"--batch {args.batch} --steps {args.steps} --threads {args.threads}"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads, "processor": platform.processor()},
        "models": {}}
    for model in args.models:
        results["models"][model] = measure(model, args.batch, args.steps)
        print(model, results["models"][model], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
