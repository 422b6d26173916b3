"""Finishing: fine-tune / retrain a searched width as a resumable sub-run, the TEST split
measured once at the end, the model exported (safetensors + JSON + ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainer import data_root, make, quiet, tiny_config  # noqa: F401  (fixture)

import widthsearch as ws
from widthsearch import finish as FIN
from widthsearch.cli import main
from widthsearch.errors import WidthSearchError
from widthsearch.train.trainer import Trainer


@pytest.fixture(scope="module")
def parent(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A trained CafeNet run whose search chose two configs."""
    run = tmp_path_factory.mktemp("runs") / "cafe"
    trainer = make(tiny_config(data_root, optim={"epochs": 1}), run)
    trainer.fit()
    net = trainer.net
    mid = net.space.uniform(0.5)
    choice = {k: v for k, v in net.sample_choice(mid, torch.Generator().manual_seed(0)).items() if v}
    chosen = [{"config": mid.to_dict(), "choice": choice, "budget": {"macs": 0.5},
               "costs": {"macs": net.cost(mid).macs}, "val_accuracy": 0.5},
              {"config": net.space.min().to_dict(), "choice": {}, "budget": {}, "costs": {},
               "val_accuracy": 0.3}]
    (run / "search" / "chosen.json").write_text(json.dumps({"chosen": chosen}))
    return run


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_finetune_starts_from_the_supernet_weights_at_the_config(parent: Path) -> None:
    target = FIN.read_target(parent, pick=0)
    loaded = ws.load_supernet(parent)
    builder = FIN._SubnetBuilder(loaded.run, loaded.config, target, "finetune")
    config = FIN.finishing_config(loaded.config, "finetune", [])
    net = builder(config, loaded.data)
    assert len(net.space.searchable) == 0  # one width: every step trains the model itself
    start = net.export(net.space.max())
    ref = loaded.net.export(loaded.net.space.validate(target.config), target.choice)
    weights = {k: v for k, v in _state(ref).items() if "running" not in k and "num_batches" not in k}
    got = _state(start)
    assert all(torch.equal(got[k], v) for k, v in weights.items())
    assert builder.spec["width_config"] == target.config and builder.spec["choice"] == target.choice
    assert config.optim.lr == pytest.approx(loaded.config.optim.lr * FIN.FINETUNE_LR_FACTOR)
    assert config.strategy.name == "single-path" and config.train.eval_recal_batches == 0


