"""The report of a run directory: report.md, one self-contained report.html and the plots.

`write_report(run_dir)` reads whatever the run holds and renders one section per kind of
result it finds; a section whose data is absent is left out, and a file that is present
but unreadable or malformed is skipped with a note in the report (never a traceback).

    metrics.jsonl            training curves; a trained-cost histogram when recorded
    search/front.json        the Pareto front, the uniform-multiplier line
    search/chosen.json       the chosen points, per-layer widths (against space.json)
    slimmable*.safetensors   the slimmable levels (metadata only, no tensor is loaded)
    latency*.json            a latency table's error against exported models
    finetune/*/result.json, retrain/*/result.json, quickstart.json
                             the finished models on the TEST split (the only test numbers)
    config.yaml              provenance: the config, seeds, versions

Plots are PNG files (matplotlib's Agg backend) in RUN_DIR/plots/, linked from report.md and
inlined as base64 in report.html, so the HTML file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import WidthSearchError

__all__ = ["QUICKSTART_FILE", "Report", "Section", "build_report", "write_report"]

QUICKSTART_FILE = "quickstart.json"
PLOTS_DIR = "plots"
_COST_LABELS = {"macs": "MACs", "params": "params", "memory": "peak memory",
                "memory_live": "live memory", "latency": "latency"}
_SPLITS_TEXT = (
    "Training curves and every search score use the VAL split (images held out of the "
    "training split with `data.split_seed`); BN statistics are recalibrated on unaugmented "
    "training images. The TEST split is read once per finished model, after its training "
    "ends, and appears only in the final table.")


# ------------------------------------------------------------------------------ the model


@dataclass
class Section:
    """One part of the report: a title, markdown-ready blocks and the plots it shows."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    """("text", str) | ("table", (header, rows)) | ("plot", name) | ("code", str)."""

    def text(self, value: str) -> Section:
        self.blocks.append(("text", value))
        return self

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Section:
        self.blocks.append(("table", (list(header), [list(map(_cell, r)) for r in rows])))
        return self

    def plot(self, name: str) -> Section:
        self.blocks.append(("plot", name))
        return self

    def code(self, value: str) -> Section:
        self.blocks.append(("code", value))
        return self


@dataclass
class Report:
    """Every section found in a run, the plots they refer to and the notes on skipped files."""

    run_dir: Path
    title: str
    sections: list[Section] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""]
            for kind, value in s.blocks:
                lines += _markdown_block(kind, value) + [""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)

    def html(self) -> str:
        body = [f"<h1>{_esc(self.title)}</h1>"]
        for s in self.sections:
            body.append(f"<section><h2>{_esc(s.title)}</h2>")
            body += [self._html_block(kind, value) for kind, value in s.blocks]
            body.append("</section>")
        if self.notes:
            items = "".join(f"<li>{_esc(n)}</li>" for n in self.notes)
            body.append(f"<section><h2>Notes</h2><ul>{items}</ul></section>")
        return _HTML_PAGE.format(title=_esc(self.title), body="\n".join(body))

    def _html_block(self, kind: str, value: Any) -> str:
        if kind == "text":
            return f"<p>{_esc(value)}</p>"
        if kind == "code":
            return f"<pre>{_esc(value)}</pre>"
        if kind == "plot":
            data = base64.b64encode(self.plots[value]).decode("ascii")
            return f'<img alt="{_esc(value)}" src="data:image/png;base64,{data}">'
        header, rows = value
        head = "".join(f"<th>{_esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>"
                       for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: right; }}
th {{ background: #eee; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 85%; }}
</style></head>
<body>
{body}
</body></html>
"""


def _markdown_block(kind: str, value: Any) -> list[str]:
    if kind == "text":
        return [value]
    if kind == "code":
        return ["```", value.rstrip("\n"), "```"]
    if kind == "plot":
        return [f"![{value}]({PLOTS_DIR}/{value}.png)"]
    header, rows = value
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


# ------------------------------------------------------------------------------ reading


