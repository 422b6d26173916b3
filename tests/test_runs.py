"""Run directory: create/open, atomic writes, safe checkpoints, RNG resume, metrics log."""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from widthsearch.errors import (
    CheckpointError,
    IntegrityError,
    RunError,
    RunLockedError,
    WidthSearchError,
)
from widthsearch.runs import (
    MetricsLog,
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    capture_rng_state,
    restore_rng_state,
)


class Payload:
    """An arbitrary object that weights_only loading must refuse to unpickle."""

    def __init__(self) -> None:
        self.value = 42


def draws() -> tuple[list[float], list[float], list[float]]:
    """A few numbers from every RNG a run uses (gauss exercises the cached-Gaussian fields)."""
    py = [random.random(), random.gauss(0, 1)]
    npy = [*np.random.rand(3).tolist(), float(np.random.randn())]
    tch = torch.rand(3).tolist() + torch.randn(2).tolist()
    return py, npy, tch


def test_create_writes_tree_and_config(tmp_path: Path) -> None:
    config = {"model": "resnet20", "lr": 0.1, "widths": [8, 16], "nested": {"seed": 0}}
    run = RunDir.create(tmp_path / "run", config)
    for d in (run.checkpoints, run.search_dir, run.exports_dir):
        assert d.is_dir()
    assert run.config_path.is_file()
    assert run.metrics_path == run.path / "metrics.jsonl"
    assert run.report_path == run.path / "report.md"
    assert run.read_config() == config
    assert RunDir.open(run.path).read_config() == config


def test_create_twice_is_refused_unless_exist_ok(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {"a": 1})
    run.save_checkpoint({"x": 1}, step=1)
    with pytest.raises(WidthSearchError, match="resume"):
        RunDir.create(tmp_path, {"a": 2})
    assert RunDir.open(tmp_path).read_config() == {"a": 1}
    RunDir.create(tmp_path, {"a": 2}, exist_ok=True)
    assert RunDir.open(tmp_path).read_config() == {"a": 2}


