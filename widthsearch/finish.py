"""Finishing a searched width: fine-tune it from the supernet's weights, or retrain it from
scratch, then measure it once on the TEST split and export it.

Both train the exported plain model with the same Trainer and run-directory conventions
as supernet training: a sub-run RUN_DIR/finetune/<name> (or retrain/<name>) with its own
config.yaml, checkpoints and metrics, resumable by running the same command again. The
sub-run's finish.json records which config of which run it trains, so a resume rebuilds
the same model. The model is wrapped in a one-width supernet (every group fixed at its
width) and trained by the single-path strategy, so every step trains exactly that model.

The test split is read once, after training ends, and only here: the result is written
to result.json, and a finished sub-run returns that file instead of measuring again.
Exports: exports/model.safetensors + model.json (ws.save) and exports/model.onnx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console

from .build import build_model, build_run_data, build_supernet, read_space
from .config import RunConfig, load_config
from .data import DataBundle, example_input
from .errors import WidthSearchError
from .export import save, to_onnx
from .runs import RunDir, atomic_write_text
from .supernet import Supernet
from .train.bn import recalibrate_bn

__all__ = ["FINISH_FILE", "RESULT_FILE", "Target", "finish", "read_target"]

Mode = Literal["finetune", "retrain"]
CHOSEN_FILE = "chosen.json"
FINISH_FILE = "finish.json"
RESULT_FILE = "result.json"
FINETUNE_LR_FACTOR = 0.1
"""Fine-tuning starts from trained weights: the parent's LR times this, no warm-up."""


@dataclass(frozen=True)
class Target:
    """The width config (and pattern assignment) a finishing run trains."""

    config: dict[str, int]
    choice: dict[str, int]
    source: str
    """Where it came from: "search/chosen.json[K]" or the config file's path."""
    name: str
    """The default sub-run name (pick-K, or the config file's stem)."""


