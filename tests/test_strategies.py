"""Training strategies: each one trains ResNet-20 on Fashion-MNIST images and its loss falls;
CafeNet's min-min backpropagates exactly its lowest candidate, agreed across ranks; BCNet
alternates complementary widths and resumes; the registry rejects what it does not know."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import widthsearch as ws
from widthsearch.errors import WidthSearchError
from widthsearch.train import (
    STRATEGIES,
    Strategy,
    build_strategy,
    complementary,
    distill_loss,
)
from widthsearch.train.bn import bn_state, load_bn_state

FASHION = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def fashion_images(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first images of Fashion-MNIST's train file (only the bytes needed are unzipped),
    normalized; separable synthetic images of the same shape when the data is missing."""
    images, labels = FASHION / "train-images-idx3-ubyte.gz", FASHION / "train-labels-idx1-ubyte.gz"
    if images.is_file() and labels.is_file():
        with gzip.open(images, "rb") as f:
            raw = f.read(16 + (offset + n) * 784)
        with gzip.open(labels, "rb") as f:
            lab = f.read(8 + offset + n)
        assert int.from_bytes(raw[:4], "big") == 2051 and int.from_bytes(lab[:4], "big") == 2049
        x = np.frombuffer(raw, np.uint8, n * 784, 16 + offset * 784).reshape(n, 1, 28, 28)
        y = np.frombuffer(lab, np.uint8, n, 8 + offset)
        x_t = (torch.from_numpy(x.copy()).float() / 255 - MEAN) / STD
        return x_t, torch.from_numpy(y.copy()).long()
    g = torch.Generator().manual_seed(1234)  # ten fixed templates plus noise
    templates = torch.randn(10, 1, 28, 28, generator=g)
    g.manual_seed(offset + 1)
    y_t = torch.randint(0, 10, (n,), generator=g)
    return templates[y_t] + 0.8 * torch.randn(n, 1, 28, 28, generator=g), y_t



def supernet(pattern: object = "leftmost", width_mult: float = 0.5) -> ws.Supernet:
    torch.manual_seed(0)
    model = ws.models.get("resnet20", num_classes=10, in_channels=1, width_mult=width_mult)
    return ws.Supernet(model, torch.randn(1, 1, 28, 28), pattern=pattern)


