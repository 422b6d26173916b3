"""The training loop: loss falls, exact resume, safe checkpoints, metrics, interrupts.

Runs use a tiny learnable dataset in Fashion-MNIST's file format (written here, so the
tests need no installed data), 256 train / 128 val images, batch 64 and ResNet-20 at half
width: 4 steps per epoch, a few seconds per run on one CPU thread. The helpers at the top
are shared by test_cli.py and test_distributed.py.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from widthsearch.config import load_config
from widthsearch.errors import WidthSearchError
from widthsearch.runs import RunDir
from widthsearch.train.trainer import (
    Trainer,
    TrainingInterrupted,
    derive_seed,
    lr_factor,
    step_generator,
)

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------ shared helpers


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise plus a bright 6x6 square whose position encodes the class."""
    x = rng.integers(0, 90, (len(labels), 28, 28))
    for i, k in enumerate(labels):
        r, c = 2 + 12 * (k // 5), 1 + 5 * (k % 5)
        x[i, r:r + 6, c:c + 6] = rng.integers(180, 256, (6, 6))
    return x


def write_tiny_fashion(folder: Path, n_train: int = 600, n_test: int = 50, seed: int = 0) -> Path:
    """A Fashion-MNIST-format folder whose classes a small CNN learns in a few steps."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_y, test_y = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    arrays = (_images(train_y, rng), train_y, _images(test_y, rng), test_y)
    for name, array in zip(FILES, arrays, strict=True):
        _write_idx(folder / name, array)
    return folder


def tiny_config(root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """256 train / 128 val images, batch 64 (4 steps per epoch), ResNet-20 at half width."""
    config: dict[str, Any] = {
        "model": {"name": "resnet20", "kwargs": {"width_mult": 0.5}},
        "data": {"root": str(root), "subset": 256, "val_size": 128, "val_subset": 128,
                 "batch_size": 64, "augment": False},
        "supernet": {"pattern": "cafenet"},
        "strategy": {"name": "cafenet"},
        "optim": {"epochs": 2, "lr": 0.1, "warmup_epochs": 0.25},
        "train": {"device": "cpu", "threads": 1, "eval_recal_batches": 1,
                  "eval_max_batches": 1, "log_every_steps": 1, "checkpoint_every_steps": 3},
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return config


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def records(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fashion(tmp_path_factory.mktemp("data") / "fashion-mnist")


def make(config: dict[str, Any], run: Path | None = None) -> Trainer:
    return Trainer(load_config(config), run, console=quiet(), progress=False)


# ------------------------------------------------------------------------------ tests


def test_schedule_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert lr_factor(0, 10, 0) == 1.0


def test_step_generator_depends_only_on_seed_and_step() -> None:
    a = torch.rand(4, generator=step_generator(0, 7))
    assert torch.equal(a, torch.rand(4, generator=step_generator(0, 7)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(0, 8)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(1, 7)))
    assert 0 <= derive_seed(2**40, 3, 5) < 2**63


def test_loss_falls_and_run_dir_is_complete(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = make(tiny_config(data_root, optim={"epochs": 3}), run)
    result = trainer.fit()
    assert result.finished and result.step == result.total_steps == 12 and result.epoch == 3
    assert len(result.train_loss) == 3
    assert result.train_loss[-1] < result.train_loss[0] - 0.3, result.train_loss
    assert set(result.val) == {"max", "mid", "min"}
    assert result.val["max"]["macs_ratio"] == 1.0
    assert result.val["min"]["macs"] < result.val["mid"]["macs"] < result.val["max"]["macs"]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in result.val.values())
    # run directory: config, rotated checkpoints, metrics, final weights
    assert load_config(RunDir.open(run).read_config()) == trainer.config
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000000009.pt", "step-000000012.pt"] or len(ckpts) == 3
    assert (run / "supernet.safetensors").is_file()
    train = records(run, "train")
    assert [r["step"] for r in train] == list(range(1, 13))
    assert {"loss", "lr", "images_per_s", "epoch"} <= set(train[0])
    epochs = records(run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["val"] == result.val
    # a finished run does nothing more
    again = Trainer.resume(run, console=quiet(), progress=False)
    assert again.finished and again.fit().step == 12


def test_checkpoint_loads_with_weights_only(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = make(tiny_config(data_root, optim={"epochs": 1}), run)
    trainer.fit(max_steps=2)
    path = RunDir.open(run).latest_checkpoint()
    assert path is not None and path.name == "step-000000002.pt"
    state = torch.load(path, weights_only=True)
    assert state["step"] == 2 and state["finished"] is False
    assert {"model", "optimizer", "scheduler", "strategy", "rng", "train_loader"} <= set(state)
    assert set(state["model"]) == set(trainer.net.state_dict())
    assert state["train_loader"]["batch"] == 2


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}


class _Crash(RuntimeError):
    """A hard failure in the middle of a step, raised by the test to stop a run."""


def test_killed_and_resumed_run_matches_uninterrupted(data_root: Path, tmp_path: Path) -> None:
    config = tiny_config(data_root)  # 8 steps, checkpoints at 3, 4 (epoch), 6, 8
    full = make(config, tmp_path / "full")
    full.fit()
    expected = _state(full)

    # first stop: max_steps mid-epoch (a checkpoint is written at step 5)
    run = tmp_path / "resumed"
    first = make(config, run).fit(max_steps=5)
    assert not first.finished and first.step == 5
    # second stop: a hard crash after step 7, with no checkpoint since step 6
    second = Trainer.resume(run, console=quiet(), progress=False)
    assert second.step == 5

    def crash(trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.step == 7:
            raise _Crash

    second.on_step.append(crash)
    with pytest.raises(_Crash):
        second.fit()
    third = Trainer.resume(run, console=quiet(), progress=False)
    assert third.step == 6
    result = third.fit()
    assert result.finished and result.step == 8

    got = _state(third)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    full_opt = full.optimizer.state_dict()["state"]
    for idx, value in third.optimizer.state_dict()["state"].items():
        assert torch.equal(value["momentum_buffer"], full_opt[idx]["momentum_buffer"])

    # stopping and continuing in one process is exact too
    same = make(config)
    assert same.fit(max_steps=3).step == 3
    same.fit()
    for key, value in _state(same).items():
        assert torch.equal(value, expected[key]), key

    # metrics: no duplicated steps, the same losses as the uninterrupted run
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(1, 9))
    losses = [r["loss"] for r in records(run, "train")]
    assert losses == [r["loss"] for r in records(tmp_path / "full", "train")]
    assert [r["val"] for r in records(run, "epoch")] == \
        [r["val"] for r in records(tmp_path / "full", "epoch")]
    assert result.train_loss == full.fit().train_loss


def test_ctrl_c_saves_a_checkpoint_and_raises(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = make(tiny_config(data_root, train={"checkpoint_every_steps": 0}), run)

    def press_ctrl_c(trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.on_step.append(press_ctrl_c)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.step == 2 and info.value.run_dir == run
    assert RunDir.open(run).latest_checkpoint().name == "step-000000002.pt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert Trainer.resume(run, console=quiet(), progress=False).step == 2


@pytest.mark.parametrize(("pattern", "strategy", "options"), [
    ("leftmost", "sandwich", {"n": 1}),
    ("bcnet", "bcnet", {}),
    ("leftmost", "single-path", {}),
])
def test_other_strategies_train(data_root: Path, pattern: str, strategy: str,
                                options: dict[str, Any]) -> None:
    config = tiny_config(data_root, supernet={"pattern": pattern, "bins": False},
                         strategy={"name": strategy, "options": options},
                         optim={"name": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    trainer = make(config)
    result = trainer.fit(max_steps=2)
    assert result.step == 2 and result.run_dir is None and result.checkpoint is None
    assert math.isfinite(trainer.val.get("max", {}).get("loss", 0.0))


def test_weight_decay_skips_norms_and_biases(data_root: Path) -> None:
    trainer = make(tiny_config(data_root))
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"])
    assert all(p.ndim <= 1 for p in groups[1]["params"])
    assert groups[0]["nesterov"] is True


def test_training_never_reads_the_test_split(data_root: Path) -> None:
    trainer = make(tiny_config(data_root))
    with pytest.raises(WidthSearchError, match="test split"):
        iter(trainer.data.test)


def test_new_run_refuses_an_existing_run_dir(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    make(tiny_config(data_root, optim={"epochs": 1}), run).fit(max_steps=1)
    with pytest.raises(WidthSearchError, match="already holds a run"):
        make(tiny_config(data_root), run)
    with pytest.raises(WidthSearchError, match="cannot change optim.momentum"):
        Trainer.resume(run, overrides=["optim.momentum=0.5"])


def test_amp_on_cpu_is_ignored_with_a_warning(data_root: Path) -> None:
    with pytest.warns(UserWarning, match="amp is ignored on CPU"):
        trainer = make(tiny_config(data_root, train={"amp": True}))
    assert trainer.precision.dtype is None


def test_channels_last_trains_the_same_network_and_resumes_exactly(data_root: Path,
                                                                   tmp_path: Path) -> None:
    def nhwc(trainer: Trainer) -> bool:
        convs = [p for p in trainer.net.parameters() if p.dim() == 4]
        return all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)

    contiguous = make(tiny_config(data_root), tmp_path / "nchw")
    assert not nhwc(contiguous)
    contiguous.fit(max_steps=1)
    config = tiny_config(data_root, train={"channels_last": True})
    full = make(config, tmp_path / "full")
    assert nhwc(full)
    full.fit()
    first = records(tmp_path / "full", "train")[0]["loss"]
    assert first == pytest.approx(records(tmp_path / "nchw", "train")[0]["loss"], rel=1e-4)

    make(config, tmp_path / "resumed").fit(max_steps=5)
    resumed = Trainer.resume(tmp_path / "resumed", console=quiet(), progress=False)
    assert nhwc(resumed)
    resumed.fit()
    expected = _state(full)
    for key, value in _state(resumed).items():
        assert torch.equal(value, expected[key]), key
