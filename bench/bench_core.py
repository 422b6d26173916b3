"""Core benchmarks: cost-model throughput and the overhead of dynamic execution.

    python bench/bench_core.py --out bench/results/core.json

1. Configs per second of the vectorized cost model (MACs + params + memory) on torchvision
   resnet50 and mobilenet_v2 at 224 px.
2. Supernet forward+backward time at a config divided by the exported plain model's time at
   the same config, per pattern, measured interleaved in one run (ratio; ideal 1.0).
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
import torch.nn.functional as F

import widthsearch as ws
from widthsearch.patterns import LocallyFree


def cost_model_throughput(name: str, n_configs: int, repeats: int) -> dict:
    model = ws.models.get(f"torchvision:{name}", num_classes=1000)
    net = ws.Supernet(model, torch.randn(1, 3, 224, 224))
    gen = torch.Generator().manual_seed(0)
    widths = net.space.widths_of_indices(net.space.sample_indices(n_configs, gen))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.cost_model.macs(widths)
        net.cost_model.params(widths)
        net.cost_model.memory(widths)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"model": f"torchvision:{name}", "configs": n_configs, "groups": len(net.space),
            "seconds": best, "configs_per_second": n_configs / best}


def _step_time(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = F.cross_entropy(module(x), y)
    loss.backward()
    return time.perf_counter() - start


def dynamic_overhead(model_name: str, pattern, batch: int, steps: int, ratio: float) -> dict:
    torch.manual_seed(0)
    in_channels = 1
    model = ws.models.get(model_name, num_classes=10, in_channels=in_channels)
    x = torch.randn(batch, in_channels, 28, 28)
    y = torch.randint(0, 10, (batch,))
    net = ws.Supernet(model, x[:1], pattern=pattern).train()
    cfg = net.space.uniform(ratio)
    gen = torch.Generator().manual_seed(0)
    choice = net.sample_choice(cfg, gen)  # a non-leftmost assignment where the pattern has one
    plain = net.export(cfg, choice).train()
    net.activate(cfg, choice)
    for _ in range(3):  # warm-up
        _step_time(net, x, y)
        _step_time(plain, x, y)
    dyn, ref = [], []
    for _ in range(steps):  # interleaved, so machine noise hits both alike
        dyn.append(_step_time(net, x, y))
        ref.append(_step_time(plain, x, y))
    return {"model": model_name, "pattern": repr(net.pattern), "width_ratio": ratio,
            "batch": batch, "supernet_ms": 1e3 * statistics.median(dyn),
            "exported_ms": 1e3 * statistics.median(ref),
            "ratio": statistics.median(dyn) / statistics.median(ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/core.json"))
    parser.add_argument("--configs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": args.threads, "cpu": platform.processor() or platform.machine()},
               "cost_model": [], "overhead": []}
    for name in ("resnet50", "mobilenet_v2"):
        r = cost_model_throughput(name, args.configs, repeats=5)
        print(f"cost model {r['model']}: {r['configs_per_second']:,.0f} configs/s "
              f"({r['configs']} configs in {r['seconds'] * 1e3:.1f} ms)")
        results["cost_model"].append(r)
    for model_name in ("resnet20", "mobilenetv2"):
        for pattern in ("leftmost", LocallyFree(r=1), "bcnet"):
            for ratio in (1.0, 0.5):
                batch = 64 if model_name == "resnet20" else 16  # mobilenetv2 keeps 28 px maps
                r = dynamic_overhead(model_name, pattern, batch=batch, steps=args.steps, ratio=ratio)
                print(f"overhead {model_name} {r['pattern']} width {ratio}: "
                      f"supernet {r['supernet_ms']:.1f} ms / exported {r['exported_ms']:.1f} ms "
                      f"= {r['ratio']:.3f}")
                results["overhead"].append(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