class _Reader:
    """Reads the run's files; a file that is present but broken becomes a note."""

    def __init__(self, run_dir: Path, notes: list[str]) -> None:
        self.run_dir = run_dir
        self.notes = notes

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path)

    def json(self, path: Path, *, expect: type = dict) -> Any:
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.notes.append(f"{self.rel(path)} skipped: not readable JSON ({_short(e)})")
            return None
        if not isinstance(value, expect):
            self.notes.append(f"{self.rel(path)} skipped: expected a JSON "
                              f"{expect.__name__}, found {type(value).__name__}")
            return None
        return value

    def yaml(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            self.notes.append(f"{self.rel(path)} is missing: no config in the provenance")
            return None
        try:
            value = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            self.notes.append(f"{self.rel(path)} skipped: not readable YAML ({_short(e)})")
            return None
        if not isinstance(value, dict):
            self.notes.append(f"{self.rel(path)} skipped: not a mapping")
            return None
        return value

    def jsonl(self, path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            self.notes.append(f"{self.rel(path)} skipped: {_short(e)}")
            return []
        records, bad = [], 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
        if bad:
            self.notes.append(f"{self.rel(path)}: {bad} malformed line(s) skipped")
        return records

    def safetensors_metadata(self, path: Path) -> dict[str, Any] | None:
        """The JSON record a slimmable file carries, read from the header alone."""
        try:
            raw = path.read_bytes()[:8]
            size = int.from_bytes(raw, "little")
            if len(raw) < 8 or not 0 < size < 100_000_000:
                raise ValueError("no safetensors header")
            with path.open("rb") as f:
                f.seek(8)
                header = json.loads(f.read(size))
            record = json.loads(header["__metadata__"]["widthsearch"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.notes.append(f"{self.rel(path)} skipped: not a widthsearch slimmable file "
                              f"({_short(e)})")
            return None
        return record if isinstance(record, dict) else None


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:160] or type(error).__name__


def _num(value: Any) -> float | None:
    """A finite float, or None (bools and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------ plotting


def _figure(width: float = 7.0, height: float = 4.2, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=110)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------ sections


@dataclass
class _Run:
    """What the sections share: the reader, the report being built, and the run's config."""

    reader: _Reader
    report: Report
    config: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    space: dict[str, Any] | None


def _section_final(run: _Run) -> Section | None:
    """The finished models on the TEST split: the quickstart table, else every
    finetune/retrain result.json."""
    quick = run.reader.json(run.reader.run_dir / QUICKSTART_FILE)
    rows = quick.get("rows") if isinstance(quick, dict) else None
    section = Section("Final models (TEST split, measured once)")
    if isinstance(rows, list) and rows:
        header = ["model", "budget", "MACs", "MACs %", "params", "latency (ms)",
                  "test accuracy", "vs uniform"]
        table = []
        for r in rows:
            if not isinstance(r, dict):
                continue
            acc = _num(r.get("test_accuracy"))
            gain = _num(r.get("vs_uniform"))
            table.append([r.get("name"), r.get("budget"), _int(r.get("macs")),
                          _pct(r.get("macs_ratio")), _int(r.get("params")),
                          _fmt(r.get("latency_ms"), ".3f"),
                          f"{100 * acc:.2f}%" if acc is not None else None,
                          f"{100 * gain:+.2f} pts" if gain is not None else None])
        section.table(header, table)
        if quick.get("latency_device"):
            section.text(f"Latency: median of exported models on {quick['latency_device']}.")
        return section
    results = []
    for mode in ("finetune", "retrain"):
        folder = run.reader.run_dir / mode
        for path in sorted(folder.glob("*/result.json")) if folder.is_dir() else []:
            r = run.reader.json(path)
            if r is not None:
                results.append((run.reader.rel(path.parent), r))
    if not results:
        return None
    table = [[name, r.get("mode"), r.get("source"), _int(r.get("macs")), _int(r.get("params")),
              _fmt_pct(r.get("val_accuracy")), _fmt_pct(r.get("test_accuracy")), r.get("steps")]
             for name, r in results]
    return section.table(["sub-run", "mode", "widths from", "MACs", "params", "val accuracy",
                          "test accuracy", "steps"], table)


def _section_training(run: _Run) -> Section | None:
    train = [(s, _num(r.get("loss"))) for r in run.metrics
             if r.get("kind") == "train" and (s := _num(r.get("step"))) is not None]
    train = [(s, v) for s, v in train if v is not None]
    epochs = [r for r in run.metrics if r.get("kind") == "epoch"]
    val: dict[str, list[tuple[float, float]]] = {}
    for r in epochs:
        x = _num(r.get("epoch"))
        scores = r.get("val")
        if x is None or not isinstance(scores, dict):
            continue
        for label, m in scores.items():
            acc = _num(m.get("accuracy")) if isinstance(m, dict) else None
            if acc is not None:
                val.setdefault(str(label), []).append((x, 100 * acc))
    if not train and not val:
        return None
    section = Section("Training")
    cols = int(bool(train)) + int(bool(val))
    fig, axes = _figure(6.0 * cols, 3.8, cols)
    axes = list(axes) if cols > 1 else [axes]
    if train:
        ax = axes.pop(0)
        ax.plot([s for s, _ in train], [v for _, v in train], color="C0", lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("training loss (mean over the logged window)")
        ax.grid(alpha=0.3)
    if val:
        ax = axes.pop(0)
        for i, (label, points) in enumerate(val.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=4,
                    color=f"C{(i + 1) % 10}", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title("val accuracy per width")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    run.report.plots["training"] = _png(fig)
    section.plot("training")
    if val:
        last = epochs[-1].get("val") if isinstance(epochs[-1].get("val"), dict) else {}
        rows = [[label, _fmt_pct(m.get("accuracy")), _fmt(m.get("loss"), ".4f"),
                 _pct(m.get("macs_ratio"))]
                for label, m in last.items() if isinstance(m, dict)]
        if rows:
            section.text(f"Last epoch ({_cell(_num(epochs[-1].get('epoch')))}), VAL split:")
            section.table(["width", "val accuracy", "val loss", "MACs / full"], rows)
    return section


def _histograms(metrics: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Per-epoch histograms of the cost ratios trained: records of kind "trained_costs"
    ({"metric", "bins", "counts"} over [0, 1] of the full cost), or any record carrying
    {"edges": [...], "counts": [...]} under that kind or a "trained_costs" field."""
    found = []
    for r in metrics:
        candidates = [r] if r.get("kind") in ("trained_costs", "cost_histogram") else []
        candidates += [r[k] for k in ("trained_costs", "cost_histogram") if isinstance(r.get(k), dict)]
        for h in candidates:
            counts = h.get("counts")
            if not isinstance(counts, list) or not counts or \
                    any(_num(c) is None for c in counts):
                continue
            edges = h.get("edges")
            if edges is None:
                edges = [i / len(counts) for i in range(len(counts) + 1)]
            if (not isinstance(edges, list) or len(edges) != len(counts) + 1
                    or any(_num(e) is None for e in edges)):
                continue
            label = r.get("epoch", h.get("epoch", r.get("step", len(found))))
            found.append((f"epoch {_cell(label)}", {"metric": h.get("metric", "macs"),
                                                    "edges": edges, "counts": counts,
                                                    "budgets": h.get("budgets")}))
    return found


def _budget_ratios(specs: Any, metric: str) -> list[float]:
    """Budgets such as "macs=25%" as ratios of the full cost (those in % of `metric`)."""
    out = []
    for spec in specs if isinstance(specs, list) else []:
        if _num(spec) is not None:
            out.append(float(spec))
        elif isinstance(spec, str) and "=" in spec:
            name, _, value = spec.partition("=")
            if name.strip().lower() == metric and value.strip().endswith("%"):
                try:
                    out.append(float(value.strip()[:-1]) / 100)
                except ValueError:
                    continue
    return out


def _section_histogram(run: _Run) -> Section | None:
    found = _histograms(run.metrics)
    if not found:
        return None
    metric = str(found[-1][1].get("metric", "macs"))
    fig, ax = _figure()
    n = len(found)
    for i, (label, h) in enumerate(found):
        counts = [float(c) for c in h["counts"]]
        total = sum(counts) or 1.0
        ax.stairs([c / total for c in counts], [float(e) for e in h["edges"]],
                  color=_ramp(i, n), lw=1.4, fill=n == 1,
                  label=label if n <= 8 or i in (0, n - 1) else None)
    train = (run.config or {}).get("train")
    declared = _budget_ratios(found[-1][1].get("budgets"), metric) + \
        _budget_ratios(train.get("budgets") if isinstance(train, dict) else None, metric)
    for b in sorted(set(declared)):
        ax.axvline(b, color="C3", ls="--", lw=1.2)
    ax.set_xlabel(f"{_COST_LABELS.get(metric, metric)} of the widths trained "
                  "(fraction of the full model)")
    ax.set_ylabel("share of the widths trained")
    ax.set_title("where the supernet was trained")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    run.report.plots["trained_costs"] = _png(fig)
    section = Section("Costs of the widths trained").plot("trained_costs")
    if declared:
        section.text("Dashed lines: the budgets declared for the run (train.budgets). A "
                     "budget where the bars are empty was rarely trained; train with "
                     "`train.sampler=budgets` to rank widths there.")
    return section


def _ramp(i: int, n: int) -> Any:
    import matplotlib

    return matplotlib.colormaps["viridis"](0.1 + 0.8 * i / max(1, n - 1))


def _section_search(run: _Run) -> tuple[Section | None, list[dict[str, Any]]]:
    search = run.reader.run_dir / "search"
    front = run.reader.json(search / "front.json")
    chosen_file = run.reader.json(search / "chosen.json")
    chosen = chosen_file.get("chosen") if isinstance(chosen_file, dict) else None
    chosen = [c for c in chosen if isinstance(c, dict)] if isinstance(chosen, list) else []
    if chosen_file is not None and not chosen:
        run.reader.notes.append("search/chosen.json holds no chosen config")
    if front is None and not chosen:
        return None, []
    full = front.get("full_costs", {}) if isinstance(front, dict) else {}
    objectives = front.get("objectives", []) if isinstance(front, dict) else []
    metric = next((m for m in objectives if m != "val_accuracy"), None)
    if metric is None:
        metric = "macs" if "macs" in full else next(iter(full), "macs")
    scale = _num(full.get(metric)) if isinstance(full, dict) else None
    section = Section("Width search (VAL split)")
    if isinstance(front, dict):
        evaluated = [r for r in front.get("evaluated", []) if isinstance(r, dict)]
        uniform = [r for r in front.get("uniform", []) if isinstance(r, dict)]
        if evaluated or uniform:
            run.report.plots["front"] = _front_plot(evaluated, uniform, chosen, metric, scale)
            section.text(f"Method {front.get('method', '?')}: {len(evaluated)} configs "
                         f"evaluated, {sum(bool(r.get('on_front')) for r in evaluated)} on the "
                         "Pareto front. Squares: the uniform multiplier (every layer scaled "
                         "by the same ratio) scored the same way.")
            section.plot("front")
    rows = []
    for i, c in enumerate(chosen):
        costs = c.get("costs") if isinstance(c.get("costs"), dict) else {}
        rows.append([i, _budget_label(c.get("budget")),
                     *[_cost_cell(costs.get(m), full.get(m) if isinstance(full, dict) else None)
                       for m in ("macs", "params")],
                     _fmt_pct(c.get("val_accuracy"))])
    if rows:
        section.table(["pick", "budget", "MACs", "params", "val accuracy"], rows)
    return section, chosen


def _front_plot(evaluated: list[dict[str, Any]], uniform: list[dict[str, Any]],
                chosen: list[dict[str, Any]], metric: str, full: float | None) -> bytes:
    def xy(records: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in records:
            cost = _num((r.get("costs") or {}).get(metric)) if isinstance(r.get("costs"), dict) \
                else None
            acc = _num(r.get("val_accuracy"))
            if cost is not None and acc is not None:
                xs.append(100 * cost / full if full else cost)
                ys.append(100 * acc)
        return xs, ys

    fig, ax = _figure()
    x, y = xy(evaluated)
    ax.scatter(x, y, s=9, c="0.65", label=f"evaluated ({len(x)})", zorder=1)
    fx, fy = xy([r for r in evaluated if r.get("on_front")])
    if fx:
        order = sorted(range(len(fx)), key=fx.__getitem__)
        ax.step([fx[i] for i in order], [fy[i] for i in order], where="post", color="C0",
                lw=1.6, label="Pareto front", zorder=2)
    ux, uy = xy(uniform)
    if ux:
        order = sorted(range(len(ux)), key=ux.__getitem__)
        ax.plot([ux[i] for i in order], [uy[i] for i in order], "s--", color="C1", ms=5,
                label="uniform multiplier", zorder=3)
    cx, cy = xy(chosen)
    if cx:
        ax.scatter(cx, cy, marker="*", s=220, color="C3", edgecolor="k", zorder=4,
                   label="chosen")
    label = _COST_LABELS.get(metric, metric)
    ax.set_xlabel(f"{label} (% of the full model)" if full else label)
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"val accuracy vs {label}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _section_widths(run: _Run, chosen: list[dict[str, Any]]) -> Section | None:
    configs = [(i, c["config"]) for i, c in enumerate(chosen) if isinstance(c.get("config"), dict)]
    if not configs:
        return None
    groups = run.space.get("groups") if isinstance(run.space, dict) else None
    sizes: dict[str, float] = {}
    if isinstance(groups, dict):
        sizes = {str(k): float(v["size"]) for k, v in groups.items()
                 if isinstance(v, dict) and _num(v.get("size")) is not None}
    names = list(configs[0][1])
    if not sizes:
        run.reader.notes.append("space.json missing or malformed: the per-layer chart shows "
                                "the chosen widths without the full model's")
    fig, ax = _figure(max(7.0, 0.28 * len(names) + 2), 4.2)
    k = len(configs) + int(bool(sizes))
    width = 0.8 / k
    positions = list(range(len(names)))
    if sizes:
        ax.bar([p - 0.4 + width / 2 for p in positions], [sizes.get(n, 0.0) for n in names],
               width, color="0.75", label="full model")
    for j, (i, cfg) in enumerate(configs):
        offset = -0.4 + width * (j + int(bool(sizes))) + width / 2
        ax.bar([p + offset for p in positions], [float(_num(cfg.get(n)) or 0) for n in names],
               width, color=f"C{(j + 3) % 10}",
               label=f"pick {i}: {_budget_label(chosen[i].get('budget'))}")
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title("channels per group: chosen widths against the full model")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    run.report.plots["widths"] = _png(fig)
    return Section("Chosen widths per layer group").plot("widths")


def _section_slimmable(run: _Run) -> Section | None:
    files = sorted(run.reader.run_dir.glob("*slimmable*.safetensors"))
    records = [(p, run.reader.safetensors_metadata(p)) for p in files]
    records = [(p, r) for p, r in records if r is not None]
    if not records:
        return None
    section = Section("Slimmable levels (VAL split)")
    fig, ax = _figure()
    plotted = False
    for j, (path, record) in enumerate(records):
        levels = [lv for lv in record.get("levels", []) if isinstance(lv, dict)]
        metric = str(record.get("metric", "macs"))
        full = record.get("full_costs") if isinstance(record.get("full_costs"), dict) else {}
        scale = _num(full.get(metric))
        points, rows = [], []
        for i, lv in enumerate(levels):
            costs = lv.get("costs") if isinstance(lv.get("costs"), dict) else {}
            val = lv.get("val") if isinstance(lv.get("val"), dict) else {}
            cost, acc = _num(costs.get(metric)), _num(val.get("accuracy"))
            if cost is not None and acc is not None:
                points.append((100 * cost / scale if scale else cost, 100 * acc))
            rows.append([i, _cost_cell(costs.get("macs"), full.get("macs")),
                         _int(costs.get("params")), _fmt_pct(val.get("accuracy"))])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=f"C{j}",
                    label=f"{path.name} ({record.get('strategy', '?')})")
            plotted = True
        section.text(f"{run.reader.rel(path)}: {len(levels)} levels, switched at run time "
                     f"(`ws.load_slimmable`).")
        section.table(["level", "MACs", "params", "val accuracy"], rows)
    if plotted:
        ax.set_xlabel("cost (% of the full width)")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title("slimmable levels")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        run.report.plots["slimmable"] = _png(fig)
        section.blocks.insert(0, ("plot", "slimmable"))
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return section


def _section_latency(run: _Run) -> Section | None:
    root = run.reader.run_dir
    paths = sorted({*root.glob("latency*.json"), *root.glob("latency/*.json")})
    tables = []
    for p in paths:
        record = run.reader.json(p)
        if record is None:
            continue
        if not str(record.get("format", "")).startswith("widthsearch-latency-table"):
            run.reader.notes.append(f"{run.reader.rel(p)} skipped: not a latency table")
            continue
        tables.append((p, record))
    if not tables:
        return None
    section = Section("Latency table")
    rows = []
    fig, ax = _figure(5.5, 4.5)
    plotted = False
    for j, (path, record) in enumerate(tables):
        device = record.get("device") if isinstance(record.get("device"), dict) else {}
        err = record.get("error") if isinstance(record.get("error"), dict) else {}
        desc = ", ".join(f"{k}={v}" for k, v in device.items() if not isinstance(v, dict | list))
        rows.append([run.reader.rel(path), desc[:80], _fmt(_ms(record.get("full_latency")), ".3f"),
                     err.get("samples"), _fmt_pct(err.get("mape")),
                     _fmt_pct(err.get("within_10pct"))])
        measured, predicted = err.get("measured"), err.get("predicted")
        if (isinstance(measured, list) and isinstance(predicted, list)
                and len(measured) == len(predicted) and measured):
            pairs = [(_ms(m), _ms(p)) for m, p in zip(measured, predicted, strict=True)]
            pairs = [(m, p) for m, p in pairs if m is not None and p is not None]
            if pairs:
                ax.scatter([m for m, _ in pairs], [p for _, p in pairs], s=16, color=f"C{j}",
                           label=path.name)
                plotted = True
    section.table(["table", "device", "full width (ms)", "checked models", "MAPE",
                   "within ±10%"], rows)
    if plotted:
        lims = ax.get_xlim()
        ax.plot(lims, lims, "k--", lw=1, label="exact")
        ax.fill_between(lims, [v * 0.9 for v in lims], [v * 1.1 for v in lims], color="0.85",
                        label="±10%")
        ax.set_xlabel("measured on the exported model (ms)")
        ax.set_ylabel("predicted by the table (ms)")
        ax.set_title("latency table error")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        run.report.plots["latency"] = _png(fig)
        section.plot("latency")
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return section


def _section_provenance(run: _Run) -> Section:
    import numpy
    import torch

    from . import __version__

    section = Section("Provenance")
    versions = [["widthsearch", __version__], ["python", platform.python_version()],
                ["torch", torch.__version__], ["numpy", numpy.__version__]]
    with contextlib.suppress(ImportError):  # torchvision is a dependency; report without it
        import torchvision

        versions.append(["torchvision", torchvision.__version__])
    versions.append(["machine", f"{platform.machine()} {platform.system()} "
                                f"({platform.processor() or 'cpu'})"])
    section.table(["software", "version"], versions)
    cfg = run.config or {}
    seeds = []
    for sec, key in (("train", "seed"), ("data", "split_seed")):
        part = cfg.get(sec)
        if isinstance(part, dict) and key in part:
            seeds.append([f"{sec}.{key}", part[key]])
    quick = run.reader.json(run.reader.run_dir / QUICKSTART_FILE)
    if isinstance(quick, dict) and isinstance(quick.get("seeds"), dict):
        seeds += [[k, v] for k, v in quick["seeds"].items()]
    if seeds:
        section.table(["seed", "value"], seeds)
    section.text("Splits: " + _SPLITS_TEXT)
    starts = [r for r in run.metrics if r.get("kind") == "start"]
    if starts:
        s = starts[0]
        section.text(f"Trained on {s.get('device', '?')} with {s.get('world_size', 1)} "
                     f"process(es); {len(starts) - 1} resume(s).")
    if run.config is not None:
        section.text("config.yaml:")
        section.code(yaml.safe_dump(run.config, sort_keys=False))
    return section


def build_report(run_dir: str | Path, *, title: str | None = None) -> Report:
    """Read the run directory and build every section whose data is present."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WidthSearchError(f"run directory {run_dir} does not exist")
    report = Report(run_dir, title or f"widthsearch report: {run_dir.resolve().name}")
    reader = _Reader(run_dir, report.notes)
    config = reader.yaml(run_dir / "config.yaml")
    space = reader.json(run_dir / "space.json")
    run = _Run(reader, report, config, reader.jsonl(run_dir / "metrics.jsonl"), space)
    chosen: list[dict[str, Any]] = []

    def search(r: _Run) -> Section | None:
        nonlocal chosen
        section, chosen = _section_search(r)
        return section

    builders: list[tuple[str, Callable[[_Run], Section | None]]] = [
        ("final models", _section_final), ("training", _section_training),
        ("trained costs", _section_histogram), ("search", search),
        ("widths", lambda r: _section_widths(r, chosen)), ("slimmable", _section_slimmable),
        ("latency", _section_latency), ("provenance", _section_provenance)]
    for name, build in builders:
        try:
            section = build(run)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            report.notes.append(f"{name} section skipped: its data is malformed ({_short(e)})")
            continue
        if section is not None:
            report.sections.append(section)
    header = _header(config, run_dir)
    if header:
        report.sections.insert(0, Section("Run").table(["", ""], header))
    return report


def _header(config: dict[str, Any] | None, run_dir: Path) -> list[list[Any]]:
    rows: list[list[Any]] = [["run directory", str(run_dir)],
                             ["written", time.strftime("%Y-%m-%d %H:%M:%S %Z")]]
    if config:
        model, data = config.get("model"), config.get("data")
        strategy, sn = config.get("strategy"), config.get("supernet")
        if isinstance(model, dict):
            rows.append(["model", model.get("name")])
        if isinstance(data, dict):
            rows.append(["data", data.get("name")])
        if isinstance(sn, dict):
            rows.append(["pattern", sn.get("pattern")])
        if isinstance(strategy, dict):
            rows.append(["strategy", strategy.get("name")])
    return rows


def write_report(run_dir: str | Path, *, title: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png into the run directory."""
    from .runs import atomic_write_bytes, atomic_write_text

    report = build_report(run_dir, title=title)
    run_dir = Path(run_dir)
    paths = {"markdown": run_dir / "report.md", "html": run_dir / "report.html"}
    for name, data in report.plots.items():
        paths[f"plot:{name}"] = atomic_write_bytes(run_dir / PLOTS_DIR / f"{name}.png", data)
    atomic_write_text(paths["markdown"], report.markdown())
    atomic_write_text(paths["html"], report.html())
    return paths


# ------------------------------------------------------------------------------ formatting


def _int(value: Any) -> str | None:
    v = _num(value)
    return None if v is None else f"{v:,.0f}"


def _pct(value: Any) -> str | None:
    v = _num(value)
    return None if v is None else f"{100 * v:.1f}%"


def _fmt_pct(value: Any) -> str | None:
    v = _num(value)
    return None if v is None else f"{100 * v:.2f}%"


def _fmt(value: Any, spec: str) -> str | None:
    v = _num(value)
    return None if v is None else format(v, spec)


def _ms(value: Any) -> float | None:
    v = _num(value)
    return None if v is None else 1e3 * v


def _cost_cell(value: Any, full: Any) -> str | None:
    v, f = _num(value), _num(full)
    if v is None:
        return None
    return f"{v:,.0f} ({100 * v / f:.1f}%)" if f else f"{v:,.0f}"


def _budget_label(budget: Any) -> str:
    """A chosen entry's budget as text, whatever shape the search wrote it in."""
    if isinstance(budget, str):
        return budget
    if isinstance(budget, dict):
        if isinstance(budget.get("label"), str):
            return budget["label"]
        specs = [v["spec"] for v in budget.values()
                 if isinstance(v, dict) and isinstance(v.get("spec"), str)]
        if specs:
            return ", ".join(specs)
        limits = budget.get("limits", budget)
        if isinstance(limits, Mapping):
            return ", ".join(f"{k}<={_cell(v)}" for k, v in limits.items()
                             if not isinstance(v, dict | list))
    return _cell(budget)
