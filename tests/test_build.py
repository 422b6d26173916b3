"""build.py: data and supernet from a RunConfig, and a trained supernet read back from its
run directory (finished or checkpointed), scoring as training scored it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainer import data_root, make, tiny_config  # noqa: F401  (fixture)

import widthsearch as ws
from widthsearch.build import SPACE_FILE, build_run_data, build_supernet
from widthsearch.errors import WidthSearchError
from widthsearch.evaluate import Evaluator
from widthsearch.train.bn import bn_state


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def finished(data_root: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811, ANN201
    run = tmp_path_factory.mktemp("runs") / "cafe"
    trainer = make(tiny_config(data_root, optim={"epochs": 1}), run)
    trainer.fit()
    return run, trainer


def test_finished_run_loads_weights_space_and_bn_state(finished) -> None:  # noqa: ANN001
    run, trainer = finished
    loaded = ws.load_supernet(run)
    assert loaded.finished and loaded.source.name == "supernet.safetensors"
    assert loaded.config == trainer.config and loaded.run.path == run
    assert loaded.net.space == trainer.net.space
    assert type(loaded.net.pattern) is type(trainer.net.pattern)
    assert _same_state(loaded.net, trainer.net)
    bn_a, bn_b = bn_state(loaded.net), bn_state(trainer.net)
    assert all(torch.equal(bn_a[k], bn_b[k]) for k in bn_a)
    assert {"train", "val", "test", "recal"} <= set(vars(loaded.data))
    record = json.loads((run / SPACE_FILE).read_text())
    assert record["pattern"] == "cafenet" and set(record["groups"]) == set(trainer.net.space.names)


def test_epoch_validation_equals_the_evaluator_on_the_loaded_run(finished) -> None:  # noqa: ANN001
    run, trainer = finished
    loaded = ws.load_supernet(run)
    t = loaded.config.train
    ev = Evaluator(loaded.net, loaded.data.recal, loaded.data.val,
                   recal_batches=t.eval_recal_batches, val_batches=t.eval_max_batches,
                   seed=t.seed)
    space = loaded.net.space
    for label, cfg in {"max": space.max(), "mid": space.uniform(0.5), "min": space.min()}.items():
        score = ev(cfg)
        assert trainer.val[label]["accuracy"] == pytest.approx(score.accuracy)
        assert trainer.val[label]["loss"] == pytest.approx(score.loss, rel=1e-5)


def test_unfinished_run_loads_its_newest_checkpoint(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    trainer = make(tiny_config(data_root, optim={"epochs": 2}), run)
    trainer.fit(max_steps=3)
    loaded = ws.load_supernet(run)
    assert not loaded.finished and loaded.step == 3 and loaded.source.name.startswith("step-")
    assert _same_state(loaded.net, trainer.net)
    older = ws.load_supernet(run, checkpoint=run / "checkpoints" / "step-000000003.pt")
    assert older.step == 3


def test_space_json_is_read_back_not_recomputed(finished, tmp_path: Path) -> None:  # noqa: ANN001
    run, _ = finished
    record = json.loads((run / SPACE_FILE).read_text())
    name = next(n for n, g in record["groups"].items() if len(g["choices"]) > 2)
    record["groups"][name]["choices"] = record["groups"][name]["choices"][1:]
    config = ws.load_supernet(run).config
    data = build_run_data(config)
    net = build_supernet(config, data, space=record)
    assert net.space[name].choices == tuple(record["groups"][name]["choices"])
    record["pattern"] = "bcnet"
    with pytest.raises(WidthSearchError, match="pattern"):
        build_supernet(config, data, space=record)


def test_missing_weights_is_a_clear_error(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "empty"
    make(tiny_config(data_root), run)
    with pytest.raises(WidthSearchError, match="neither"):
        ws.load_supernet(run)
    with pytest.raises(WidthSearchError, match="does not exist"):
        ws.load_supernet(tmp_path / "nothing")