def train_epochs(net: ws.Supernet, strategy: object, x: torch.Tensor, y: torch.Tensor, *,
                 epochs: int, batch: int, lr: float) -> list[float]:
    """Plain SGD loop as the Trainer runs it; the mean "loss" metric of every epoch."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator()
    means = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        losses = []
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            generator.manual_seed(10_000 * epoch + start)  # the Trainer's per-step seed
            opt.zero_grad(set_to_none=True)
            metrics = strategy.step(net, x[idx], y[idx], loss_fn=F.cross_entropy,
                                    generator=generator)
            opt.step()
            losses.append(metrics["loss"])
        means.append(float(np.mean(losses)))
    return means


# Sum-of-gradients scaling: lr shrinks with the widths a step trains (sandwich: 4;
# cafenet, bcnet: 2; single path: 1, with smaller batches for more steps).
TRAINING = {
    "sandwich": ("leftmost", {}, 0.025, 32),
    "cafenet": ("cafenet", {}, 0.05, 32),
    "bcnet": ("bcnet", {}, 0.05, 32),
    "single-path": ("leftmost", {}, 0.05, 16),
}


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_loss_falls(name: str) -> None:
    pattern, options, lr, batch = TRAINING[name]
    x, y = fashion_images(256)
    net = supernet(pattern)
    strategy = build_strategy(name, **options)
    means = train_epochs(net, strategy, x, y, epochs=3, batch=batch, lr=lr)
    print(f"{name}: mean loss per epoch {[round(m, 3) for m in means]}")
    assert all(np.isfinite(means))
    assert means[-1] < means[0] - 0.15
    assert net.config == net.space.max() and net.choice == {}  # widths restored after a step


def test_registry_rejects_unknown_names_and_options() -> None:
    assert set(STRATEGIES) == {"sandwich", "cafenet", "bcnet", "single-path", "joslim", "slim",
                               "two-stage"}
    with pytest.raises(WidthSearchError, match="unknown strategy 'joslim-typo'"):
        build_strategy("joslim-typo")
    with pytest.raises(WidthSearchError, match="unknown option"):
        build_strategy("sandwich", k=3)
    for name, bad in [("cafenet", {"K": 0}), ("sandwich", {"distill": "yes"}),
                      ("sandwich", {"n": -1}), ("single-path", {"min_ratio": 1.5}),
                      ("cafenet", {"temperature": 0}), ("bcnet", {"distill": True,
                                                                  "max_width_step": False})]:
        with pytest.raises(WidthSearchError):
            build_strategy(name, **bad)
    assert build_strategy("cafenet", K=4).K == 4


@pytest.mark.parametrize("name", ["sandwich", "cafenet", "bcnet", "single-path"])
def test_shared_options_are_checked_alike(name: str) -> None:
    for option, bad, message in [("uniform", 1, "option uniform must be true or false, got 1"),
                                 ("min_ratio", 0, r"option min_ratio must be a number in \(0, 1\]"),
                                 ("distill", None, "option distill must be true or false"),
                                 ("temperature", -1, "option temperature must be a positive")]:
        if option in STRATEGIES[name].defaults:
            with pytest.raises(WidthSearchError, match=message):
                build_strategy(name, **{option: bad})
    if "distill" in STRATEGIES[name].defaults:  # checked in order: distill first
        with pytest.raises(WidthSearchError, match="option distill"):
            build_strategy(name, distill=1, uniform=1, temperature=0)


def test_strategy_base_is_abstract() -> None:
    with pytest.raises(TypeError, match="_step"):
        Strategy()  # type: ignore[abstract]


def test_patterns_are_checked() -> None:
    x, y = fashion_images(8)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(WidthSearchError, match="locally free"):
        build_strategy("cafenet").step(supernet("leftmost", 0.25), x, y,
                                       loss_fn=F.cross_entropy, generator=g)
    with pytest.raises(WidthSearchError, match="bilateral"):
        build_strategy("bcnet").step(supernet("cafenet", 0.25), x, y,
                                     loss_fn=F.cross_entropy, generator=g)


def _grads(net: ws.Supernet) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in net.parameters()]


def _loss_alone(net: ws.Supernet, cfg: object, choice: object, x: torch.Tensor,
                y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    with net.activate(cfg, choice):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    return float(loss.detach()), _grads(net)


def test_min_min_backpropagates_the_lowest_candidate() -> None:
    net = supernet("cafenet", 0.25)
    x, y = fashion_images(32)
    strategy = build_strategy("cafenet", K=4, max_width_step=False, distill=False)
    winners = []
    for seed in range(4):
        before = bn_state(net)
        net.zero_grad(set_to_none=True)
        metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy,
                                generator=torch.Generator().manual_seed(seed))
        after, stepped = bn_state(net), _grads(net)
        candidates = strategy.last_candidates
        assert candidates[0][1] == {}  # the leftmost assignment is always a candidate
        assert len({tuple(sorted(c.items())) for _, c in candidates}) == len(candidates)
        assert metrics["candidates"] == len(candidates) >= 2
        # recompute every candidate's loss on the same batch: the winner is the argmin
        recomputed = [_loss_alone(net, cfg, choice, x, y)[0] for cfg, choice in candidates]
        assert recomputed == pytest.approx(strategy.last_losses, abs=1e-5)
        winner = int(metrics["winner"])
        assert winner == int(np.argmin(recomputed))
        assert metrics["loss_min"] == pytest.approx(recomputed[winner], abs=1e-5)
        assert metrics["loss_leftmost"] == pytest.approx(recomputed[0], abs=1e-5)
        # the step's gradients are those of the winner's loss alone
        load_bn_state(net, before)
        _, alone = _loss_alone(net, *candidates[winner], x, y)
        for a, b in zip(stepped, alone, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        # the losing candidates left the BN running statistics alone: only the winner moved them
        for key in before:
            assert torch.allclose(bn_state(net)[key], after[key], atol=1e-6), key
        load_bn_state(net, after)
        winners.append(winner)
    assert any(w != 0 for w in winners), winners  # not just the leftmost every time
    print(f"min-min winners over 4 steps: {winners}")


def test_min_min_follows_the_rank_averaged_losses() -> None:
    net = supernet("cafenet", 0.25)
    x, y = fashion_images(32)
    strategy = build_strategy("cafenet", K=3, max_width_step=False, distill=False)
    for favored in (0, 1, 2):
        calls: list[torch.Tensor] = []

        def reduce_mean(t: torch.Tensor, favored: int = favored,
                        calls: list[torch.Tensor] = calls) -> torch.Tensor:
            calls.append(t.detach().clone())  # another rank sees lower loss for `favored`
            bias = torch.full_like(t, 10.0)
            bias[favored] = -10.0
            return (t + (t + bias)) / 2

        net.zero_grad(set_to_none=True)
        metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy,
                                generator=torch.Generator().manual_seed(7),
                                reduce_mean=reduce_mean)
        assert len(calls) == 1 and calls[0].shape == (3,)
        assert metrics["winner"] == favored
        assert strategy.last_losses[favored] == min(strategy.last_losses)
        stepped = _grads(net)
        _, alone = _loss_alone(net, *strategy.last_candidates[favored], x, y)
        for a, b in zip(stepped, alone, strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_sandwich_sums_the_gradients_of_its_widths() -> None:
    net = supernet("leftmost", 0.25)
    x, y = fashion_images(32)
    strategy = build_strategy("sandwich", n=0, distill=False)
    net.zero_grad(set_to_none=True)
    metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy,
                            generator=torch.Generator().manual_seed(0))
    stepped = _grads(net)
    loss_max, g_max = _loss_alone(net, net.space.max(), None, x, y)
    loss_min, g_min = _loss_alone(net, net.space.min(), None, x, y)
    assert metrics["loss"] == pytest.approx(loss_max, abs=1e-5)
    assert metrics["loss_min"] == pytest.approx(loss_min, abs=1e-5)
    for a, b, c in zip(stepped, g_max, g_min, strict=True):
        assert torch.allclose(a, b + c, atol=1e-5)


def test_sandwich_distills_non_max_widths_and_samples_one_ratio() -> None:
    net = supernet("leftmost", 0.25)
    x, y = fashion_images(32)
    strategy = build_strategy("sandwich", n=1, distill=True, uniform=True)
    net.zero_grad(set_to_none=True)
    strategy.step(net, x, y, loss_fn=F.cross_entropy, generator=torch.Generator().manual_seed(3))
    stepped = _grads(net)
    cfg = strategy.last_config
    assert cfg in {net.space.uniform(r) for r in np.linspace(0.25, 1.0, 301)}  # one multiplier
    # expected: CE at max width + KL(max || min) + KL(max || random), teacher detached
    net.zero_grad(set_to_none=True)
    with net.activate(net.space.max()):
        logits = net(x)
    F.cross_entropy(logits, y).backward()
    teacher = logits.detach()
    for sub in (net.space.min(), cfg):
        with net.activate(sub):
            distill_loss(net(x), teacher).backward()
    for a, b in zip(stepped, _grads(net), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_bcnet_trains_both_sides_then_the_complement_and_resumes() -> None:
    net = supernet("bcnet", 0.25)
    x, y = fashion_images(16)
    strategy = build_strategy("bcnet", max_width_step=False)
    g = torch.Generator()
    net.zero_grad(set_to_none=True)
    metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy, generator=g.manual_seed(0))
    first = strategy.last_config
    stepped = _grads(net)
    left, g_left = _loss_alone(net, first, 0, x, y)
    right, g_right = _loss_alone(net, first, 1, x, y)
    assert metrics["loss_left"] == pytest.approx(left, abs=1e-5)
    assert metrics["loss_right"] == pytest.approx(right, abs=1e-5)
    for a, b, c in zip(stepped, g_left, g_right, strict=True):
        assert torch.allclose(a, 0.5 * (b + c), atol=1e-6)

    state = strategy.state_dict()
    assert state["pending"] == complementary(net.space, first).to_dict()
    resumed = build_strategy("bcnet", max_width_step=False)
    resumed.load_state_dict(state)
    for s in (strategy, resumed):
        s.step(net, x, y, loss_fn=F.cross_entropy, generator=g.manual_seed(1))
        assert s.last_config == complementary(net.space, first)
    for name in net.space.names:
        group = net.space[name]
        target = group.size - first[name] if first[name] < group.size else group.size
        want = min(group.choices, key=lambda w, t=target: (abs(w - t), -w))
        assert strategy.last_config[name] == want
        if group.slimmable and first[name] < group.size:
            assert want == target  # drawn from the balanced widths: the complement is exact
    assert strategy.state_dict()["pending"] is None  # the next step draws a fresh width
    with pytest.raises(WidthSearchError):
        resumed.load_state_dict({"name": "cafenet"})


def test_complementary_widths() -> None:
    net = supernet("bcnet", 0.25)
    space = net.space
    group = space["layer3.0.conv1"]  # 16 channels, widths 4..16
    assert group.size == 16 and group.choices[0] == 4
    cfg = space.validate({"layer3.0.conv1": 4})
    assert complementary(space, cfg)["layer3.0.conv1"] == 12
    cfg = space.validate({"layer3.0.conv1": 15})
    assert complementary(space, cfg)["layer3.0.conv1"] == 4  # 1 is below the range: snapped
    cfg = space.validate({"layer3.0.conv1": 16})
    assert complementary(space, cfg)["layer3.0.conv1"] == 16  # full width: its own complement
    assert complementary(space, space.max())["fc"] == 10  # fixed groups stay full


def test_distill_loss() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=g, requires_grad=True)
    teacher = torch.randn(8, 10, generator=g, requires_grad=True)
    assert float(distill_loss(teacher.detach(), teacher)) == pytest.approx(0.0, abs=1e-6)
    kl = distill_loss(student, teacher, temperature=2.0)
    ref = F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1),
                   reduction="batchmean", log_target=True) * 4
    assert float(kl.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    kl.backward()
    assert teacher.grad is None  # the teacher is detached
    grad_kl = student.grad.clone()
    student.grad = None
    distill_loss(student, teacher, temperature=2.0, kind="soft_ce").backward()
    assert torch.allclose(student.grad, grad_kl, atol=1e-6)  # same gradient, offset loss
    with pytest.raises(WidthSearchError):
        distill_loss(student, teacher, kind="mse")


@pytest.mark.parametrize("max_width_step", [True, False])
def test_min_min_with_distillation_compares_the_distillation_losses(max_width_step: bool) -> None:
    net = supernet("cafenet", 0.25)
    x, y = fashion_images(32)
    strategy = build_strategy("cafenet", K=3, max_width_step=max_width_step, distill=True)
    metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy,
                            generator=torch.Generator().manual_seed(5))
    assert ("loss" in metrics) and np.isfinite(metrics["loss"])
    with torch.no_grad():
        with net.activate(net.space.max()):
            teacher = net(x)
        recomputed = []
        for cfg, choice in strategy.last_candidates:
            with net.activate(cfg, choice):
                recomputed.append(float(distill_loss(net(x), teacher)))
    assert recomputed == pytest.approx(strategy.last_losses, abs=1e-5)
    assert metrics["winner"] == int(np.argmin(recomputed))


def test_single_path_with_random_choice() -> None:
    net = supernet("cafenet", 0.25)
    x, y = fashion_images(16)
    strategy = build_strategy("single-path", random_choice=True, uniform=True)
    metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy,
                            generator=torch.Generator().manual_seed(0))
    assert np.isfinite(metrics["loss"]) and strategy.last_config is not None


def test_uniform_is_renamed_single_path() -> None:
    with pytest.raises(WidthSearchError, match="now called 'single-path'"):
        build_strategy("uniform")
    from widthsearch.config import load_config

    with pytest.raises(WidthSearchError, match="single-path"):
        load_config({"strategy": {"name": "uniform"}, "supernet": {"pattern": "leftmost"}})


class _DropoutNet(torch.nn.Module):
    """Conv-BN-ReLU, dropout, classifier: dropout noise is large next to width effects."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Dropout(0.5))
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_cafenet_candidates_and_trained_pass_share_dropout_masks() -> None:
    torch.manual_seed(0)
    net = ws.Supernet(_DropoutNet(), torch.randn(1, 1, 28, 28), pattern="cafenet", divisions=8)
    x, y = fashion_images(32)
    strategy = build_strategy("cafenet", K=4, max_width_step=False)
    for step in range(5):
        net.zero_grad(set_to_none=True)
        metrics = strategy.step(net, x, y, loss_fn=F.cross_entropy,
                                generator=torch.Generator().manual_seed(step))
        compared = strategy.last_losses[int(metrics["winner"])]
        assert metrics["loss_min"] == pytest.approx(compared, abs=1e-6)  # the same masks
        assert len(strategy.last_candidates) > 1
    g = torch.get_rng_state()  # the step advanced the global stream as one forward does
    assert not torch.equal(g, torch.manual_seed(0).get_state())


