"""Data-parallel training: the collective helpers, and a real 2-process gloo run on CPU.

The 2-process run goes through torchrun and the CLI (`widthsearch train` under torchrun,
as users launch it): every rank saves its final weights, which must be identical, and rank
1 must not write anything into the run directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from test_trainer import records, tiny_config, write_tiny_fashion

from widthsearch.errors import WidthSearchError
from widthsearch.train import distributed as D

TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert info.device == torch.device("cpu") and info.backend is None
    assert not D.is_distributed() and D.is_main() and D.world_size() == 1
    t = torch.tensor([1.0, 3.0])
    assert D.all_reduce_mean(t) is t and t.tolist() == [1.0, 3.0]
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 2.0)
    D.average_gradients([p])
    assert p.grad.tolist() == [2.0, 2.0]
    D.barrier()
    assert D.broadcast_object("x") == "x"


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert D.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert D.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(WidthSearchError, match="CUDA is not available"):
            D.resolve_device("cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(WidthSearchError, match="not an integer"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(WidthSearchError, match="do not make sense"):
        D.init_distributed("cpu")


_WORKER = """
    import os, sys, builtins, pathlib, tempfile
    import torch
    from widthsearch.cli import main
    from widthsearch.train import trainer as T

    out, run = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).resolve()
    rank = int(os.environ["RANK"])
    violations = []

    def inside(path):
        try:
            return pathlib.Path(path).resolve().is_relative_to(run)
        except (TypeError, ValueError):
            return False

    if rank != 0:  # record any attempt of rank 1 to write into the run directory
        real_open, real_mkstemp, real_replace = builtins.open, tempfile.mkstemp, os.replace
        real_path_open, real_mkdir = pathlib.Path.open, pathlib.Path.mkdir

        def guarded_open(file, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and inside(file):
                violations.append(f"open {file} {mode}")
            return real_open(file, mode, *a, **k)

        def guarded_path_open(self, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and inside(self):
                violations.append(f"open {self} {mode}")
            return real_path_open(self, mode, *a, **k)

        def guarded_mkstemp(*a, dir=None, **k):
            if dir is not None and inside(dir):
                violations.append(f"mkstemp in {dir}")
            return real_mkstemp(*a, dir=dir, **k)

        def guarded_mkdir(self, *a, **k):
            if inside(self):
                violations.append(f"mkdir {self}")
            return real_mkdir(self, *a, **k)

        builtins.open, tempfile.mkstemp, os.replace = guarded_open, guarded_mkstemp, real_replace
        pathlib.Path.open, pathlib.Path.mkdir = guarded_path_open, guarded_mkdir

    fit = T.Trainer.fit

    def fit_and_dump(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        torch.save({"state": state, "violations": violations, "step": result.step,
                    "world_size": self.dist.world_size}, out / f"rank{rank}.pt")
        return result

    T.Trainer.fit = fit_and_dump
    sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path: Path) -> None:
    root = write_tiny_fashion(tmp_path / "fashion-mnist")
    # 256 images over 2 ranks of batch 32: 4 steps per epoch, 2 epochs
    config = tiny_config(root, data={"batch_size": 32})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_WORKER))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    env.pop("WIDTHSEARCH_DATA", None)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path), str(run), "train", "--config", str(tmp_path / "cfg.yaml"),
           "--run-dir", str(run), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    dumps = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [d["world_size"] for d in dumps] == [2, 2]
    assert [d["step"] for d in dumps] == [8, 8]
    assert dumps[1]["violations"] == []
    first, second = dumps[0]["state"], dumps[1]["state"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # training moved the weights away from the initialization
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in first.values())

    # rank 0 wrote one copy of everything
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-000000008.pt"
    steps = [r["step"] for r in records(run, "train")]
    assert steps == list(range(1, 9))
    assert [r["world_size"] for r in records(run, "start")] == [2]
    final = torch.load(run / "checkpoints" / "step-000000008.pt", weights_only=True)
    for key in first:
        assert torch.equal(final["model"][key], first[key]), key
