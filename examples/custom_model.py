"""Your own model and your own data, end to end from Python: supernet -> train -> search ->
export. The model is a plain nn.Module written here (no widthsearch layers); the data is any
iterable of (images, labels) batches, here a torch DataLoader over generated images.

    python examples/custom_model.py                 # a minute on a CPU
    python examples/custom_model.py --steps 20 --out /tmp/custom   # seconds (what the test runs)

For data on disk, an image folder works without code: `data: {name: imagefolder}` in a run
config and `widthsearch train --config ... --data DIR` (DIR/train/<class>/*, DIR/val/<class>/*).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import widthsearch as ws
from widthsearch.train.strategies import build_strategy


class TinyNet(nn.Module):
    """A small CNN with a residual block: discovery ties the widths the add couples."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                   nn.Conv2d(64, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.Conv2d(32, 96, 3, stride=2, padding=1), nn.BatchNorm2d(96),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(96, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.head(x)


def stripes(n: int, seed: int) -> TensorDataset:
    """Your dataset: 16x16 RGB images whose class is the orientation of noisy stripes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    coords = torch.arange(16, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    waves = torch.stack([xx, yy, xx + yy, xx - yy])  # one direction per class
    images = torch.sin(waves[labels] * 1.3).unsqueeze(1).expand(-1, 3, -1, -1).clone()
    images += 0.5 * torch.randn(images.shape, generator=g)
    return TensorDataset(images, labels)


def main(steps: int = 300, out: Path = Path("runs/custom"), seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    train = DataLoader(stripes(2048, seed), batch_size=64, shuffle=True)
    val = DataLoader(stripes(256, seed + 1), batch_size=128)
    test = DataLoader(stripes(512, seed + 2), batch_size=128)

    net = ws.Supernet(TinyNet(), example_input=torch.randn(1, 3, 16, 16), pattern="cafenet")
    print(net.space.summary())
    strategy = build_strategy("cafenet")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(seed)
    step = 0
    while step < steps:
        for x, y in train:
            net.train()
            opt.zero_grad(set_to_none=True)
            strategy.step(net, x, y, loss_fn=F.cross_entropy, generator=g)
            opt.step()
            step += 1
            if step >= steps:
                break

    # Search on VAL only: BN recalibrated on training batches, CafeNet's best free choice.
    evaluator = ws.Evaluator(net, train, val, recal_batches=2, max_choices=2)
    result = ws.search_widths(net, ["macs=50%"], "random", evaluator=evaluator,
                              out_dir=out / "search", samples=12)
    chosen = result.chosen[0].record
    model = net.export(chosen.config, chosen.choice).eval()
    # The TEST split, once, on the finished model.
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    accuracy = correct / len(test.dataset)
    ws.save(model, out / "exports" / "tinynet-half")
    ws.to_onnx(model, torch.randn(1, 3, 16, 16), out / "exports" / "tinynet-half.onnx")
    full = net.cost(net.space.max()).macs
    macs = net.cost(chosen.config).macs
    print(f"searched widths: {macs / full:.0%} of the MACs, val {chosen.accuracy:.2%}, "
          f"test {accuracy:.2%}; exported to {out / 'exports'}")
    return {"val_accuracy": chosen.accuracy, "test_accuracy": accuracy,
            "macs_ratio": macs / full}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--out", type=Path, default=Path("runs/custom"), help="output folder")
    args = parser.parse_args()
    main(args.steps, args.out)