def test_create_rejects_non_yaml_config(tmp_path: Path) -> None:
    with pytest.raises(WidthSearchError, match="YAML"):
        RunDir.create(tmp_path, {"obj": Payload()})


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(WidthSearchError, match="does not exist"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    with pytest.raises(WidthSearchError, match="not a widthsearch run directory"):
        RunDir.open(tmp_path / "other")


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(src: str, dst: str) -> None:
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="killed"):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_checkpoint_rotation_keeps_last_k(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    assert run.latest_checkpoint() is None
    for step in (1, 2, 10, 100, 1000):
        path = run.save_checkpoint({"w": torch.full((2,), float(step))}, step, keep=2)
        assert path == run.checkpoints / f"step-{step:09d}.pt"
    assert [p.name for p in run.list_checkpoints()] == ["step-000000100.pt", "step-000001000.pt"]
    assert run.latest_checkpoint() == run.checkpoints / "step-000001000.pt"
    state = run.load_checkpoint()
    assert state["step"] == 1000
    assert torch.equal(state["w"], torch.full((2,), 1000.0))
    assert not [p for p in run.checkpoints.iterdir() if p.name.endswith(".tmp")]


def test_load_refuses_arbitrary_objects(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    evil = run.checkpoint_path(5)
    torch.save({"step": 5, "payload": Payload()}, evil)
    with pytest.raises(WidthSearchError, match="step-000000005.pt"):
        run.load_checkpoint()
    with pytest.raises(WidthSearchError, match="refused .*run Python code .test_runs.Payload"):
        run.load_checkpoint(evil)


def test_save_refuses_state_that_would_not_load(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    with pytest.raises(WidthSearchError, match=r"state\['extra'\]\['x'\]"):
        run.save_checkpoint({"extra": {"x": np.float64(1.0)}}, 1)
    assert run.list_checkpoints() == []


def test_model_and_optimizer_state_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    run.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict()}, 3)
    state = run.load_checkpoint()
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    opt.load_state_dict(state["optimizer"])


def test_rng_round_trip_in_memory() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leave a cached Gaussian behind in python's RNG
    np.random.randn()
    state = capture_rng_state()
    expected = draws()
    draws()
    restore_rng_state(state)
    assert draws() == expected


def test_rng_round_trip_through_checkpoint(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    run.save_checkpoint({"rng": capture_rng_state()}, 1)
    expected = draws()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng_state(run.load_checkpoint()["rng"])
    assert draws() == expected


def test_corrupt_latest_falls_back_to_previous(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    run.save_checkpoint({"w": torch.ones(1000)}, 1)
    newest = run.save_checkpoint({"w": torch.zeros(1000)}, 2)
    assert newest is not None
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step-000000002.pt"):
        state = run.load_checkpoint()
    assert state["step"] == 1
    with pytest.raises(WidthSearchError, match="step-000000002.pt"):
        run.load_checkpoint(newest)


def test_all_checkpoints_unreadable_or_missing(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    with pytest.raises(WidthSearchError, match="no checkpoints"):
        run.load_checkpoint()
    run.checkpoint_path(1).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="no checksum"):
        run.load_checkpoint()


def test_flipped_bytes_are_named_and_the_previous_checkpoint_used(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    run.save_checkpoint({"w": torch.ones(1000)}, 1)
    newest = run.save_checkpoint({"w": torch.zeros(1000)}, 2)
    assert newest is not None
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped float: still a valid zip, wrong numbers
    newest.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="step-000000002.pt is damaged"):
        state = run.load_checkpoint()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    with pytest.raises(IntegrityError, match="sha256"):
        run.load_checkpoint(newest)


def test_a_checkpoint_renamed_to_another_step_is_refused(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    first = run.save_checkpoint({"w": torch.ones(2)}, 1)
    assert first is not None
    os.replace(first, run.checkpoint_path(7))
    with pytest.raises(CheckpointError, match="holds step 1"):
        run.load_checkpoint(run.checkpoint_path(7))


def test_accept_rejects_a_foreign_checkpoint_and_falls_back(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    run.save_checkpoint({"run": "mine"}, 1)
    run.save_checkpoint({"run": "theirs"}, 2)

    def accept(state: dict, path: Path) -> None:
        if state["run"] != "mine":
            raise CheckpointError(f"{path.name} belongs to another run")

    with pytest.warns(UserWarning, match="another run"):
        assert run.load_checkpoint(accept=accept)["step"] == 1


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir.create(tmp_path, {})
    run.save_checkpoint({"w": torch.ones(3)}, 1)

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left.*step-000000001.pt is intact"):
        run.save_checkpoint({"w": torch.zeros(3)}, 2)
    monkeypatch.undo()
    assert [p.name for p in run.list_checkpoints()] == ["step-000000001.pt"]
    assert not [p for p in run.checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert torch.equal(run.load_checkpoint()["w"], torch.ones(3))


def test_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run = RunDir.create(tmp_path, {})
        path = run.save_checkpoint({"w": torch.ones(1)}, 1)
    finally:
        os.umask(old)
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(run.config_path.stat().st_mode) == 0o644


def test_lock_names_the_holder_and_is_released(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    with run.lock:
        other = RunDir(tmp_path)
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} is writing"):
            other.lock.acquire()
    with RunDir(tmp_path).lock:  # released: the next writer gets it
        pass


def test_lock_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {})
    code = ("import sys; from widthsearch.runs import RunDir; "
            f"RunDir({str(tmp_path)!r}).lock.acquire(); sys.exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (tmp_path / ".lock").exists()  # the file stays, the lock went with its process
    with run.lock:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_lock_is_held_across_processes(tmp_path: Path) -> None:
    RunDir.create(tmp_path, {})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from widthsearch.runs import RunDir; "
         f"r = RunDir({str(tmp_path)!r}); r.lock.acquire(); print('held', flush=True); "
         "time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"process {holder.pid} is writing"):
            RunDir(tmp_path).lock.acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(tmp_path).lock:
        pass


def test_unstarted_run_does_not_block_a_retry(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {"lr": 30})
    run.metrics.log(kind="train", step=10, loss=float("nan"))
    retry = RunDir.create(tmp_path, {"lr": 0.1})
    assert retry.read_config() == {"lr": 0.1}
    assert retry.metrics.read() == []
    retry.metrics.log(kind="epoch", step=20)
    assert not retry.is_unstarted()
    with pytest.raises(RunError, match="already holds a run"):
        RunDir.create(tmp_path, {"lr": 0.2})


def test_update_config_records_the_change(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, {"optim": {"lr": 0.1}})
    run.update_config({"optim": {"lr": 0.05}}, {"optim.lr": (0.1, 0.05)}, step=40)
    assert run.read_config() == {"optim": {"lr": 0.05}}
    (record,) = run.metrics.read()
    assert record["kind"] == "config_change" and record["step"] == 40
    assert record["changes"] == {"optim.lr": {"old": 0.1, "new": 0.05}}


def test_metrics_log_append_read_truncate(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.read() == []
    for step in range(1, 6):
        log.log(step=step, loss=torch.tensor(1.0 / step), acc=np.float32(0.5))
    log.log(event="note")
    records = log.read()
    assert [r.get("step") for r in records] == [1, 2, 3, 4, 5, None]
    assert all(isinstance(r["time"], float) for r in records)
    assert records[1]["loss"] == pytest.approx(0.5)
    log.truncate_after(3)
    assert [r.get("step") for r in log.read()] == [1, 2, 3, None]
    log.log(step=4, loss=0.1)
    assert [r.get("step") for r in log.read()] == [1, 2, 3, None, 4]


def test_metrics_log_ignores_line_cut_by_a_kill(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log(step=1)
    with log.path.open("a") as f:
        f.write('{"step": 2, "lo')
    with pytest.warns(UserWarning, match="truncated"):
        assert [r["step"] for r in log.read()] == [1]


def test_non_writer_rank_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "run"
    run = RunDir.create(root, {"a": 1}, rank=1)
    assert not root.exists()
    assert run.save_checkpoint({"w": torch.ones(1)}, 1) is None
    run.metrics.log(step=1)
    MetricsLog(tmp_path / "m.jsonl", rank=3).log(step=1)
    assert list(tmp_path.iterdir()) == []

    # Non-writers still read: every rank loads the checkpoint rank 0 wrote.
    writer = RunDir.create(root, {"a": 1})
    writer.save_checkpoint({"w": torch.ones(1)}, 1)
    writer.metrics.log(step=1)
    before = sorted(p.name for p in root.rglob("*"))
    reader = RunDir.open(root, rank=2)
    assert reader.load_checkpoint()["step"] == 1
    assert reader.save_checkpoint({"w": torch.zeros(1)}, 2) is None
    reader.metrics.log(step=2)
    reader.metrics.truncate_after(0)
    assert sorted(p.name for p in root.rglob("*")) == before
    assert [r["step"] for r in reader.metrics.read()] == [1]
