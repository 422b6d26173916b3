"""Training benchmarks: throughput per strategy, the cost of weight sharing, short runs.

    python bench/bench_train.py --out bench/results/train.json
    python bench/bench_train.py --runs-only --model torchvision:shufflenet_v2_x0_5 \
        --strategies sandwich cafenet bcnet --out bench/results/train-shufflenet.json
    python bench/bench_train.py --runs-only --model torchvision:shufflenet_v2_x0_5 \
        --strategies sandwich cafenet bcnet --chunks-by-position \
        --out bench/results/train-shufflenet-by-position.json

1. Images/s of one optimizer step per strategy on ResNet-20 / Fashion-MNIST, next to training
   the full model alone (plain ResNet-20), interleaved in one run.
2. A sandwich step (max, min and two random widths) on the supernet divided by the sum of the
   step times of the four exported stand-alone subnets at the same widths (ideal 1.0).
3. A short Fashion-MNIST run per strategy (the Trainer, val split only) with the val accuracy
   at the max and min widths after BN recalibration.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import widthsearch as ws
from widthsearch.data import build_data
from widthsearch.patterns import Bilateral, LocallyFree
from widthsearch.train.strategies import build_strategy
from widthsearch.train.trainer import Trainer

STRATEGIES = {  # strategy -> the pattern it needs
    "sandwich": "leftmost", "cafenet": LocallyFree(r=1), "bcnet": Bilateral(),
    "single-path": "leftmost",
}


def _batches(n: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = build_data("fashion-mnist", batch_size=batch, subset=n * batch, val_subset=batch)
    return [b for _, b in zip(range(n), data.train, strict=False)]


def _supernet(pattern) -> ws.Supernet:
    model = ws.models.get("resnet20", num_classes=10, in_channels=1)
    return ws.Supernet(model, torch.zeros(1, 1, 28, 28), pattern=pattern).train()


def throughput(steps: int, batch: int) -> list[dict]:
    batches = _batches(steps, batch)
    runners = {}
    for name, pattern in STRATEGIES.items():
        net, strategy = _supernet(pattern), build_strategy(name)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(0)

        def run(x, y, net=net, strategy=strategy, opt=opt, gen=gen):
            opt.zero_grad()
            strategy.step(net, x, y, loss_fn=F.cross_entropy, generator=gen)
            opt.step()
        runners[name] = run
    full = ws.models.get("resnet20", num_classes=10, in_channels=1).train()
    full_opt = torch.optim.SGD(full.parameters(), lr=0.01, momentum=0.9)

    def run_full(x, y):
        full_opt.zero_grad()
        F.cross_entropy(full(x), y).backward()
        full_opt.step()
    runners["full model alone"] = run_full
    times = {k: [] for k in runners}
    for x, y in batches[:2]:  # warm-up
        for run in runners.values():
            run(x, y)
    for x, y in batches:
        for name, run in runners.items():
            start = time.perf_counter()
            run(x, y)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["full model alone"])
    return [{"strategy": k, "images_per_second": batch / statistics.median(v),
             "step_ms": 1e3 * statistics.median(v), "time_vs_full_model": statistics.median(v) / base}
            for k, v in times.items()]


def sandwich_vs_standalone(steps: int, batch: int) -> dict:
    batches = _batches(steps, batch)
    net = _supernet("leftmost")
    gen = torch.Generator().manual_seed(0)
    configs = [net.space.max(), net.space.min(), net.space.sample(gen), net.space.sample(gen)]
    subnets = [net.export(c).train() for c in configs]

    def supernet_step(x, y):
        for c in configs:
            net.activate(c)
            F.cross_entropy(net(x), y).backward()

    def standalone_steps(x, y):
        for sub in subnets:
            F.cross_entropy(sub(x), y).backward()
    sup, alone = [], []
    for x, y in batches[:2]:
        supernet_step(x, y)
        standalone_steps(x, y)
    for x, y in batches:
        start = time.perf_counter()
        supernet_step(x, y)
        sup.append(time.perf_counter() - start)
        start = time.perf_counter()
        standalone_steps(x, y)
        alone.append(time.perf_counter() - start)
    return {"widths": [net.cost(c).macs for c in configs], "supernet_step_ms": 1e3 * statistics.median(sup),
            "standalone_sum_ms": 1e3 * statistics.median(alone),
            "ratio": statistics.median(sup) / statistics.median(alone)}


def short_runs(subset: int, epochs: int, model: str, strategies: list[str]) -> list[dict]:
    out = []
    for name in strategies:
        pattern = {"cafenet": "cafenet", "bcnet": "bcnet"}.get(name, "leftmost")
        config = {
            "model": {"name": model},
            "data": {"subset": subset, "val_subset": 2000, "batch_size": 128},
            "supernet": {"pattern": pattern, "bins": name == "cafenet"},
            "strategy": {"name": name},
            "optim": {"epochs": epochs, "lr": 0.1, "warmup_epochs": 0.3},
            "train": {"seed": 0, "checkpoint_every_steps": 0},
        }
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = Trainer(config, Path(tmp) / "run", progress=False).fit()
        row = {"model": model, "strategy": name, "train_images": subset, "epochs": epochs,
               "minutes": (time.perf_counter() - start) / 60, "train_loss": result.train_loss}
        for label in ("max", "mid", "min"):
            row[f"val_accuracy_{label}"] = result.val[label]["accuracy"]
            row[f"macs_{label}"] = result.val[label]["macs"]
        print(f"run {name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items() if k != "train_loss"), flush=True)
        out.append(row)
    return out


def _cut_every_chunk_by_position() -> None:
    """The variant docs/architecture.md measures the rule against: discovery cuts every
    equal `chunk` by position, even where an exact cut exists."""
    from widthsearch.discovery.ops import splits

    exact_first = splits._exact_or_positional_cut

    def by_position(b, lay, sizes, *, by_position):  # type: ignore[no-untyped-def]
        if by_position and lay.inner == 1 and len(set(sizes)) == 1:
            cut = b.positional_split(lay.segments, len(sizes))
            if cut is not None:
                return cut
        return exact_first(b, lay, sizes, by_position=by_position)

    splits._exact_or_positional_cut = by_position


def _timings(results: dict, steps: int, batch: int) -> None:
    results["throughput"] = throughput(steps, batch)
    for r in results["throughput"]:
        print(f"throughput {r['strategy']}: {r['images_per_second']:.0f} images/s "
              f"({r['time_vs_full_model']:.2f}x the full model's step)", flush=True)
    results["sandwich_vs_standalone"] = sandwich_vs_standalone(steps, batch)
    r = results["sandwich_vs_standalone"]
    print(f"sandwich step {r['supernet_step_ms']:.0f} ms / standalone sum {r['standalone_sum_ms']:.0f} ms"
          f" = {r['ratio']:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--runs-only", action="store_true", help="only the short runs")
    parser.add_argument("--model", default="resnet20", help="the model of the short runs")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        choices=list(STRATEGIES), help="the strategies of the short runs")
    parser.add_argument("--chunks-by-position", action="store_true",
                        help="the compared variant: every chunk cut by position")
    args = parser.parse_args()
    if args.chunks_by_position:
        _cut_every_chunk_by_position()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": args.threads}}
    if not args.runs_only:
        _timings(results, args.steps, args.batch)
    if not args.skip_runs:
        results["runs"] = short_runs(args.subset, args.epochs, args.model, args.strategies)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