def read_target(run_dir: str | Path, *, pick: int | None = None,
                config_file: str | Path | None = None) -> Target:
    """Config K of the run's search/chosen.json (0 = the first), or a JSON file holding
    {group: width} or {"config": {group: width}, "choice": {...}}."""
    if (pick is None) == (config_file is None):
        raise WidthSearchError("give exactly one of --pick K (an entry of search/chosen.json) "
                               "or --config FILE (a JSON width config)")
    if config_file is not None:
        path = Path(config_file)
        record = _read_json(path)
        if "config" in record:
            config, choice = record["config"], record.get("choice", {})
        else:
            config, choice = record, {}
        return Target(_int_map(config, path), _int_map(choice, path), str(path), path.stem)
    path = RunDir.open(run_dir).search_dir / CHOSEN_FILE
    if not path.is_file():
        raise WidthSearchError(f"{path} does not exist: search the run first (widthsearch "
                               f"search {run_dir} --budget ...) or pass --config FILE")
    chosen = _read_json(path).get("chosen")
    if not isinstance(chosen, list) or not chosen:
        raise WidthSearchError(f"{path} holds no chosen configs (a 'chosen' list)")
    if isinstance(pick, bool) or not isinstance(pick, int) or not 0 <= pick < len(chosen):
        raise WidthSearchError(f"--pick {pick} is out of range: {path} holds {len(chosen)} "
                               f"config(s), 0..{len(chosen) - 1}")
    entry = chosen[pick]
    if not isinstance(entry, dict) or "config" not in entry:
        raise WidthSearchError(f"{path}: entry {pick} has no 'config'")
    return Target(_int_map(entry["config"], path), _int_map(entry.get("choice") or {}, path),
                  f"search/{CHOSEN_FILE}[{pick}]", f"pick-{pick}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WidthSearchError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise WidthSearchError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(record, dict):
        raise WidthSearchError(f"{path} must hold a JSON object")
    return record


def _int_map(mapping: Any, where: Path) -> dict[str, int]:
    if not isinstance(mapping, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in mapping.values()):
        raise WidthSearchError(f"{where}: a width config / choice maps group names to integers")
    return {str(k): int(v) for k, v in mapping.items()}


# ------------------------------------------------------------------------------ the model


class _SubnetBuilder:
    """Builds the finishing run's network: the parent supernet at the target width,
    exported (fine-tune: the trained weights, BN recalibrated at that width; retrain: the
    model's own fresh initialization), wrapped in a supernet with one width."""

    def __init__(self, parent: RunDir, parent_config: RunConfig, target: Target,
                 mode: Mode) -> None:
        self.parent, self.parent_config, self.target, self.mode = parent, parent_config, target, mode
        self.spec: dict[str, Any] = {}

    def __call__(self, config: RunConfig, data: DataBundle) -> Supernet:
        from .build import load_supernet

        if self.mode == "finetune":
            loaded = load_supernet(self.parent.path)
            source = loaded.net
            recal = loaded.data.recal
        else:
            torch.manual_seed(config.train.seed)
            fresh = build_model(self.parent_config, data)
            source = build_supernet(self.parent_config, data, quiet=True,
                                    space=read_space(self.parent), model=fresh)
            recal = None
        width = source.space.validate(self.target.config)
        choice = self.target.choice or None
        batches = self.parent_config.train.eval_recal_batches
        if recal is not None and batches > 0:  # start from statistics of this width
            recalibrate_bn(source, width, choice, recal, batches)
        plain = source.export(width, choice).train()
        self.spec = dict(plain.widthsearch_spec)
        net = Supernet(plain, example_input(data), pattern="leftmost")
        net.set_space(net.space.with_choices({g.name: [g.size] for g in net.space.searchable}))
        return net

    def final_model(self, net: Supernet) -> nn.Module:
        """The trained plain model, described as an export of the parent's model."""
        model = net.export(net.space.max())
        model.widthsearch_spec = dict(self.spec)
        return model


def finishing_config(parent: RunConfig, mode: Mode, overrides: Sequence[str]) -> RunConfig:
    """The sub-run's config: the parent's model, data, optimizer and seed, trained by
    single-path on a leftmost supernet; fine-tuning lowers the LR and drops the warm-up.
    Val is scored with the model's own BN statistics (no recalibration): what the export
    computes."""
    data = parent.to_dict()
    data["supernet"] = {**data["supernet"], "pattern": "leftmost", "bins": False}
    data["strategy"] = {"name": "single-path", "options": {}}
    # one width: nothing to sample, and the parent's budgets may lie outside its one cost
    data["train"] = {**data["train"], "eval_recal_batches": 0, "sampler": "widths",
                     "budgets": []}
    if mode == "finetune":
        data["optim"] = {**data["optim"], "lr": parent.optim.lr * FINETUNE_LR_FACTOR,
                         "warmup_epochs": 0.0}
    return load_config(data, list(overrides))


# ------------------------------------------------------------------------------ the command


def finish(run_dir: str | Path, mode: Mode, *, pick: int | None = None,
           config_file: str | Path | None = None, name: str | None = None,
           overrides: Sequence[str] = (), console: Console | None = None,
           progress: bool | None = None, test: bool = True) -> dict[str, Any]:
    """Fine-tune or retrain a searched width of the run in `run_dir` (see the module
    docstring); running it again resumes an unfinished sub-run. Returns result.json ({} on
    ranks other than 0, and when training stopped before its end). `test=False` leaves the
    TEST split unread (test_accuracy None): for stand-alone runs that feed a selection or a
    ranking, which must see VAL only."""
    from .train.distributed import barrier
    from .train.trainer import Trainer

    if mode not in ("finetune", "retrain"):
        raise WidthSearchError(f"mode must be finetune or retrain, not {mode!r}")
    parent = RunDir.open(run_dir)
    parent_config = load_config(parent.read_config())
    target = read_target(run_dir, pick=pick, config_file=config_file)
    sub_path = parent.path / mode / (name or target.name)
    builder = _SubnetBuilder(parent, parent_config, target, mode)
    if (sub_path / "config.yaml").is_file():
        _check_same_target(sub_path, target)
        _check_same_settings(sub_path, overrides)
        result_path = sub_path / RESULT_FILE
        if result_path.is_file():  # finished: the test split was measured once already
            return _read_json(result_path)
        trainer = Trainer.resume(sub_path, overrides=[o for o in overrides if _resumable(o)],
                                 console=console, progress=progress, build_net=builder)
    else:
        config = finishing_config(parent_config, mode, overrides)
        trainer = Trainer(config, sub_path, console=console, progress=progress,
                          build_net=builder)
        if trainer.dist.is_main:
            atomic_write_text(sub_path / FINISH_FILE, json.dumps(
                {"mode": mode, "parent": str(parent.path.resolve()), "config": target.config,
                 "choice": target.choice, "source": target.source}, indent=1, sort_keys=True))
    fit = trainer.fit()
    result: dict[str, Any] = {}
    if fit.finished and trainer.dist.is_main:
        model = builder.final_model(trainer.net).cpu().eval()
        result = _report(model, trainer, target, mode, sub_path, fit.val, test=test)
    barrier()
    return result


def _resumable(override: str) -> bool:
    from .train.trainer import RESUME_OVERRIDABLE

    return override.partition("=")[0].strip() in RESUME_OVERRIDABLE


def _check_same_target(sub_path: Path, target: Target) -> None:
    record = _read_json(sub_path / FINISH_FILE)
    if record.get("config") != target.config or record.get("choice", {}) != target.choice:
        raise WidthSearchError(f"{sub_path} trains another config ({record.get('source')}); "
                               "choose another --name")


def _check_same_settings(sub_path: Path, overrides: Sequence[str]) -> None:
    """An existing sub-run keeps the settings it was made with: an override asking for
    another value (more epochs, other data) is an error, not the old result handed back."""
    recorded = RunDir.open(sub_path).read_config()
    before = load_config(recorded).to_dict()
    after = load_config(recorded, [o for o in overrides if not _resumable(o)]).to_dict()
    changed = [f"{section}.{key}: {before[section].get(key)!r} -> {value!r}"
               for section, values in after.items() if isinstance(values, dict)
               for key, value in values.items() if before[section].get(key) != value]
    if changed:
        raise WidthSearchError(f"{sub_path} was trained with other settings ("
                               + "; ".join(changed) + "); choose another --name")


def _report(model: nn.Module, trainer: Any, target: Target, mode: Mode, sub_path: Path,
            val: dict[str, dict[str, float]], *, test: bool = True) -> dict[str, Any]:
    """Test accuracy (the only read of the test split), exports and result.json."""
    accuracy: float | None = None
    loss: float | None = None
    if test:
        accuracy, loss = _score(model, build_run_data(trainer.config).test)
    exports = sub_path / "exports"
    weights = save(model, exports / "model", metadata={"mode": mode, "source": target.source,
                                                       "test_accuracy": accuracy})
    onnx_path = to_onnx(model, example_input(trainer.data), exports / "model.onnx")
    cost = trainer.net.cost(trainer.net.space.max())
    result = {
        "mode": mode, "source": target.source, "config": target.config,
        "choice": target.choice, "steps": trainer.step,
        "val_accuracy": val.get("max", {}).get("accuracy"),
        "val_loss": val.get("max", {}).get("loss"),
        "test_accuracy": accuracy, "test_loss": loss,
        "macs": int(cost.macs), "params": int(cost.params),
        "exports": {"weights": str(weights.relative_to(sub_path)),
                    "sidecar": str(weights.with_suffix(".json").relative_to(sub_path)),
                    "onnx": str(onnx_path.relative_to(sub_path))},
    }
    if test:
        trainer.run.metrics.log(kind="test", step=trainer.step, accuracy=accuracy, loss=loss)
    atomic_write_text(sub_path / RESULT_FILE, json.dumps(result, indent=1, sort_keys=True))
    return result


def _score(model: nn.Module, loader: Any) -> tuple[float, float]:
    total, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.cpu())
            total += float(F.cross_entropy(logits, y.cpu(), reduction="sum"))
            correct += int((logits.argmax(1) == y.cpu()).sum())
            seen += len(y)
    if seen == 0:
        raise WidthSearchError("the test split is empty")
    return correct / seen, total / seen


