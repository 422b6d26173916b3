"""The run report: sections appear exactly when their data is present, broken files become
notes, the HTML is self-contained and renders with visible plots in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from widthsearch.cli import main
from widthsearch.report import QUICKSTART_FILE, build_report, write_report

GROUPS = {f"g{i}": 16 * (1 + i % 3) for i in range(6)}
FULL = {"macs": 4.0e7, "params": 2.7e5}


def _front(n: int, rng: np.random.Generator) -> dict:
    evaluated = []
    for i in range(n):
        ratio = float(rng.uniform(0.1, 1.0))
        evaluated.append({
            "config": {g: max(1, int(s * ratio)) for g, s in GROUPS.items()},
            "costs": {"macs": FULL["macs"] * ratio, "params": FULL["params"] * ratio},
            "val_accuracy": 0.6 + 0.3 * ratio ** 0.5 + float(rng.normal(0, 0.01)),
            "val_loss": 1.0 - ratio, "choice": {}, "step": i, "on_front": i % 5 == 0})
    uniform = [{"config": {g: int(s * r) for g, s in GROUPS.items()},
                "costs": {"macs": FULL["macs"] * r * r, "params": FULL["params"] * r * r},
                "val_accuracy": 0.55 + 0.3 * r, "val_loss": 1 - r, "choice": {}, "step": 0}
               for r in (0.25, 0.5, 0.75, 1.0)]
    return {"method": "evolution", "objectives": ["val_accuracy", "macs"],
            "full_costs": FULL, "evaluated": evaluated, "uniform": uniform}


def _chosen() -> dict:
    return {"chosen": [
        {"config": {g: max(1, s // d) for g, s in GROUPS.items()}, "choice": {},
         "budget": {"macs": {"spec": f"macs={100 // d}%", "limit": FULL["macs"] / d,
                             "ratio": 1 / d}},
         "costs": {"macs": FULL["macs"] / d * 0.97, "params": FULL["params"] / d},
         "val_accuracy": 0.9 - 0.05 * d}
        for d in (2, 4)]}


def make_run(root: Path, *, everything: bool = True) -> Path:
    """A run directory written by hand in the formats the library writes."""
    run = root / "run"
    (run / "search").mkdir(parents=True)
    config = {"model": {"name": "resnet20"}, "data": {"name": "fashion-mnist", "split_seed": 0},
              "supernet": {"pattern": "cafenet"}, "strategy": {"name": "cafenet"},
              "train": {"seed": 3, "budgets": ["macs=10%", "macs=25%"]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"kind": "start", "step": 0, "device": "cpu", "world_size": 1}]
    for step in range(10, 210, 10):
        lines.append({"kind": "train", "step": step, "epoch": step / 100, "loss": 2.3 / (1 + step / 50),
                      "lr": 0.1})
        if step % 100 == 0:
            lines.append({"kind": "epoch", "step": step, "epoch": step // 100, "train_loss": 0.5,
                          "val": {lbl: {"accuracy": a + 0.05 * step / 100, "loss": 0.4,
                                        "macs": 1.0, "macs_ratio": r}
                                  for lbl, a, r in (("max", 0.8, 1.0), ("mid", 0.75, 0.3),
                                                    ("min", 0.7, 0.07))}})
            lines.append({"kind": "trained_costs", "step": step, "epoch": step // 100,
                          "metric": "macs", "bins": 20, "full": 4e7,
                          "counts": [0, 0, 1, 3, 8, 12, 9, 7, 4, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0,
                                     step // 10]})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "space.json").write_text(json.dumps(
        {"format": "widthsearch-space/1", "pattern": "cafenet",
         "groups": {g: {"size": s, "step": 1, "choices": list(range(1, s + 1))}
                    for g, s in GROUPS.items()}}))
    rng = np.random.default_rng(0)
    (run / "search" / "front.json").write_text(json.dumps(_front(60, rng)))
    (run / "search" / "chosen.json").write_text(json.dumps(_chosen()))
    if not everything:
        return run
    import torch
    from safetensors.torch import save_file

    levels = [{"config": {g: int(s * r) for g, s in GROUPS.items()},
               "costs": {"macs": FULL["macs"] * r, "params": FULL["params"] * r, "memory": 1.0},
               "val": {"accuracy": 0.7 + 0.2 * r, "loss": 0.5}} for r in (0.3, 0.6, 1.0)]
    meta = {"format": "widthsearch-slimmable/1", "levels": levels, "metric": "macs",
            "full_costs": FULL, "strategy": "joslim"}
    save_file({"weights/w": torch.zeros(2)}, str(run / "slimmable.safetensors"),
              metadata={"widthsearch": json.dumps(meta)})
    measured = list(rng.uniform(1e-3, 3e-3, 12))
    (run / "latency-cpu.json").write_text(json.dumps({
        "format": "widthsearch-latency-table/1", "device": {"backend": "torch", "threads": 1},
        "full_latency": 3e-3, "error": {"samples": 12, "mape": 0.06, "within_10pct": 0.83,
                                        "measured": measured,
                                        "predicted": [m * 1.05 for m in measured]}}))
    (run / QUICKSTART_FILE).write_text(json.dumps({
        "latency_device": "this CPU (1 thread)", "seeds": {"search.seed": 0},
        "rows": [{"name": "searched", "budget": "macs=50%", "macs": 2e7, "macs_ratio": 0.5,
                  "params": 1.2e5, "latency_ms": 1.2, "test_accuracy": 0.88, "vs_uniform": 0.01},
                 {"name": "uniform", "budget": "macs=50%", "macs": 1.9e7, "macs_ratio": 0.48,
                  "params": 1.1e5, "latency_ms": 1.1, "test_accuracy": 0.87}]}))
    return run


def _titles(report) -> list[str]:
    return [s.title for s in report.sections]


def test_every_section_from_a_full_run(tmp_path: Path) -> None:
    report = build_report(make_run(tmp_path))
    titles = _titles(report)
    for expected in ("Run", "Final models (TEST split, measured once)", "Training",
                     "Costs of the widths trained", "Width search (VAL split)",
                     "Chosen widths per layer group", "Slimmable levels (VAL split)",
                     "Latency table", "Provenance"):
        assert expected in titles, titles
    assert set(report.plots) == {"training", "trained_costs", "front", "widths", "slimmable",
                                 "latency"}
    assert not report.notes, report.notes
    md = report.markdown()
    assert "macs=50%" in md and "88.00%" in md and "+1.00 pts" in md
    assert "TEST split is read once" in md and "train.seed" in md
    assert "budgets declared for the run" in md


def test_histograms_in_both_shapes() -> None:
    from widthsearch.report import _budget_ratios, _histograms

    records = [{"kind": "trained_costs", "epoch": 1, "metric": "macs", "bins": 4,
                "counts": [1, 2, 3, 4]},
               {"kind": "epoch", "trained_costs": {"edges": [0, 0.5, 1], "counts": [5, 5]}},
               {"kind": "trained_costs", "counts": [1, "x"]},
               {"kind": "trained_costs", "edges": [0, 1], "counts": [1, 2]}]
    found = _histograms(records)
    assert [h["edges"] for _, h in found] == [[0, 0.25, 0.5, 0.75, 1.0], [0, 0.5, 1]]
    assert _budget_ratios(["macs=10%", "params=5%", "macs=2M", 0.3], "macs") == [0.1, 0.3]


def test_sections_only_when_their_data_is_present(tmp_path: Path) -> None:
    run = make_run(tmp_path, everything=False)
    titles = _titles(build_report(run))
    assert "Slimmable levels (VAL split)" not in titles
    assert "Latency table" not in titles
    assert "Final models (TEST split, measured once)" not in titles
    for name in ("search/front.json", "search/chosen.json", "metrics.jsonl"):
        (run / name).unlink()
    report = build_report(run)
    assert _titles(report) == ["Run", "Provenance"]
    assert not report.plots


def test_finetune_results_make_the_final_table(tmp_path: Path) -> None:
    run = make_run(tmp_path, everything=False)
    sub = run / "finetune" / "pick-0"
    sub.mkdir(parents=True)
    (sub / "result.json").write_text(json.dumps({
        "mode": "finetune", "source": "search/chosen.json[0]", "macs": 2e7, "params": 1e5,
        "val_accuracy": 0.86, "test_accuracy": 0.851, "steps": 40}))
    md = build_report(run).markdown()
    assert "finetune/pick-0" in md and "85.10%" in md


def test_broken_files_are_notes_not_tracebacks(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "search" / "front.json").write_text("{not json")
    (run / "search" / "chosen.json").write_text(json.dumps({"chosen": [{"config": 5}]}))
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": "x"}\nnot json\n[1]\n'
                                       '{"kind": "epoch", "epoch": 1, "val": {"max": 3}}\n')
    (run / "space.json").write_text("[]")
    (run / "slimmable.safetensors").write_bytes(b"\x00" * 4)
    (run / "latency-cpu.json").write_text(json.dumps({"format": "other"}))
    (run / QUICKSTART_FILE).write_text(json.dumps({"rows": [{"name": 1, "macs": "many"}, 7]}))
    (run / "config.yaml").write_text("model: [unclosed")
    report = build_report(run)
    text = " ".join(report.notes)
    for name in ("search/front.json", "metrics.jsonl", "space.json", "slimmable.safetensors",
                 "latency-cpu.json", "config.yaml"):
        assert name in text, (name, report.notes)
    assert "Provenance" in _titles(report)
    report.html()
    report.markdown()


def test_write_report_cli_and_self_contained_html(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', page), "the HTML must not link any file"
    md = (run / "report.md").read_text()
    for link in re.findall(r"\]\((plots/[^)]+)\)", md):
        assert (run / link).is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        script = Path(__file__).parent.parent / "scripts" / "setup-system.sh"
        subprocess.run([str(script), "chromium"], check=False, capture_output=True,
                       timeout=900)
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("headless Chromium is not installed; install it with: "
                "sudo apt-get update && sudo apt-get install -y chromium")


def test_report_renders_with_plots_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    run = make_run(tmp_path)
    html_path = write_report(run)["html"]
    png = tmp_path / "page.png"
    browser = _chromium()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
           "--window-size=1200,3000", html_path.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[:2] == (3000, 1200)
    non_white = float((image.min(axis=2) < 235).mean())
    assert non_white > 0.04, f"only {non_white:.1%} of the page is drawn"
    colours = {tuple(int(c) // 16 for c in px) for px in image[::3, ::3].reshape(-1, 3)}
    assert len(colours) > 60, f"{len(colours)} distinct colours: the plots are not drawn"
    # The plots' own colours (matplotlib's default blue and orange) are on the page.
    blue = (np.abs(image.astype(int) - (31, 119, 180)).sum(axis=2) < 40).sum()
    orange = (np.abs(image.astype(int) - (255, 127, 14)).sum(axis=2) < 40).sum()
    assert blue > 200 and orange > 50, (blue, orange)
