"""Ranking fidelity: Kendall tau / Spearman between supernet scores and stand-alone training
of widths drawn near a budget; resumable through the finishing sub-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trainer import data_root, make, quiet, tiny_config  # noqa: F401  (fixture)

from widthsearch import fidelity as FID
from widthsearch import finish as FIN
from widthsearch.cli import main
from widthsearch.errors import WidthSearchError


@pytest.fixture(scope="module")
def run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("runs") / "cafe"
    make(tiny_config(data_root, optim={"epochs": 1}), path).fit()
    return path


def test_rank_correlation_on_planted_scores() -> None:
    # one discordant pair of six: tau = (5 - 1) / 6; rho = 1 - 6 * 2 / (4 * 15)
    got = FID.rank_correlation([0.1, 0.2, 0.3, 0.4], [0.5, 0.7, 0.6, 0.9])
    assert got["kendall_tau"] == pytest.approx(4 / 6)
    assert got["spearman"] == pytest.approx(0.8)
    reverse = FID.rank_correlation([1, 2, 3], [3, 2, 1])
    assert reverse["kendall_tau"] == pytest.approx(-1.0)
    flat = FID.rank_correlation([1, 1, 1], [1, 2, 3])
    assert flat["kendall_tau"] != flat["kendall_tau"]  # NaN: no order to agree with
    with pytest.raises(WidthSearchError, match="paired"):
        FID.rank_correlation([1, 2], [1, 2, 3])


def test_fidelity_pairs_each_width_with_its_own_standalone_run(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    finish = FIN.finish

    def counting(*args, **kwargs):
        calls.append(kwargs["name"])
        return finish(*args, **kwargs)

    monkeypatch.setattr(FIN, "finish", counting)
    result = FID.fidelity(run, 3, budget="macs=50%", epochs=1, console=quiet(), progress=False,
                          evaluator_options={"recal_batches": 1, "val_batches": 1})
    rows = result.record["samples_scored"]
    assert len(rows) == 3 and len(calls) == 3
    samples = json.loads((run / "fidelity" / "macs-50pct" / "samples.json").read_text())
    limit = samples["info"]["limit"]
    assert all(0.8 * limit <= r["macs"] <= limit * (1 + 1e-9) for r in rows)
    assert len({json.dumps(r["config"], sort_keys=True) for r in rows}) == 3
    for row in rows:  # each stand-alone score is its own sub-run's, trained on its width
        sub = json.loads((run / row["subrun"] / "result.json").read_text())
        assert sub["config"] == row["config"]
        assert sub["test_accuracy"] is None  # a ranking sees VAL only
        assert row["standalone_val_accuracy"] == sub["val_accuracy"]
    expected = FID.rank_correlation([r["supernet_accuracy"] for r in rows],
                                    [r["standalone_val_accuracy"] for r in rows])
    for key, value in expected.items():
        assert result.record[key] == pytest.approx(value, nan_ok=True)
    assert (run / "fidelity" / "macs-50pct" / "fidelity.png").stat().st_size > 0

    calls.clear()  # again: the finished stand-alone runs are reused, not retrained
    sub = run / rows[1]["subrun"]
    before = (sub / "result.json").stat().st_mtime_ns
    again = FID.fidelity(run, 3, budget="macs=50%", epochs=1, console=quiet(), progress=False,
                         evaluator_options={"recal_batches": 1, "val_batches": 1})
    assert again.record["samples_scored"] == rows
    assert (sub / "result.json").stat().st_mtime_ns == before
    with pytest.raises(WidthSearchError, match="other settings"):
        FID.fidelity(run, 4, budget="macs=50%", epochs=1, console=quiet(), progress=False)
    # another recipe trains other sub-runs; the same recipe finds the same ones
    recipe = ["optim.epochs=1"]
    assert FID.subrun_name("t", recipe, 0) == FID.subrun_name("t", list(recipe), 0)
    assert FID.subrun_name("t", recipe, 0) != FID.subrun_name("t", ["optim.epochs=2"], 0)
    assert rows[0]["subrun"].endswith(FID.subrun_name("macs-50pct", recipe, 0))


def test_tau_uses_the_planted_scores_of_each_width(run: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-alone accuracy planted as the negated supernet score: tau must be -1."""
    real = FIN.finish

    def planted(run_dir, mode, *, config_file, name, **kwargs):
        out = real(run_dir, mode, config_file=config_file, name=name, **kwargs)
        config = json.loads(Path(config_file).read_text())
        return {**out, "val_accuracy": -sum(config.values()) / 1e4}

    from widthsearch import evaluate as EV
    score = EV.Evaluator.evaluate

    def by_width(self, configs):
        return [s.__class__(s.config, sum(s.config.values()) / 1e4, s.loss)
                for s in score(self, configs)]

    monkeypatch.setattr(FIN, "finish", planted)
    monkeypatch.setattr(EV.Evaluator, "evaluate", by_width)
    result = FID.fidelity(run, 3, budget="macs=50%", epochs=1, console=quiet(), progress=False,
                          name="planted", evaluator_options={"recal_batches": 1,
                                                             "val_batches": 1})
    assert result.kendall_tau == pytest.approx(-1.0)
    assert result.spearman == pytest.approx(-1.0)


def test_cli_fidelity_and_errors(run: Path, capsys: pytest.CaptureFixture[str],
                                 data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    assert main(["fidelity", str(run), "--samples", "2", "--budget", "macs=60%",
                 "--epochs", "1", "--recal-batches", "1", "--no-progress"]) == 0
    assert "Kendall tau" in capsys.readouterr().out
    assert main(["fidelity", str(run), "--samples", "1"]) == 2
    assert "--samples" in capsys.readouterr().err
    assert main(["fidelity", str(run), "--samples", "2", "--budget", "macs=0.1%"]) == 2
    assert "reachable" in capsys.readouterr().err
    other = tmp_path / "other"
    make(tiny_config(data_root, optim={"epochs": 1, "lr": 0.05}), other).fit()
    with pytest.raises(WidthSearchError, match="optim"):
        FID.fidelity(run, 2, standalone_run=other, console=quiet(), progress=False)
