"""Kill -9 a width search at random moments, resume it, and count identical endings.

    python bench/faults_search.py --kills 10 --out bench/results/faults-search.json

A tiny CafeNet supernet (bench/faults.py's run) is trained once. The reference is one
uninterrupted `widthsearch search RUN --budget macs=50% --method evolution` (population 6,
5 generations, 1 recalibration and 1 val batch per config). Then, `--kills` times: a copy of
the trained run searches, is SIGKILLed at a random moment of the search's lifetime, or the
instant its state file's temporary copy appears (a kill in the middle of a state write), and
the same command is run again until it ends. Its search/front.json and search/chosen.json
must equal the reference's byte for byte (invariant 5: a resumed search ends with the same
result as an uninterrupted one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from faults import ROOT, env, finish, tiny_config
from test_trainer import write_tiny_fashion  # noqa: E402  (faults put tests/ on the path)

OUTPUTS = ("front.json", "chosen.json")


def command(run: Path) -> list[str]:
    return [sys.executable, "-m", "widthsearch", "search", str(run), "--budget", "macs=50%",
            "--method", "evolution", "--population", "6", "--generations", "5",
            "--recal-batches", "1", "--val-batches", "1", "--quiet"]


def outputs_digest(run: Path) -> str | None:
    folder = run / "search"
    if not all((folder / name).is_file() for name in OUTPUTS):
        return None
    h = hashlib.sha256()
    for name in OUTPUTS:
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def writing_state(run: Path) -> bool:
    folder = run / "search"
    return folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir())


def search_to_end(run: Path, limit: int = 5) -> list[int]:
    codes = []
    for _ in range(limit):
        proc = subprocess.run(command(run), env=env(), capture_output=True, text=True)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            return codes
        sys.stderr.write(proc.stderr[-2000:])
    return codes


def kill_once(run: Path, mode: str, delay: float) -> dict[str, Any]:
    proc = subprocess.Popen(command(run), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    during_write = False
    while proc.poll() is None:
        now = time.perf_counter() - start
        writing = writing_state(run)
        if (mode == "time" and now >= delay) or (mode == "write" and writing and now >= delay):
            during_write = writing
            break
        time.sleep(0.0005 if mode == "write" else 0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"mode": mode, "killed": killed, "at_seconds": round(time.perf_counter() - start, 3),
            "during_state_write": during_write and killed,
            "state_left": any((run / "search").glob("state-*.json"))
            if (run / "search").is_dir() else False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "faults-search.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_tiny_fashion(root / "fashion-mnist", n_train=200, n_test=20)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(tiny_config(data)))
        trained = root / "trained"
        if finish(trained, config, limit=1)[1] != [0]:
            print("training the supernet failed", file=sys.stderr)
            return 1
        reference = root / "reference"
        shutil.copytree(trained, reference)
        started = time.perf_counter()
        if search_to_end(reference, limit=1) != [0]:
            print("the reference search failed", file=sys.stderr)
            return 1
        reference_seconds = time.perf_counter() - started
        expected = outputs_digest(reference)
        trials = []
        for i in range(args.kills):
            mode = "write" if i % 2 else "time"
            for attempt in range(3):  # a search that ended before its kill is tried again
                run = root / f"trial-{i:02d}-{attempt}"
                shutil.copytree(trained, run)
                kill = kill_once(run, mode, rng.uniform(0.3, 0.95 * reference_seconds))
                if kill["killed"]:
                    break
            codes = search_to_end(run)
            identical = outputs_digest(run) == expected
            trials.append({**kill, "exit_codes": codes, "identical": identical})
            print(f"trial {i:2d}: {mode:5s} killed={kill['killed']} at {kill['at_seconds']:6.2f}s"
                  f" during_write={kill['during_state_write']} -> identical={identical}",
                  flush=True)
    result = {
        "command": f"python bench/faults_search.py --kills {args.kills} --seed {args.seed}",
        "reference_seconds": round(reference_seconds, 2),
        "kills": sum(t["killed"] for t in trials),
        "identical": sum(t["identical"] for t in trials),
        "trials": len(trials),
        "during_state_write": sum(t["during_state_write"] for t in trials),
        "details": trials,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['identical']}/{result['trials']} identical to the uninterrupted search "
          f"({result['kills']} killed, {result['during_state_write']} during a state write)")
    return 0 if result["identical"] == result["trials"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