def describe(result: Mapping[str, Any]) -> str:
    """One line for the terminal."""
    return (f"{result['mode']} of {result['source']}: test accuracy "
            f"{result['test_accuracy']:.2%} (val {result['val_accuracy'] or float('nan'):.2%}), "
            f"{result['macs'] / 1e6:.2f}M MACs, {result['params'] / 1e3:.1f}k params")



def export_target(run_dir: str | Path, *, pick: int | None = None,
                  config_file: str | Path | None = None, out: str | Path | None = None,
                  recal_batches: int = 20) -> dict[str, Path]:
    """The subnet of a searched width as the supernet holds it, with no training: exported
    from the trained supernet, its BN statistics recalibrated on `recal_batches` unaugmented
    training batches (the evaluator's), saved as safetensors + JSON + ONNX under `out`
    (default RUN_DIR/exports/<pick-K or the file's stem>). Fine-tune it for a better model."""
    from .build import load_supernet
    from .train.bn import recalibrate_module

    target = read_target(run_dir, pick=pick, config_file=config_file)
    loaded = load_supernet(run_dir)
    net = loaded.net
    model = net.export(net.space.validate(target.config), target.choice)
    if recal_batches > 0:
        recalibrate_module(model, loaded.data.recal, num_batches=recal_batches)
    model.eval()
    folder = Path(out) if out is not None else loaded.run.path / "exports" / target.name
    weights = save(model, folder / "model", metadata={"source": target.source,
                                                       "recal_batches": recal_batches})
    onnx_path = to_onnx(model, example_input(loaded.data), folder / "model.onnx")
    return {"weights": weights, "sidecar": weights.with_suffix(".json"), "onnx": onnx_path}
