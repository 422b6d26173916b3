"""The joslim strategy and its slim / two-stage baselines: re-scoring on val without moving
BN statistics, the training step, tau, exact resume, and identical histories over 2 ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_trainer import make, tiny_config, write_tiny_fashion

import widthsearch as ws
from widthsearch.config import load_config
from widthsearch.errors import WidthSearchError
from widthsearch.train.bn import bn_state
from widthsearch.train.joslim import Joslim, Slim, TwoStage, history_widths, rescore
from widthsearch.train.proposers import WidthOptimizer
from widthsearch.train.strategies import build_strategy
from widthsearch.train.trainer import Trainer

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fashion(tmp_path_factory.mktemp("data") / "fashion-mnist")


def joslim_config(root: Path, name: str = "joslim", **options: Any) -> dict[str, Any]:
    opts = {"tau": 2, "prior_points": 2, **options} if name == "joslim" else {"tau": 2, **options}
    return tiny_config(root, supernet={"pattern": "leftmost"},
                       strategy={"name": name, "options": opts})


def small_net() -> ws.Supernet:
    torch.manual_seed(0)
    model = ws.models.get("resnet20", num_classes=10, in_channels=1, width_mult=0.5)
    return ws.Supernet(model, torch.randn(2, 1, 28, 28))


class CountingLoader:
    """A val loader that counts how many batches were read from it."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.read = batches, 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for b in self.batches:
            self.read += 1
            yield b

    def __len__(self) -> int:
        return len(self.batches)


def test_registered_with_validated_options() -> None:
    assert isinstance(build_strategy("joslim"), Joslim)
    assert isinstance(build_strategy("slim"), Slim)
    assert isinstance(build_strategy("two-stage"), TwoStage)
    with pytest.raises(WidthSearchError, match="cost must name a cost"):
        build_strategy("joslim", cost=3)
    unknown = build_strategy("joslim", cost="flops")
    with pytest.raises(WidthSearchError, match="unknown cost 'flops'|'flops'"):
        unknown.step(small_net().train(), torch.randn(2, 1, 28, 28), torch.tensor([0, 1]),
                     loss_fn=torch.nn.functional.cross_entropy,
                     generator=torch.Generator().manual_seed(0))
    with pytest.raises(WidthSearchError, match="lo must be"):
        build_strategy("slim", lo=0)
    with pytest.raises(WidthSearchError, match="unknown option"):
        build_strategy("two-stage", beta=0.1)
    with pytest.raises(WidthSearchError, match="proposer must be one of bo, nsga2, random, uniform"):
        build_strategy("joslim", proposer="nsga3")
    with pytest.raises(WidthSearchError, match="population must be an integer >= 2"):
        build_strategy("joslim", proposer="nsga2", population=1)


def test_tau_follows_the_run_length() -> None:
    s = build_strategy("joslim")
    s.attach(total_steps=100_000, val=None)
    assert s.tau == 200  # 100k steps * 2 widths / 1000 widths
    s.attach(total_steps=50, val=None)
    assert s.tau == 10  # the floor for short runs
    fixed = build_strategy("joslim", tau=7)
    fixed.attach(total_steps=100_000)
    assert fixed.tau == 7


def test_rescore_leaves_bn_statistics_and_modes_untouched() -> None:
    net = small_net().train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = bn_state(net)
    configs = [net.space.max(), net.space.min(), net.space.uniform(0.5)]
    losses = rescore(net, configs, x, y)
    after = bn_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and all(m.training for m in net.modules())
    assert net.config == net.space.max()
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    # batch statistics: the same as a train-mode forward of that width
    with torch.no_grad(), net.activate(net.space.min()):
        expected = torch.nn.functional.cross_entropy(net(x), y)
    assert torch.allclose(losses[1], expected)


