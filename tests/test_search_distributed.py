"""Search under torchrun: every rank runs the same search while the evaluator scores
disjoint shards of each population; the result equals a one-process search and only rank 0
writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_evaluate import loaders, tiny

from widthsearch.evaluate import Evaluator
from widthsearch.search import search_widths

OPTIONS = {"population": 6, "generations": 3, "top_k": 3, "mutations": 3, "crossovers": 3}
BUDGETS = ["macs=60%"]

_WORKER = """
    import json, os, sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_evaluate import loaders, tiny
    from test_search_distributed import BUDGETS, OPTIONS
    from widthsearch.evaluate import Evaluator
    from widthsearch.search import search_widths

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = tiny("cafenet")
    recal, val = loaders()
    ev = Evaluator(net, recal, val, recal_batches=2, seed=3)
    out = os.path.join(sys.argv[1], "search")
    result = search_widths(net, BUDGETS, "evolution", evaluator=ev, out_dir=out, seed=5,
                           uniform=(0.5,), **OPTIONS)
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"chosen": result.chosen_json(), "front": result.front_json(),
                   "scored_here": ev.evaluated}, f)
    dist.destroy_process_group()
"""


def test_two_gloo_ranks_search_like_one_process(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside python")
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path / "ddp"), str(Path(__file__).parent)]
    (tmp_path / "ddp").mkdir()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]

    net = tiny("cafenet")
    recal, val = loaders()
    ev = Evaluator(net, recal, val, recal_batches=2, seed=3)
    alone = search_widths(net, BUDGETS, "evolution", evaluator=ev, out_dir=tmp_path / "one",
                          seed=5, uniform=(0.5,), **OPTIONS)
    expected_chosen = json.loads(json.dumps(alone.chosen_json()))
    expected_front = json.loads(json.dumps(alone.front_json()))
    for rank in ranks:
        assert rank["chosen"] == expected_chosen
        assert rank["front"] == expected_front
    # the ranks shared the scoring, and only rank 0 wrote the outputs
    assert 0 < ranks[1]["scored_here"] < ev.evaluated
    assert ranks[0]["scored_here"] + ranks[1]["scored_here"] == ev.evaluated
    written = sorted(p.name for p in (tmp_path / "ddp" / "search").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "one").iterdir())
