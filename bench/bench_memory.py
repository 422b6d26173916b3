"""Bounded memory: resident memory while a supernet evaluates many random configurations.

Activates N random (config, choice) pairs of a CafeNet supernet and runs a forward at each
(or at every k-th: the caches grow on activation, the forward allocates nothing that stays),
recording the process's resident memory after the first 100 and after all N, and the time per
configuration. Run it on two checkouts side by side to compare (PYTHONPATH picks the code):

    PYTHONPATH=. python bench/bench_memory.py --configs 10000 --out bench/results/memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import psutil
import torch
import torchvision

import widthsearch as ws


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--configs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--forward-every", type=int, default=1,
                        help="run the forward at every k-th configuration (1: at all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=10)
    x = torch.randn(1, 3, args.size, args.size)
    net = ws.Supernet(model, x, pattern="cafenet").eval()
    gen = torch.Generator().manual_seed(0)
    marks: dict[int, float] = {}
    start = time.perf_counter()
    first_100 = 0.0
    with torch.no_grad():
        for i in range(1, args.configs + 1):
            cfg = net.space.sample(gen)
            net.activate(cfg, net.sample_choice(cfg, gen))
            if i % args.forward_every == 0:
                net(x)
            if i == 100:
                first_100 = time.perf_counter() - start
                marks[i] = rss_mb()
            if i % 1000 == 0 or i == args.configs:
                marks[i] = rss_mb()
    total = time.perf_counter() - start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(ws.__file__).parent).stdout.strip()
    result = {
        "model": args.model, "input": [1, 3, args.size, args.size], "configs": args.configs,
        "forward_every": args.forward_every,
        "commit": commit, "rss_mb": marks,
        "growth_mb_after_first_100": marks[args.configs] - marks[100],
        "ms_per_config": 1000 * total / args.configs,
        "ms_per_config_first_100": 10 * first_100,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
