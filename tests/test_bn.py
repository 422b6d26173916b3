"""BN recalibration: it recomputes a subnet's statistics exactly (cumulative average), lifts a
narrow width's accuracy over stale full-width statistics, and can be undone with bn_state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import widthsearch as ws
from widthsearch.errors import WidthSearchError
from widthsearch.train import build_strategy
from widthsearch.train.bn import bn_modules, bn_state, evaluate, load_bn_state, recalibrate_bn

sys.path.insert(0, str(Path(__file__).parent))
from test_strategies import fashion_images, supernet, train_epochs  # noqa: E402


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def trained() -> tuple[ws.Supernet, torch.Tensor, torch.Tensor]:
    """A supernet trained briefly with the sandwich rule (labels only: a teacher this young
    hurts the narrow widths), and its training images."""
    torch.set_num_threads(1)
    x, y = fashion_images(256)
    net = supernet("leftmost", 0.5)
    train_epochs(net, build_strategy("sandwich", n=1, distill=False), x, y, epochs=3, batch=32, lr=0.025)
    return net, x, y


def test_recalibration_raises_narrow_width_accuracy(trained) -> None:  # noqa: ANN001
    net, x, y = trained
    snapshot = bn_state(net)
    xv, yv = fashion_images(512, offset=1000)  # held-out images
    val, recal = batches(xv, yv, 128), batches(x, y, 64)
    try:
        recalibrate_bn(net, net.space.max(), None, recal, 4)  # statistics of the full width
        full = evaluate(net, None, None, val)
        stale = evaluate(net, net.space.min(), None, val)  # min width, full-width statistics
        fresh = evaluate(net, net.space.min(), None, val, recal_batches=4, recal_loader=recal)
        after = evaluate(net, net.space.min(), None, val)
    finally:
        load_bn_state(net, snapshot)
    print(f"accuracy: full width {full['accuracy']:.3f}; min width with full-width BN "
          f"{stale['accuracy']:.3f} (loss {stale['loss']:.3f}), recalibrated "
          f"{fresh['accuracy']:.3f} (loss {fresh['loss']:.3f})")
    assert fresh["samples"] == stale["samples"] == 512
    assert fresh["accuracy"] > stale["accuracy"] + 0.1
    assert fresh["loss"] < stale["loss"]
    assert after == stale  # evaluate restored the BN state it recalibrated


def test_recalibration_is_the_cumulative_average_of_the_active_channels(trained) -> None:  # noqa: ANN001
    net, x, y = trained
    snapshot = bn_state(net)
    bn = dict((name, m) for name, m, _ in bn_modules(net))["model.bn1"]
    cfg = net.space.min()
    width = cfg["conv1"]
    seen, modes = [], []

    def grab(module, inputs, output) -> None:  # noqa: ANN001
        seen.append(inputs[0].detach().clone())
        modes.append((module.training, net.model.fc.training, torch.is_grad_enabled()))

    hook = bn.register_forward_hook(grab)
    before_momentum = bn.momentum
    net.train()
    try:
        used = recalibrate_bn(net, cfg, None, batches(x, y, 32), num_batches=3)
    finally:
        hook.remove()
    assert used == 3 and len(seen) == 3
    assert set(modes) == {(True, False, False)}  # BN in train mode, the rest eval, no grad
    assert bn.momentum == before_momentum and net.training and net.model.fc.training
    assert net.config == net.space.max()
    means = torch.stack([t.mean(dim=(0, 2, 3)) for t in seen])
    variances = torch.stack([t.var(dim=(0, 2, 3), unbiased=True) for t in seen])
    assert torch.allclose(bn.running_mean[:width], means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var[:width], variances.mean(0), atol=1e-4)
    assert int(bn.num_batches_tracked) == 3
    # inactive channels keep their statistics; the buffers are still the ones the state dict holds
    assert torch.equal(bn.running_mean[width:], snapshot["model.bn1.running_mean"][width:])
    assert bn._buffers["running_mean"].data_ptr() == \
        net.state_dict()["model.bn1.running_mean"].data_ptr()
    load_bn_state(net, snapshot)


def test_bn_state_round_trip(trained) -> None:  # noqa: ANN001
    net, x, y = trained
    snapshot = bn_state(net)
    assert snapshot and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                            for k in snapshot)
    recalibrate_bn(net, net.space.min(), None, batches(x, y, 64), 2)
    changed = bn_state(net)
    assert any(not torch.equal(changed[k], snapshot[k]) for k in snapshot)
    load_bn_state(net, snapshot)
    restored = bn_state(net)
    assert all(torch.equal(restored[k], snapshot[k]) for k in snapshot)
    for _, module, owner in bn_modules(net):
        assert module.running_var.data_ptr() == owner.running_var.data_ptr()
    with pytest.raises(WidthSearchError):
        load_bn_state(net, {k: v for k, v in snapshot.items() if "bn1" not in k})
    with pytest.raises(WidthSearchError):
        load_bn_state(net, {**snapshot, "nope.running_mean": torch.zeros(1)})


def test_evaluate_errors_and_options(trained) -> None:  # noqa: ANN001
    net, x, y = trained
    data = batches(x[:64], y[:64], 32)
    with pytest.raises(WidthSearchError, match="recal_loader"):
        evaluate(net, None, None, data, recal_batches=2)
    with pytest.raises(WidthSearchError, match="no batches"):
        evaluate(net, None, None, [])
    with pytest.raises(WidthSearchError, match="no batches"):
        recalibrate_bn(net, None, None, [], 1)
    one = evaluate(net, None, None, data, max_batches=1)
    assert one["samples"] == 32
    mean_ce = evaluate(net, None, None, data, loss_fn=F.cross_entropy)
    assert mean_ce["loss"] == pytest.approx(evaluate(net, None, None, data)["loss"], rel=1e-5)