@pytest.mark.parametrize("max_width_step", [True, False])
def test_bcnet_uses_every_channel_equally_often(max_width_step: bool) -> None:
    """Per-channel usage over many steps, from the channels each bilateral pass activated:
    exactly 0.5 per pass; without the max-width step the full width is one of the pair
    widths (it uses every channel), so usage is equal across channels, above 0.5."""
    from widthsearch.patterns import Bilateral

    net = supernet("bcnet", 0.25)
    x, y = fashion_images(8)
    passes: list[tuple[ws.WidthConfig, int]] = []
    activate = net.activate

    def recording(config=None, choice=None):  # noqa: ANN001, ANN202
        if choice in (0, 1):
            passes.append((net.space.validate(config), choice))
        return activate(config, choice)

    net.activate = recording  # type: ignore[method-assign]
    strategy = build_strategy("bcnet", max_width_step=max_width_step)
    g = torch.Generator()
    for step in range(30):
        strategy.step(net, x, y, loss_fn=F.cross_entropy, generator=g.manual_seed(step))
    del net.activate
    assert len(passes) == 60
    pattern = Bilateral()
    for group in net.space.searchable:
        usage = torch.zeros(group.size, dtype=torch.float64)
        for cfg, side in passes:
            sides = pattern.choices(group.size, cfg[group.name])  # one at full width
            usage[list(sides[min(side, len(sides) - 1)])] += 1
        usage /= len(passes)
        assert float(usage.max() - usage.min()) == 0.0, (group.name, usage.tolist())
        if max_width_step:
            assert usage.tolist() == pytest.approx([0.5] * group.size, abs=1e-12)
