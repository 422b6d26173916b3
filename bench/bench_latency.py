"""Latency lookup tables: their error against exported models and how long they take.

    python bench/bench_latency.py --out bench/results/latency.json

For each model (zoo resnet20 and mobilenetv2 at their default input, 3x32x32, batch 1) and
backend, a table is measured for every width of the default space (one intra-op thread),
then checked against the end-to-end latency of exported models at random configurations
(interleaved rounds, medians). Reported: MAPE, the share within +-10%, the build time, and
the same error with the rest of the forward as the plain constant (full-width end-to-end
minus the layers) instead of the fitted constant + per-element term. The machine is shared
by other jobs, so every timing is a median and a reference is timed throughout to scale
the load out (see widthsearch/search/latency.py).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

import widthsearch as ws
from widthsearch.search.latency import LatencyTable, Target, measure_table, table_error


def constant_only(net: ws.Supernet, table: LatencyTable) -> dict:
    """The table's error had the rest been one constant (end-to-end minus the layers at
    full width), from the same measurements."""
    plain = LatencyTable(**{**table.__dict__, "per_element": 0.0, "constant": 0.0})
    full = net.space.to_vector(net.space.max())[None].astype(np.float64)
    plain.constant = table.full_latency - float(plain.predict(net.cost_model, full)[0])
    gen = torch.Generator().manual_seed(table.error["seed"])
    configs = [net.space.sample(gen) for _ in range(table.error["samples"])]
    err = table_error(net, plain, configs, table.error["measured"])
    return {k: err[k] for k in ("mape", "median_ape", "within_10pct", "max_abs_error",
                                "mean_error")}


def run(name: str, backend: str, samples: int, rounds: int, tables: Path) -> dict:
    torch.manual_seed(0)
    c, h, w = ws.models.default_input_size(name)
    net = ws.Supernet(ws.models.get(name), torch.zeros(1, c, h, w)).eval()
    table = measure_table(net, Target(backend=backend), samples=samples, rounds=rounds,
                          progress=lambda msg: print(f"  {name} {backend}: {msg}", flush=True))
    table.save(tables / f"latency-table-{name}-{backend}.json")
    err = table.error
    pairs = sum(len(t) for t in table.times.values())
    return {
        "model": name, "backend": backend, "input": [c, h, w], "batch_size": 1,
        "layers": len(table.layers), "distinct_shapes": len(table.shapes), "timings": pairs,
        "build_seconds": table.build_seconds, "full_ms": table.full_latency * 1e3,
        "constant_ms": table.constant * 1e3, "per_element_ns": table.per_element * 1e9,
        "samples": err["samples"], "rounds": err["rounds"], "mape": err["mape"],
        "median_ape": err["median_ape"],
        "within_10pct": err["within_10pct"], "max_abs_error": err["max_abs_error"],
        "mean_error": err["mean_error"], "constant_only": constant_only(net, table),
        "measured_ms": [t * 1e3 for t in err["measured"]],
        "predicted_ms": [t * 1e3 for t in err["predicted"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/latency.json")
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": Target().describe()["cpu"], "platform": platform.platform(),
                           "torch": torch.__version__, "threads": 1,
                           "note": "2 cores shared with other jobs: timings are noisy"},
               "runs": []}
    for backend in args.backends:
        for name in args.models:
            results["runs"].append(run(name, backend, args.samples, args.rounds, out.parent))
            out.write_text(json.dumps(results, indent=1))  # keep what is done
            r = results["runs"][-1]
            print(f"{name} {backend}: MAPE {r['mape'] * 100:.1f}%, "
                  f"{r['within_10pct'] * 100:.0f}% within 10%, built in "
                  f"{r['build_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
