"""sample_at: how often a draw lands in its cost window, how fast, and how varied.

    python bench/bench_sample_at.py --out bench/results/sample_at.json

For each model and metric: 1,000 draws per window, the share inside the window, seconds per
1,000 draws, the share of distinct configs, and, for comparison, the share of uniformly
drawn widths (what rejection sampling would accept) that land in the same window.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import widthsearch as ws

MODELS = (("resnet20", (1, 1, 28, 28)), ("mobilenetv2", (1, 1, 28, 28)),
          ("torchvision:resnet18", (1, 3, 32, 32)), ("torchvision:mobilenet_v2", (1, 3, 32, 32)))
# (label, target as a fraction of the reachable range's top, low, high)
WINDOWS = (("random targets, +-2%", None, 0.98, 1.02), ("10% budget, 0.8-1.0", 0.10, 0.8, 1.0),
           ("10% budget, 0.96-1.0", 0.10, 0.96, 1.0), ("25% budget, 0.8-1.0", 0.25, 0.8, 1.0),
           ("50% budget, 0.8-1.0", 0.50, 0.8, 1.0))


def run(n: int, uniform_draws: int) -> list[dict]:
    rows = []
    for name, shape in MODELS:
        kw = {"num_classes": 10} if name.startswith("torchvision:") else \
            {"num_classes": 10, "in_channels": 1}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = ws.Supernet(ws.models.get(name, **kw), torch.randn(*shape))
        space = net.space
        uni = space.widths_of_indices(space.sample_indices(uniform_draws,
                                                           torch.Generator().manual_seed(1)))
        for metric in ("macs", "params"):
            def cost(w: np.ndarray, metric: str = metric, model=net.cost_model) -> np.ndarray:
                return model.evaluate(w, metric)

            lo, hi = cost(np.stack([space.to_vector(space.min()), space.to_vector(space.max())]))
            uni_cost = cost(uni)
            for label, frac, low, high in WINDOWS:
                gen = torch.Generator().manual_seed(0)
                if frac is None:
                    targets = np.random.default_rng(0).uniform(lo, hi, n // 20)
                    per = 20
                else:
                    if frac * hi < lo:
                        continue
                    targets, per = np.array([frac * hi]), n
                hits, draws, distinct, uni_hits = 0, 0, set(), 0
                start = time.perf_counter()
                for t in targets:
                    idx = space.sample_indices_at(cost, t, generator=gen, low=low, high=high,
                                                  n=per, strict=False)
                    c = cost(space.widths_of_indices(idx))
                    hits += int(((c >= low * t) & (c <= high * t)).sum())
                    draws += len(idx)
                    distinct |= {tuple(r) for r in idx}
                    uni_hits += int(((uni_cost >= low * t) & (uni_cost <= high * t)).sum())
                seconds = time.perf_counter() - start
                rows.append({
                    "model": name, "metric": metric, "window": label,
                    "groups": len(space.searchable), "draws": draws,
                    "hit_rate": hits / draws, "seconds_per_1000": 1000 * seconds / draws,
                    "distinct_share": len(distinct) / draws,
                    "uniform_hit_rate": uni_hits / (uniform_draws * len(targets)),
                })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sample_at.json"))
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--uniform-draws", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.draws, args.uniform_draws)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__,
                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
