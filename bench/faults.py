"""Kill -9 a training run at random moments, resume it, and count bit-identical endings.

    python bench/faults.py --kills 20 --out bench/results/faults.json

One tiny CPU run (ResNet-20 at quarter width, 128 synthetic Fashion-MNIST-format images,
batch 32, 2 epochs, a checkpoint after every step) is trained once uninterrupted as the
reference. Then, `--kills` times: the same command is started in a fresh run folder and
SIGKILLed, either at a random moment of its lifetime or the instant a checkpoint's
temporary file appears (a kill in the middle of a checkpoint write); then
`widthsearch train --resume` is run (or the first command again, when the kill came before
the run folder existed) until the run reports finished, and the sha256 of its final
supernet.safetensors tensors is compared with the reference's. Invariants 5 and 9 say every
ending is identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_trainer import write_tiny_fashion  # noqa: E402

from widthsearch.safeio import load_safetensors_verified, tensors_digest  # noqa: E402


def tiny_config(data: Path) -> dict[str, Any]:
    return {
        "model": {"name": "resnet20", "kwargs": {"width_mult": 0.25}},
        "data": {"root": str(data), "subset": 128, "val_size": 64, "val_subset": 32,
                 "batch_size": 32, "augment": True},
        "supernet": {"pattern": "cafenet"},
        "strategy": {"name": "cafenet"},
        "optim": {"epochs": 2, "lr": 0.1, "warmup_epochs": 0.25},
        "train": {"device": "cpu", "threads": 1, "eval_recal_batches": 1,
                  "eval_max_batches": 1, "log_every_steps": 1, "checkpoint_every_steps": 1},
    }


def command(run: Path, config: Path) -> list[str]:
    if (run / "config.yaml").exists():
        return [sys.executable, "-m", "widthsearch", "train", "--no-progress", "--resume",
                str(run)]
    return [sys.executable, "-m", "widthsearch", "train", "--no-progress", "--config",
            str(config), "--run-dir", str(run)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def finish(run: Path, config: Path, limit: int = 5) -> tuple[int, list[int]]:
    """Run (resume) to the end; returns (number of processes, their exit codes)."""
    codes = []
    for _ in range(limit):
        proc = subprocess.run(command(run, config), env=env(), capture_output=True, text=True)
        codes.append(proc.returncode)
        if proc.returncode == 0 and (run / "supernet.safetensors").exists():
            return len(codes), codes
        if proc.returncode not in (0,):
            sys.stderr.write(proc.stderr[-2000:])
    return len(codes), codes


def digest(run: Path) -> str:
    tensors, _ = load_safetensors_verified(run / "supernet.safetensors")
    return tensors_digest(tensors)


def writing_checkpoint(run: Path) -> bool:
    folder = run / "checkpoints"
    try:
        return any(e.name.endswith(".tmp") for e in os.scandir(folder))
    except FileNotFoundError:
        return False


def kill_once(run: Path, config: Path, mode: str, delay: float, skip: int) -> dict[str, Any]:
    """Start the run, SIGKILL it (after `delay` s, or at the `skip`-th checkpoint write)."""
    proc = subprocess.Popen(command(run, config), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    during_write = False
    seen = 0
    was_writing = False
    while proc.poll() is None:
        now = time.perf_counter() - start
        writing = writing_checkpoint(run)
        if mode == "time" and now >= delay:
            during_write = writing
            break
        if mode == "write" and writing and not was_writing:
            seen += 1
            if seen > skip:
                during_write = True
                break
        was_writing = writing
        time.sleep(0.0005 if mode == "write" else 0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt")) \
        if (run / "checkpoints").is_dir() else []
    return {"mode": mode, "killed": killed, "at_seconds": round(time.perf_counter() - start, 3),
            "during_checkpoint_write": during_write and killed,
            "run_folder_existed": (run / "config.yaml").exists(),
            "checkpoints_left": len(checkpoints),
            "newest_left": checkpoints[-1] if checkpoints else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_tiny_fashion(root / "fashion-mnist", n_train=200, n_test=20)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(tiny_config(data)))
        started = time.perf_counter()
        processes, codes = finish(root / "reference", config, limit=1)
        reference_seconds = time.perf_counter() - started
        if codes != [0]:
            print("the reference run failed", file=sys.stderr)
            return 1
        reference = digest(root / "reference")
        trials = []
        for i in range(args.kills):
            mode = "write" if i % 2 else "time"
            for attempt in range(3):  # a run that ended before its kill is tried again
                run = root / f"trial-{i:02d}-{attempt}"
                delay = rng.uniform(0.5, 0.95 * reference_seconds)
                kill = kill_once(run, config, mode, delay, skip=rng.randrange(0, 7))
                if kill["killed"]:
                    break
            processes, codes = finish(run, config)
            identical = (run / "supernet.safetensors").exists() and digest(run) == reference
            trials.append({**kill, "resumes": processes, "exit_codes": codes,
                           "identical": identical})
            print(f"trial {i:2d}: {kill['mode']:5s} killed={kill['killed']} "
                  f"at {kill['at_seconds']:6.2f}s during_write="
                  f"{kill['during_checkpoint_write']} -> identical={identical}", flush=True)
    result = {
        "command": f"python bench/faults.py --kills {args.kills} --seed {args.seed}",
        "reference_seconds": round(reference_seconds, 2),
        "kills": sum(t["killed"] for t in trials),
        "identical": sum(t["identical"] for t in trials),
        "trials": len(trials),
        "during_checkpoint_write": sum(t["during_checkpoint_write"] for t in trials),
        "before_first_checkpoint": sum(t["killed"] and t["checkpoints_left"] == 0
                                       for t in trials),
        "details": trials,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['identical']}/{result['trials']} identical to the uninterrupted run "
          f"({result['kills']} killed, {result['during_checkpoint_write']} during a "
          f"checkpoint write, {result['before_first_checkpoint']} before the first "
          "checkpoint)")
    return 0 if result["identical"] == result["trials"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
