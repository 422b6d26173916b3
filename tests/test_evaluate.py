"""The Evaluator: BN recalibration on fixed training batches, val scores per pattern, the
cache, determinism, and that the supernet is left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import widthsearch as ws
from widthsearch.errors import WidthSearchError
from widthsearch.evaluate import Evaluator, candidate_choices
from widthsearch.patterns import LocallyFree
from widthsearch.train.bn import bn_state, evaluate


class Tiny(nn.Module):
    """Two conv-BN blocks and a classifier: groups of 16 and 24 channels, 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny(pattern: object) -> ws.Supernet:
    torch.manual_seed(0)
    net = ws.Supernet(Tiny(), torch.randn(1, 1, 8, 8), pattern=pattern, divisions=4)
    with torch.no_grad():  # distinct per-channel behaviour, so assignments differ
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return net


def loaders(n_recal: int = 3, n_val: int = 2, batch: int = 16
            ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    make = lambda n: [(torch.randn(batch, 1, 8, 8, generator=g) + 0.5,  # noqa: E731
                       torch.randint(0, 5, (batch,), generator=g)) for _ in range(n)]
    return make(n_recal), make(n_val)


def configs(net: ws.Supernet, n: int, seed: int = 0) -> list[ws.WidthConfig]:
    g = torch.Generator().manual_seed(seed)
    return [net.space.sample(g) for _ in range(n)]


def test_leftmost_score_is_the_recalibrated_val_score() -> None:
    net = tiny("leftmost")
    recal, val = loaders()
    ev = Evaluator(net, recal, val, recal_batches=2)
    for cfg in [net.space.min(), *configs(net, 3)]:
        score = ev(cfg)
        ref = evaluate(net, cfg, None, val, recal_batches=2, recal_loader=recal)
        assert score.accuracy == pytest.approx(ref["accuracy"])
        assert score.loss == pytest.approx(ref["loss"], rel=1e-6)
        assert score.choice == {} and len(score.per_choice) == 1


def test_recalibration_uses_only_the_first_batches_of_the_recal_loader() -> None:
    net = tiny("leftmost")
    recal, val = loaders(n_recal=4)
    cfg = net.space.min()
    a = Evaluator(net, recal, val, recal_batches=2)(cfg)
    b = Evaluator(net, recal[:2], val, recal_batches=2)(cfg)
    c = Evaluator(net, recal[2:], val, recal_batches=2)(cfg)
    assert (a.accuracy, a.loss) == (b.accuracy, b.loss)
    assert a.loss != c.loss


def test_cafenet_takes_the_best_of_distinct_free_assignments_leftmost_first() -> None:
    net = tiny(LocallyFree(1))
    recal, val = loaders()
    ev = Evaluator(net, recal, val, recal_batches=2, max_choices=4, seed=3)
    cfg = next(c for c in configs(net, 20) if net.num_choices(c))
    score = ev(cfg)
    tried = [p[0] for p in score.per_choice]
    assert tried[0] == {} and 2 <= len(tried) <= 4
    assert len({tuple(sorted(t.items())) for t in tried}) == len(tried)
    best = max(score.per_choice, key=lambda p: (p[1], -p[2]))
    assert score.accuracy == best[1] and score.choice == best[0]
    for choice, acc, loss in score.per_choice:  # each entry is that assignment's own score
        ref = evaluate(net, cfg, choice or None, val, recal_batches=2, recal_loader=recal)
        assert acc == pytest.approx(ref["accuracy"]) and loss == pytest.approx(ref["loss"], rel=1e-6)
    assert candidate_choices(net, cfg, 1, 0) == [{}]  # max_choices=1: leftmost only


def test_cafenet_choices_depend_on_seed_and_config_not_on_order() -> None:
    net = tiny(LocallyFree(1))
    recal, val = loaders()
    cfgs = configs(net, 6)
    forward = Evaluator(net, recal, val, recal_batches=2, seed=5).evaluate(cfgs)
    backward = Evaluator(net, recal, val, recal_batches=2, seed=5).evaluate(cfgs[::-1])[::-1]
    assert forward == backward
    other = Evaluator(net, recal, val, recal_batches=2, seed=6).evaluate(cfgs)
    assert [s.per_choice for s in other] != [s.per_choice for s in forward]


def test_bcnet_score_is_the_mean_of_left_and_right() -> None:
    net = tiny("bcnet")
    recal, val = loaders()
    ev = Evaluator(net, recal, val, recal_batches=2)
    cfg = net.space.uniform(0.5)
    score = ev(cfg)
    (left, la, ll), (right, ra, rl) = score.per_choice
    assert left == {} and set(right.values()) == {1} and right
    ref = evaluate(net, cfg, 1, val, recal_batches=2, recal_loader=recal)
    assert ra == pytest.approx(ref["accuracy"]) and rl == pytest.approx(ref["loss"], rel=1e-6)
    assert score.accuracy == pytest.approx((la + ra) / 2)
    assert score.loss == pytest.approx((ll + rl) / 2)
    assert len(ev(net.space.max()).per_choice) == 1  # full width: left is right


def test_cache_hits_and_bound() -> None:
    net = tiny("leftmost")
    recal, val = loaders()
    ev = Evaluator(net, recal, val, recal_batches=1, cache_size=2)
    cfgs = configs(net, 3)
    first = ev.evaluate(cfgs + cfgs[:1])  # a duplicate in one call is scored once
    assert ev.evaluated == 3 and len(ev._cache) == 2
    assert ev.evaluate(cfgs[1:]) == first[1:3] and ev.evaluated == 3  # the two newest: cached
    ev.evaluate(cfgs[:1])
    assert ev.evaluated == 4  # evicted, scored again
    ev.clear()
    ev(cfgs[0])
    assert ev.evaluated == 5


def test_supernet_state_is_restored() -> None:
    net = tiny(LocallyFree(1))
    recal, val = loaders()
    net.train()
    net.activate(net.space.min(), None)
    before = bn_state(net)
    Evaluator(net, recal, val, recal_batches=2).evaluate(configs(net, 3, seed=1))
    after = bn_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.config == net.space.min() and net.training
    assert all(m.training for m in net.modules())


def test_deterministic_and_val_only() -> None:
    net = tiny(LocallyFree(1))
    recal, val = loaders()
    cfgs = configs(net, 4)
    a = Evaluator(net, recal, val, recal_batches=2, seed=1).evaluate(cfgs)
    b = Evaluator(net, recal, val, recal_batches=2, seed=1).evaluate(cfgs)
    assert a == b
    c = Evaluator(net, recal, val[:1], recal_batches=2, seed=1, val_batches=1).evaluate(cfgs)
    d = Evaluator(net, recal, val, recal_batches=2, seed=1, val_batches=1).evaluate(cfgs)
    assert c == d  # val_batches limits the val batches read


def test_streamed_val_equals_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from widthsearch import evaluate as E

    net = tiny("bcnet")
    recal, val = loaders()
    cfgs = configs(net, 3)
    kept = Evaluator(net, recal, val, recal_batches=2).evaluate(cfgs)
    monkeypatch.setattr(E, "VAL_MEMORY_LIMIT", 1)
    ev = Evaluator(net, recal, val, recal_batches=2)
    assert ev._val is None and ev.evaluate(cfgs) == kept


def test_bad_arguments_raise() -> None:
    net = tiny("leftmost")
    recal, val = loaders()
    with pytest.raises(WidthSearchError, match="max_choices"):
        Evaluator(net, recal, val, max_choices=0)
    with pytest.raises(WidthSearchError, match="recal_loader"):
        Evaluator(net, None, val, recal_batches=2)
    with pytest.raises(WidthSearchError, match="must not see the val"):
        Evaluator(net, val, val)
    from widthsearch.data import TensorLoader

    augmented = TensorLoader(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4), 2,
                             augment=True)
    with pytest.raises(WidthSearchError, match="augments"):
        Evaluator(net, augmented, val)
    with pytest.raises(WidthSearchError, match="empty val"):
        Evaluator(net, recal, [], recal_batches=1)
    with pytest.raises(WidthSearchError, match="not allowed"):
        Evaluator(net, recal, val)({next(iter(net.space.names)): 10_000})
    assert Evaluator(net, None, val, recal_batches=0)(net.space.max()).accuracy >= 0


