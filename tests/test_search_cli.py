"""`widthsearch search` on a tiny trained run, and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trainer import data_root, make, tiny_config  # noqa: F401  (fixture)

import widthsearch as ws
from widthsearch.cli import main
from widthsearch.errors import WidthSearchError


@pytest.fixture(scope="module")
def run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("runs") / "cafe"
    make(tiny_config(data_root, optim={"epochs": 1}), path).fit()
    return path


def test_search_writes_front_chosen_and_plot(run: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["search", str(run), "--budget", "macs=50%", "--budget", "macs=30%",
                 "--method", "random", "--samples", "12", "--recal-batches", "1",
                 "--val-batches", "1", "--max-choices", "1", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "macs=50%" in out and "val acc" in out
    chosen = json.loads((run / "search" / "chosen.json").read_text())
    assert [set(c) for c in chosen["chosen"]] == [
        {"config", "choice", "budget", "costs", "val_accuracy"}] * 2
    loaded = ws.load_supernet(run)
    full = loaded.net.cost(loaded.net.space.max()).macs
    for entry, frac in zip(chosen["chosen"], (0.5, 0.3), strict=True):
        assert loaded.net.space.validate(entry["config"]) == entry["config"]
        assert entry["costs"]["macs"] <= frac * full
        assert entry["costs"]["macs"] == loaded.net.cost(entry["config"]).macs
        assert 0.0 <= entry["val_accuracy"] <= 1.0
    front = json.loads((run / "search" / "front.json").read_text())
    assert len(front["evaluated"]) == 24 and any(e["on_front"] for e in front["evaluated"])
    assert len(front["uniform"]) >= 5
    png = (run / "search" / "front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # run again: the search resumes from its finished state and gives the same choice
    assert main(["search", str(run), "--budget", "macs=50%", "--budget", "macs=30%",
                 "--method", "random", "--samples", "12", "--recal-batches", "1",
                 "--val-batches", "1", "--max-choices", "1", "--quiet"]) == 0
    assert json.loads((run / "search" / "chosen.json").read_text()) == chosen


def test_search_errors_are_one_line(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(run), "--budget", "macs=1%", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: macs=1%") and "reachable macs range" in err
    assert len(err.splitlines()) == 1
    assert main(["search", str(run), "--budget", "macs=50%", "--method", "greedy",
                 "--population", "4", "--quiet"]) == 2
    assert "has no option 'population'" in capsys.readouterr().err


def test_python_api_on_a_supernet(run: Path, tmp_path: Path) -> None:
    loaded = ws.load_supernet(run)
    evaluator = ws.Evaluator(loaded.net, loaded.data.recal, loaded.data.val, recal_batches=1,
                             val_batches=1, max_choices=1)
    result = ws.search_widths(loaded.net, ["macs=85%"], "greedy", evaluator=evaluator,
                              align=4, out_dir=tmp_path, step=4)
    (chosen,) = result.chosen
    for g in loaded.net.space.groups:
        w = chosen.record.config[g.name]
        assert w % 4 == 0 or w == g.size
    assert (tmp_path / "chosen.json").exists() and (tmp_path / "state-greedy.json").exists()
    with pytest.raises(WidthSearchError, match="needs evaluator"):
        ws.search_widths(loaded.net, ["macs=60%"])
    with pytest.raises(WidthSearchError, match="unknown search method 'bayes'"):
        ws.search_widths(loaded.net, ["macs=60%"], "bayes", evaluator=evaluator)