def test_finetune_tests_once_and_exports(parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    score = FIN._score
    monkeypatch.setattr(FIN, "_score", lambda m, loader: calls.append(1) or score(m, loader))
    result = FIN.finish(parent, "finetune", pick=0, overrides=["optim.epochs=1"],
                        console=quiet(), progress=False)
    sub = parent / "finetune" / "pick-0"
    assert calls == [1] and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["config"] == FIN.read_target(parent, pick=0).config
    assert json.loads((sub / "result.json").read_text()) == result
    model = ws.load(sub / result["exports"]["weights"])  # rebuilt from the registry + JSON
    trained = Trainer.resume(sub, console=quiet(), progress=False,
                             build_net=FIN._SubnetBuilder(ws.load_supernet(parent).run,
                                                          ws.load_supernet(parent).config,
                                                          FIN.read_target(parent, pick=0),
                                                          "finetune"))
    x = torch.randn(3, 1, 28, 28)
    trained.net.eval()
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), trained.net(x), atol=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(str(sub / result["exports"]["onnx"]))
    onnx_out = session.run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(onnx_out), model(x), atol=1e-4)
    again = FIN.finish(parent, "finetune", pick=0, console=quiet(), progress=False)
    assert again == result and calls == [1]  # finished: the test split is not read again
    tests = [json.loads(line) for line in (sub / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in tests].count("test") == 1


def test_interrupted_finishing_resumes_to_the_same_model(parent: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    args = {"overrides": ["optim.epochs=1"], "console": quiet(), "progress": False}
    whole = FIN.finish(parent, "retrain", pick=1, name="whole", **args)
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, max_steps=None: fit(self, max_steps=2))
    assert FIN.finish(parent, "retrain", pick=1, name="cut", **args) == {}
    assert not (parent / "retrain" / "cut" / "result.json").exists()
    monkeypatch.setattr(Trainer, "fit", fit)
    resumed = FIN.finish(parent, "retrain", pick=1, name="cut", **args)
    assert resumed["steps"] == whole["steps"] == 4
    a = ws.load(parent / "retrain" / "whole" / "exports" / "model")
    b = ws.load(parent / "retrain" / "cut" / "exports" / "model")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert resumed["test_accuracy"] == whole["test_accuracy"]


def test_an_existing_sub_run_refuses_other_settings(parent: Path) -> None:
    args = {"console": quiet(), "progress": False}
    done = FIN.finish(parent, "retrain", pick=1, name="settings",
                      overrides=["optim.epochs=1"], **args)
    with pytest.raises(WidthSearchError, match=r"optim.epochs: 1 -> 2.*another --name"):
        FIN.finish(parent, "retrain", pick=1, name="settings", overrides=["optim.epochs=2"],
                   **args)
    same = ["optim.epochs=1", "train.threads=1"]  # the same run: the result is handed back
    assert FIN.finish(parent, "retrain", pick=1, name="settings", overrides=same, **args) == done


def test_retrain_starts_from_scratch(parent: Path) -> None:
    target = FIN.read_target(parent, pick=1)
    loaded = ws.load_supernet(parent)
    builder = FIN._SubnetBuilder(loaded.run, loaded.config, target, "retrain")
    net = builder(FIN.finishing_config(loaded.config, "retrain", []), loaded.data)
    ref = loaded.net.export(loaded.net.space.validate(target.config))
    got, want = _state(net.export(net.space.max())), _state(ref)
    assert got.keys() == want.keys()
    assert all(got[k].shape == want[k].shape for k in got)
    conv = next(k for k, v in got.items() if v.ndim == 4)
    assert not torch.equal(got[conv], want[conv])  # fresh weights, not the supernet's


def test_config_file_and_mistakes(parent: Path, tmp_path: Path) -> None:
    space = ws.load_supernet(parent).net.space
    path = tmp_path / "widths.json"
    path.write_text(json.dumps(space.min().to_dict()))
    target = FIN.read_target(parent, config_file=path)
    assert target.config == space.min().to_dict() and target.choice == {}
    assert target.name == "widths"
    with pytest.raises(WidthSearchError, match="out of range"):
        FIN.read_target(parent, pick=5)
    with pytest.raises(WidthSearchError, match="exactly one"):
        FIN.read_target(parent)
    with pytest.raises(WidthSearchError, match="does not exist"):
        FIN.read_target(tmp_path / "nope", pick=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({next(iter(space.names)): 10_000}))
    with pytest.raises(WidthSearchError, match="not allowed"):
        FIN.finish(parent, "retrain", config_file=bad, console=quiet(), progress=False)
    with pytest.raises(WidthSearchError, match="mode"):
        FIN.finish(parent, "polish", pick=0)  # type: ignore[arg-type]


def test_cli(parent: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retrain", str(parent), "--pick", "0", "--name", "cli", "--no-progress",
                 "--set", "optim.epochs=1"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (parent / "retrain" / "cli" / "exports" / "model.onnx").is_file()
    assert main(["finetune", str(parent), "--pick", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["retrain", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_export_cuts_recalibrates_and_saves_without_training(parent: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(parent), "--pick", "0", "--out", str(tmp_path / "e")]) == 0
    assert "onnx:" in capsys.readouterr().out
    back = ws.load(tmp_path / "e" / "model").eval()
    loaded = ws.load_supernet(parent)
    target = FIN.read_target(parent, pick=0)
    cut = loaded.net.export(loaded.net.space.validate(target.config), target.choice)
    weights = {k: v for k, v in _state(cut).items() if "running" not in k and "num_batches" not in k}
    got = _state(back)
    assert all(torch.equal(got[k], v) for k, v in weights.items())  # the supernet's weights
    assert not torch.equal(got[next(k for k in got if "running_mean" in k)],
                           _state(cut)[next(k for k in got if "running_mean" in k)])  # recalibrated
    import onnxruntime as ort

    x = torch.randn(2, 1, 28, 28)
    session = ort.InferenceSession(str(tmp_path / "e" / "model.onnx"))
    with torch.no_grad():
        expected = back(x).numpy()
    got_onnx = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got_onnx - expected).max() < 1e-4
    assert main(["export", str(parent), "--pick", "7"]) == 2  # one line, exit 2


def test_finishing_trains_its_one_width_without_the_parents_sampler() -> None:
    from widthsearch.config import load_config

    parent = load_config({"train": {"sampler": "budgets", "budgets": ["macs=10%"]}})
    config = FIN.finishing_config(parent, "retrain", [])
    assert config.train.sampler == "widths" and config.train.budgets == []