def test_steps_train_full_current_and_smallest_and_rescore_on_val() -> None:
    net = small_net().train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    val = CountingLoader([(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
                          for _ in range(3)])
    s = build_strategy("joslim", tau=2, prior_points=2, M=2)
    with pytest.raises(WidthSearchError, match="val batches"):
        s.step(net, x, y, loss_fn=torch.nn.functional.cross_entropy,
               generator=torch.Generator().manual_seed(0))
    s = build_strategy("joslim", tau=2, prior_points=2, M=2)
    s.attach(total_steps=10, val=val)
    seen: list[Any] = []
    original = net.activate

    def spy(config=None, choice=None):  # type: ignore[no-untyped-def]
        seen.append(config)
        return original(config, choice)

    net.activate = spy  # type: ignore[method-assign]
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        metrics = s.step(net, x, y, loss_fn=torch.nn.functional.cross_entropy, generator=g)
        assert {"loss", "loss_min", "loss_widths"} <= metrics.keys()
    trained = [c for c in seen if c is not None]
    assert trained.count(net.space.max()) >= 4 and s.smallest() in trained
    assert len(s.current) == 2
    # updates at steps 0 and 2; step 0 has no history yet, step 2 re-scores it on val
    assert val.read == 2 and s.updates == 2
    assert len(s.proposer.history) == 2 and np.isfinite(s.proposer.losses).all()
    assert s.proposer.asked == 4


class EveryOtherMultiplier(WidthOptimizer):
    """A user's optimizer: multipliers 0.6 and 0.9 in turn, to see that it drives training."""

    name = "every-other"

    def _propose(self, n: int, generator: torch.Generator) -> np.ndarray:
        ratios = [(0.6, 0.9)[(self.asked + i) % 2] for i in range(n)]
        return self.encoder.uniform(np.asarray(ratios))


class UsersJoslim(Joslim):
    def make_proposer(self, encoder: Any, cost_fn: Any) -> WidthOptimizer:
        return EveryOtherMultiplier(encoder, cost_fn)


@pytest.mark.parametrize("proposer", ["nsga2", "random", "uniform", "users"])
def test_any_width_optimizer_drives_the_trained_widths(proposer: str) -> None:
    net = small_net().train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    val = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    options = {"tau": 2, "M": 2}
    s = (UsersJoslim(**options) if proposer == "users"
         else build_strategy("joslim", proposer=proposer, **options))
    s.attach(total_steps=10, val=val)
    trained = []
    for step in range(4):
        s.step(net, x, y, loss_fn=torch.nn.functional.cross_entropy,
               generator=torch.Generator().manual_seed(step))
        trained.append(list(s.current))
    assert s.proposer.asked == 4 and s.trained.count(s.current[0]) >= 1
    assert np.isfinite(s.proposer.losses).all()  # re-scored on val like the BO's widths
    one_multiplier = {tuple(w) for w in s.encoder.uniform(np.linspace(0.42, 1, 5000))}
    on_line = [tuple(s.encoder.to_widths([c])[0]) in one_multiplier for c in sum(trained, [])]
    assert all(on_line) if proposer in ("uniform", "users") else not all(on_line)
    if proposer == "users":
        expected = [list(s.encoder.configs(s.encoder.uniform(np.asarray(r))))
                    for r in ([0.6, 0.9], [0.6, 0.9])]
        assert trained == [expected[0], expected[0], expected[1], expected[1]]


def test_slim_trains_one_multiplier_and_two_stage_per_group_widths() -> None:
    net = small_net().train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for name, uniform in (("slim", True), ("two-stage", False)):
        s = build_strategy(name, tau=2, M=3)
        trained = []
        for step in range(4):
            s.step(net, x, y, loss_fn=torch.nn.functional.cross_entropy,
                   generator=torch.Generator().manual_seed(step))
            trained += s.current
        one_multiplier = {tuple(w) for w in s.encoder.uniform(np.linspace(0.42, 1, 5000))}
        on_line = [tuple(s.encoder.to_widths([c])[0]) in one_multiplier for c in trained]
        assert all(on_line) if uniform else not all(on_line)
        assert len(s.proposer.history) <= 6  # the widths of steps 0 and 2


@pytest.mark.parametrize("proposer", ["bo", "nsga2", "random"])
def test_killed_joslim_run_resumes_exactly(data_root: Path, tmp_path: Path, proposer: str) -> None:
    config = joslim_config(data_root, proposer=proposer)
    config["optim"]["epochs"] = 1  # 4 steps, updates at steps 0 and 2
    whole = make(config, tmp_path / "whole")
    whole.fit()
    part = make(config, tmp_path / "part")
    part.fit(max_steps=3)  # stops mid-epoch, between two updates
    del part
    resumed = Trainer.resume(tmp_path / "part", console=whole.console, progress=False)
    resumed.fit()
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    a, b = whole.strategy.state_dict(), resumed.strategy.state_dict()
    assert a["proposer"]["widths"] == b["proposer"]["widths"]
    assert a["proposer"]["losses"] == b["proposer"]["losses"]
    assert a["current"] == b["current"]
    for k in a["proposer"].get("gp", {}):
        assert torch.equal(a["proposer"]["gp"][k], b["proposer"]["gp"][k])
    assert ("gp" in a["proposer"]) == (proposer == "bo")
    assert len(history_widths(a, len(whole.net.space))) == len(a["proposer"]["widths"])


@pytest.mark.parametrize("name", ["slim", "two-stage"])
def test_baselines_train_through_the_trainer(data_root: Path, name: str) -> None:
    trainer = make(joslim_config(data_root, name))
    result = trainer.fit(max_steps=4)
    assert result.step == 4 and len(trainer.strategy.proposer.history) >= 1


_WORKER = """
import os, sys, pathlib
import torch
from widthsearch.cli import main
from widthsearch.train import trainer as T

out = pathlib.Path(sys.argv[1])
rank = int(os.environ["RANK"])
fit = T.Trainer.fit

def fit_and_dump(self, *args, **kwargs):
    result = fit(self, *args, **kwargs)
    p = self.strategy.proposer
    torch.save({"widths": torch.as_tensor(p.widths), "losses": torch.as_tensor(p.losses),
                "current": [c.to_dict() for c in self.strategy.current],
                "weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()}},
               out / f"rank{rank}.pt")
    return result

T.Trainer.fit = fit_and_dump
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow  # two torchrun processes: about 30 s on one core
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_two_ranks_hold_the_same_history(data_root: Path, tmp_path: Path) -> None:
    config = joslim_config(data_root)
    config["data"]["batch_size"] = 32  # 256 images over 2 ranks: 4 steps per epoch
    load_config(config)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path),
           "train", "--config", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run"),
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["widths"]) >= 3
    assert torch.equal(r0["widths"], r1["widths"])
    assert torch.equal(r0["losses"], r1["losses"])  # averaged over ranks: equal everywhere
    assert r0["current"] == r1["current"]
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key