# ------------------------------------------------------------------------------ distributed

_WORKER = """
    import json, os, sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_evaluate import configs, loaders, tiny
    from widthsearch.evaluate import Evaluator

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = []
    for pattern in ("cafenet", "bcnet"):
        net = tiny(pattern)
        recal, val = loaders()
        ev = Evaluator(net, recal, val, recal_batches=2, seed=4)
        cfgs = configs(net, 5)
        first = ev.evaluate(cfgs[:2])         # then a call mixing cached and new configs
        scores = ev.evaluate(cfgs[::-1] + cfgs[:1])
        mine = ev.evaluated
        out.append({"pattern": pattern, "evaluated": mine,
                    "scores": [[s.config.to_dict(), s.accuracy, s.loss, s.choice,
                                [list(p) for p in s.per_choice]] for s in first + scores]})
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
"""


def _as_json(scores: list) -> list:
    return [[s.config.to_dict(), s.accuracy, s.loss, s.choice,
             [list(p) for p in s.per_choice]] for s in scores]


def test_two_gloo_ranks_shard_and_equal_one_process(tmp_path) -> None:  # noqa: ANN001
    import json
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside python")
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path),
           str(Path(__file__).parent)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == [{**p, "evaluated": ranks[0][i]["evaluated"]} for i, p in enumerate(ranks[1])]
    for i, pattern in enumerate(("cafenet", "bcnet")):
        net = tiny(pattern)
        recal, val = loaders()
        ev = Evaluator(net, recal, val, recal_batches=2, seed=4)
        cfgs = configs(net, 5)
        alone = ev.evaluate(cfgs[:2]) + ev.evaluate(cfgs[::-1] + cfgs[:1])
        assert json.loads(json.dumps(_as_json(alone))) == ranks[0][i]["scores"], pattern
        # each rank scored a disjoint shard: together exactly what one process scored
        assert ranks[0][i]["evaluated"] + ranks[1][i]["evaluated"] == ev.evaluated
        assert 0 < ranks[1][i]["evaluated"] < ev.evaluated
