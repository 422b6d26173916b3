"""Finite checks before checkpoints, and the advice after a divergence working as printed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from rich.console import Console
from test_trainer import tiny_config, write_tiny_fashion

from widthsearch.errors import NumericsError, RunLockedError
from widthsearch.runs import RunDir
from widthsearch.train.numerics import non_finite_report, non_finite_tensors
from widthsearch.train.trainer import Trainer, lr_factor


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fashion(tmp_path_factory.mktemp("data") / "fashion-mnist")


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_non_finite_tensors_names_params_buffers_and_optimizer_state() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 2)).sum().backward()
    opt.step()
    assert non_finite_tensors(net, opt) == [] and non_finite_report(net, opt) == ""
    net[1].running_var[0] = float("nan")
    opt.state[net[0].weight]["momentum_buffer"][0, 0] = float("inf")
    found = dict(non_finite_tensors(net, opt))
    assert found["1.running_var"] == 1
    assert any(name.startswith("optimizer.") and n == 1 for name, n in found.items())
    assert "2 entries" in non_finite_report(net, opt)


def test_a_non_finite_checkpoint_is_never_written(data_root: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(data_root), tmp_path / "run", console=quiet(),
                      progress=False)
    trainer.fit(max_steps=3)  # checkpoint_every_steps=3: a good checkpoint at step 3
    good = RunDir(tmp_path / "run").list_checkpoints()
    with torch.no_grad():
        next(trainer.net.parameters()).fill_(float("inf"))
    with pytest.raises(NumericsError, match=r"last finite checkpoint is step-000000003\.pt; "
                       r"continue from it .*--resume .* --set optim\.lr=0\.01"):
        trainer.fit(max_steps=6)
    assert RunDir(tmp_path / "run").list_checkpoints() == good


def test_resume_with_a_new_learning_rate_is_recorded(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(data_root), run, console=quiet(), progress=False).fit(max_steps=3)
    trainer = Trainer.resume(run, overrides=["optim.lr=0.05", "optim.grad_clip=1.0"],
                             console=quiet(), progress=False)
    expected = 0.05 * lr_factor(3, trainer.total_steps, trainer.warmup_steps)
    assert all(g["lr"] == pytest.approx(expected) for g in trainer.optimizer.param_groups)
    assert trainer.scheduler.base_lrs == [0.05] * len(trainer.optimizer.param_groups)
    trainer.fit(max_steps=4)
    assert trainer.config.optim.grad_clip == 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (change,) = [r for r in records if r.get("kind") == "config_change"]
    assert change["step"] == 3
    assert change["changes"] == {"optim.grad_clip": {"old": None, "new": 1.0},
                                 "optim.lr": {"old": 0.1, "new": 0.05}}
    again = Trainer.resume(run, console=quiet(), progress=False)  # config.yaml kept it
    assert again.config.optim.lr == 0.05 and again.step == 4
    again.close()


def test_one_writer_per_run(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = Trainer(tiny_config(data_root), run, console=quiet(), progress=False)
    with pytest.raises(RunLockedError, match="is in use: process"):
        Trainer.resume(run, console=quiet(), progress=False)
    first.fit(max_steps=1)  # fit releases the run when it returns
    second = Trainer.resume(run, console=quiet(), progress=False)
    assert second.step == 1
    second.close()


def test_a_stale_trainer_does_not_write_over_a_newer_run(data_root: Path,
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(data_root), run, console=quiet(), progress=False).fit(max_steps=1)
    stale = Trainer.resume(run, console=quiet(), progress=False)
    stale.close()
    Trainer.resume(run, console=quiet(), progress=False).fit(max_steps=3)
    with pytest.raises(Exception, match="changed since this trainer loaded it"):
        stale.fit(max_steps=4)
