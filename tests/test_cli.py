"""The `widthsearch` command: inspect, train, resume, quickstart and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_trainer import tiny_config, write_tiny_fashion

from widthsearch.cli import COMMANDS, main
from widthsearch.config import load_config
from widthsearch.data import DATASETS
from widthsearch.quickstart import SIZES, quickstart_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fashion(tmp_path_factory.mktemp("data") / "fashion-mnist")


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_commands_are_registered_in_one_table() -> None:
    assert {"train", "inspect", "quickstart"} <= set(COMMANDS)


def test_help_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2


def test_inspect_prints_groups_and_costs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet20", "--input-size", "1", "28", "28"]) == 0
    out = capsys.readouterr().out
    for name in ("conv1", "layer2.0.conv1", "layer3.2.conv1", "fc", "input"):
        assert name in out
    assert "fixed" in out
    assert "MACs" in out and "params" in out and "memory" in out
    assert "1x28x28" in out


def test_inspect_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet20", "--num-classes", "7", "--in-channels", "1",
                 "--pattern", "cafenet", "--bins"]) == 0
    out = capsys.readouterr().out
    assert "1x32x32" in out and "step" in out
    assert main(["inspect", "resnet20", "--input-size", "3", "32", "32",
                 "--in-channels", "1"]) == 2
    one_error_line(capsys.readouterr().err)
    assert main(["inspect", "no-such-model"]) == 2
    assert "unknown model" in one_error_line(capsys.readouterr().err)


def test_bad_config_key_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("optim:\n  lrr: 0.1\n")
    assert main(["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "optim.lrr" in line and "unknown key" in line
    assert not (tmp_path / "run").exists()
    assert main(["train", "--set", "optim.lr=-1", "--run-dir", str(tmp_path / "run")]) == 2
    assert "optim.lr" in one_error_line(capsys.readouterr().err)


def test_missing_or_broken_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML" in one_error_line(capsys.readouterr().err)


def test_missing_data_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WIDTHSEARCH_DATA", raising=False)
    run = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--run-dir", str(run),
                 "--set", "train.device=cpu"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Fashion-MNIST not found" in line and "apt-get install dataset-fashion-mnist" in line
    assert DATASETS["fashion-mnist"].how_to_get.split()[0] in line
    assert not run.exists()  # nothing is written before the data loads


def test_train_and_resume_a_finished_run(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(data_root, optim={"epochs": 1})))
    run = tmp_path / "run"
    code = main(["train", "--config", str(cfg), "--run-dir", str(run), "--no-progress",
                 "--set", "train.log_every_steps=2", "data.batch_size=128"])
    assert code == 0
    out = capsys.readouterr().out
    assert "val accuracy" in out and "max" in out and "min" in out
    saved = load_config(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved.train.log_every_steps == 2 and saved.data.batch_size == 128
    steps = [json.loads(line).get("step") for line in
             (run / "metrics.jsonl").read_text().splitlines()]
    assert 2 in steps
    # the same directory again: refused, resume instead
    assert main(["train", "--config", str(cfg), "--run-dir", str(run)]) == 2
    assert "already holds a run" in one_error_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "val accuracy" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)


def test_quickstart_config_is_valid_and_small() -> None:
    cfg = load_config(quickstart_config(SIZES["default"]))
    assert (cfg.model.name, cfg.strategy.name, cfg.supernet.pattern) == \
        ("resnet20", "cafenet", "cafenet")
    assert cfg.data.subset == 10_000 and cfg.optim.epochs == 2


def test_interrupted_training_exits_130_with_a_resume_hint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from widthsearch.train import trainer as T

    def interrupted(*args: object, **kwargs: object) -> None:
        raise T.TrainingInterrupted(tmp_path / "run", 7, None)

    monkeypatch.setattr(T.Trainer, "resume", interrupted)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 7" in err and f"--resume {tmp_path / 'run'}" in err


def test_debug_shows_the_traceback_and_internal_errors_are_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import widthsearch.cli as cli

    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(cli.COMMANDS, "inspect", cli.Command("inspect", "x", None, broken))
    assert main(["inspect"]) == 1
    line = capsys.readouterr().err.strip()
    assert line == ("internal error: ZeroDivisionError: division by zero "
                    "(rerun with --debug for the traceback)")
    with pytest.raises(ZeroDivisionError):
        main(["inspect", "--debug"])


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "resnet20", "--divisions", "x"]) == 2
    one_error_line(capsys.readouterr().err)


def test_ctrl_c_while_starting_is_one_line() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "widthsearch", "inspect", "resnet20"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    time.sleep(0.3)  # inside `import torch`
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
