"""The catalogue of bad inputs: each gives one clear line and the right exit code (or error type).

Every case is one row of docs/errors.md (`python bench/errors_catalogue.py` regenerates it
from `CASES`). A CLI case runs `widthsearch ARGV` in this process and asserts: exactly one
line on stderr, no traceback, the exit code, and a regex on the message. An API case calls
the library and asserts the WidthSearchError subclass and the regex, on a one-line message.
Placeholders in argv: {data} a tiny Fashion-MNIST folder, {tmp} a fresh folder per case,
and the run folders the `Workspace` prepares ({finished}, {partial}, ...).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import json
import os
import pickle
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import tiny_config, write_tiny_fashion  # noqa: E402

import widthsearch as ws  # noqa: E402
from widthsearch import errors as E  # noqa: E402
from widthsearch.cli import main  # noqa: E402
from widthsearch.runs import RunDir  # noqa: E402

# ------------------------------------------------------------------------------ workspace


class Workspace:
    """Files the cases need, made once: tiny data, damaged data, runs in several states."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = write_tiny_fashion(root / "data" / "fashion-mnist", n_train=300, n_test=20)
        self._runs: dict[str, Path] = {}
        self._counter = 0

    def fresh(self) -> Path:
        self._counter += 1
        path = self.root / f"case-{self._counter:03d}"
        path.mkdir()
        return path

    def config_file(self, **sections: dict[str, Any]) -> Path:
        import yaml

        path = self.fresh() / "config.yaml"
        path.write_text(yaml.safe_dump(tiny_config(self.data, **sections)))
        return path

    def run(self, state: str) -> Path:
        """A run folder in `state`, made on first use (each state is its own copy)."""
        if state not in self._runs:
            self._runs[state] = getattr(self, f"_make_{state}")()
        return self._runs[state]

    def _train(self, name: str, max_steps: int | None = None, **sections: dict[str, Any]
               ) -> Path:
        from rich.console import Console

        from widthsearch.train.trainer import Trainer

        path = self.root / "runs" / name
        config = tiny_config(self.data, **({"optim": {"epochs": 1}} | sections))
        trainer = Trainer(config, path, console=Console(file=io.StringIO()), progress=False)
        trainer.fit(max_steps=max_steps)
        return path

    def _copy(self, source: str, name: str) -> Path:
        target = self.root / "runs" / name
        shutil.copytree(self.run(source), target)
        (target / ".lock").unlink(missing_ok=True)
        return target

    def _make_finished(self) -> Path:
        return self._train("finished")

    def _make_partial(self) -> Path:
        return self._train("partial", max_steps=1, train={"device": "cpu", "threads": 1,
                                                          "checkpoint_every_steps": 1,
                                                          "eval_recal_batches": 1,
                                                          "eval_max_batches": 1})

    def _make_other(self) -> Path:
        return self._train("other", max_steps=1, train={"seed": 7, "device": "cpu",
                                                        "threads": 1, "eval_recal_batches": 1,
                                                        "eval_max_batches": 1})

    def _make_no_checkpoints(self) -> Path:
        run = self._copy("finished", "no-checkpoints")
        shutil.rmtree(run / "checkpoints")
        return run

    def _make_all_flipped(self) -> Path:
        run = self._copy("partial", "all-flipped")
        for ckpt in RunDir(run).list_checkpoints():
            raw = bytearray(ckpt.read_bytes())
            raw[len(raw) // 3] ^= 0x55
            ckpt.write_bytes(bytes(raw))
        return run

    def _make_foreign(self) -> Path:
        run = self._copy("partial", "foreign")
        for ckpt in RunDir(run).list_checkpoints():
            ckpt.unlink()
        other = RunDir(self.run("other")).latest_checkpoint()
        assert other is not None
        shutil.copy(other, RunDir(run).checkpoints / other.name)
        return run

    def _make_missing_keys(self) -> Path:
        run = self._copy("partial", "missing-keys")
        for ckpt in RunDir(run).list_checkpoints():
            ckpt.unlink()
        RunDir(run).save_checkpoint({"format": 2, "model": {}}, step=1)
        return run

    def _make_planted(self) -> Path:
        run = self._copy("partial", "planted")
        for ckpt in RunDir(run).list_checkpoints():
            ckpt.unlink()
        torch.save({"step": 1, "x": _Evil()}, RunDir(run).checkpoint_path(1))
        return run

    def _make_bad_yaml(self) -> Path:
        run = self._copy("partial", "bad-yaml")
        (run / "config.yaml").write_text("model: [unclosed\n")
        return run

    def _make_list_yaml(self) -> Path:
        run = self._copy("partial", "list-yaml")
        (run / "config.yaml").write_text("- 1\n- 2\n")
        return run

    def _make_edited_config(self) -> Path:
        run = self._copy("partial", "edited-config")
        text = (run / "config.yaml").read_text().replace("seed: 0", "seed: 3")
        (run / "config.yaml").write_text(text)
        return run

    def _make_bad_metrics(self) -> Path:
        run = self._copy("partial", "bad-metrics")
        lines = (run / "metrics.jsonl").read_text().splitlines()
        lines.insert(1, "{not json")
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return run

    def export(self) -> Path:
        """A small saved export (exports/small.safetensors + .json)."""
        target = self.root / "export" / "small"
        if not target.with_suffix(".json").exists():
            net = ws.Supernet(_Small(), torch.randn(1, 3, 8, 8))
            ws.save(net.export(net.space.min()), target)
        return target

    def export_copy(self, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
        """A copy of the export in a fresh folder, its sidecar edited by `edit`."""
        source = self.export()
        folder = self.fresh()
        target = folder / "small"
        shutil.copy(source.with_suffix(".safetensors"), target.with_suffix(".safetensors"))
        record = json.loads(source.with_suffix(".json").read_text())
        if edit is not None:
            edit(record)
        target.with_suffix(".json").write_text(json.dumps(record))
        return target


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo planted",))


# ------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """One bad input: a CLI line (argv) or an API call, and what it must give."""

    family: str
    title: str
    match: str
    argv: tuple[str, ...] = ()
    api: Callable[[Workspace], Any] | None = None
    error: type[Exception] = E.WidthSearchError
    code: int = 2
    setup: Callable[[Workspace, dict[str, str]], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.family}: {self.title}"


def cli(family: str, title: str, argv: str, match: str, code: int = 2,
        setup: Callable[[Workspace, dict[str, str]], None] | None = None) -> Case:
    return Case(family, title, match, argv=tuple(argv.split()), code=code, setup=setup)


def api(family: str, title: str, call: Callable[[Workspace], Any], error: type[Exception],
        match: str) -> Case:
    return Case(family, title, match, api=call, error=error)


TRAIN = "train --run-dir {tmp}/run --no-progress --config {config} --set"


def bad_set(key_value: str, match: str) -> Case:
    return cli("config", f"--set {key_value}", f"{TRAIN} {key_value}", match)


CONFIG_CASES = [
    bad_set("data.batch_size=true", r"data\.batch_size: .*valid integer \(got True\)"),
    bad_set("data.batch_size=0", r"data\.batch_size: .*greater than or equal to 1"),
    bad_set("data.batch_size=-4", r"data\.batch_size: .*greater than or equal to 1"),
    bad_set("data.batch_size=1.5", r"data\.batch_size: .*valid integer"),
    bad_set("data.batch_size='64'", r"data\.batch_size: .*valid integer"),
    bad_set("data.batch_size=null", r"data\.batch_size: .*valid integer"),
    bad_set("data.name=mnist", r"unknown dataset 'mnist'"),
    bad_set("data.val_size=1.5", r"fraction in \(0, 1\)"),
    bad_set("data.val_size=-3", r"val_size must be at least 0"),
    bad_set("data.val_size=true", r"data\.val_size"),
    bad_set("data.subset=0", r"data\.subset: .*greater than or equal to 1"),
    bad_set("data.val_subset=0", r"data\.val_subset: .*greater than or equal to 1"),
    bad_set("data.augment=2", r"data\.augment: .*valid boolean"),
    bad_set("data.augment=maybe", r"data\.augment: .*valid boolean"),
    bad_set("data.workers=-1", r"data\.workers: .*greater than or equal to 0"),
    bad_set("data.image_size=[32,0]", r"image_size must be positive"),
    bad_set("data.image_size=[1,2,3]", r"data\.image_size"),
    bad_set("data.image_size=big", r"data\.image_size"),
    bad_set("data.split_seed=-1", r"data\.split_seed: .*greater than or equal to 0"),
    bad_set("data.root=[1]", r"data\.root: .*valid string"),
    bad_set("data.bogus=1", r"data\.bogus: unknown key"),
    bad_set("data.batchsize=64", r"unknown key \(did you mean 'batch_size'\?\)"),
    bad_set("model.name=5", r"model\.name: .*valid string"),
    bad_set("model.num_classes=0", r"model\.num_classes: .*greater than or equal to 1"),
    bad_set("model.num_classes=true", r"model\.num_classes: .*valid integer"),
    bad_set("model.in_channels=0", r"model\.in_channels: .*greater than or equal to 1"),
    bad_set("model.kwargs=3", r"model\.kwargs: .*valid dictionary"),
    bad_set("supernet.pattern=zigzag", r"supernet\.pattern: .*'leftmost', 'cafenet'"),
    bad_set("supernet.min_ratio=0", r"supernet\.min_ratio: .*greater than 0"),
    bad_set("supernet.min_ratio=1.5", r"supernet\.min_ratio: .*less than or equal to 1"),
    bad_set("supernet.min_ratio=.nan", r"supernet\.min_ratio: .*finite number"),
    bad_set("supernet.divisions=0", r"supernet\.divisions: .*greater than or equal to 1"),
    bad_set("supernet.divisions=2.5", r"supernet\.divisions: .*valid integer"),
    bad_set("supernet.bins=maybe", r"supernet\.bins: .*valid boolean"),
    bad_set("supernet.min_bin=0", r"supernet\.min_bin: .*greater than or equal to 1"),
    bad_set("supernet.max_bin=0", r"supernet\.max_bin: .*greater than or equal to 1"),
    cli("config", "max_bin below min_bin",
        f"{TRAIN} supernet.min_bin=4 supernet.max_bin=2", r"max_bin \(2\) is below min_bin"),
    bad_set("supernet.r=-1", r"supernet\.r: .*greater than or equal to 0"),
    bad_set("supernet.pattern=leftmost", r"strategy 'cafenet' needs .*cafenet"),
    bad_set("strategy.name=nope", r"strategy\.name|unknown strategy"),
    cli("config", "--set strategy.options={bogus:1}", f"{TRAIN} strategy.options={{{{bogus:1}}}}",
        r"bogus"),
    bad_set("optim.name=rmsprop", r"optim\.name: .*'sgd' or 'adamw'"),
    bad_set("optim.lr=0", r"optim\.lr: .*greater than 0"),
    bad_set("optim.lr=-1", r"optim\.lr: .*greater than 0"),
    bad_set("optim.lr=.inf", r"optim\.lr: .*finite number \(got inf\)"),
    bad_set("optim.lr=.nan", r"optim\.lr: .*finite number \(got nan\)"),
    bad_set("optim.lr=true", r"optim\.lr: .*valid number"),
    bad_set("optim.lr=fast", r"optim\.lr: .*valid number"),
    bad_set("optim.momentum=1", r"optim\.momentum: .*less than 1"),
    bad_set("optim.momentum=-0.1", r"optim\.momentum: .*greater than or equal to 0"),
    bad_set("optim.momentum=0", r"Nesterov SGD needs optim\.momentum > 0"),
    bad_set("optim.nesterov=1", r"optim\.nesterov: .*valid boolean"),
    bad_set("optim.weight_decay=-1", r"optim\.weight_decay: .*greater than or equal to 0"),
    bad_set("optim.epochs=0", r"optim\.epochs: .*greater than or equal to 1"),
    bad_set("optim.epochs=1.5", r"optim\.epochs: .*valid integer"),
    bad_set("optim.epochs=true", r"optim\.epochs: .*valid integer"),
    bad_set("optim.warmup_epochs=-1", r"optim\.warmup_epochs: .*greater than or equal to 0"),
    bad_set("optim.label_smoothing=1", r"optim\.label_smoothing: .*less than 1"),
    bad_set("optim.grad_clip=0", r"optim\.grad_clip: .*greater than 0"),
    bad_set("optim.grad_clip=.inf", r"optim\.grad_clip: .*finite number"),
    bad_set("optim.lrr=0.1", r"unknown key \(did you mean 'lr'\?\)"),
    bad_set("train.seed=-1", r"train\.seed: .*greater than or equal to 0"),
    bad_set("train.seed=99999999999999999999999", r"train\.seed: .*less than or equal to"),
    bad_set("train.device=tpu", r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    bad_set("train.amp=1", r"train\.amp: .*valid boolean"),
    bad_set("train.checkpoint_every_steps=-1", r"train\.checkpoint_every_steps"),
    bad_set("train.keep_checkpoints=0", r"train\.keep_checkpoints: .*greater than or equal"),
    bad_set("train.eval_recal_batches=-1", r"train\.eval_recal_batches"),
    bad_set("train.eval_max_batches=0", r"train\.eval_max_batches"),
    bad_set("train.log_every_steps=0", r"train\.log_every_steps"),
    bad_set("train.threads=0", r"train\.threads: .*greater than or equal to 1"),
    bad_set("train.bogus=1", r"train\.bogus: unknown key"),
    bad_set("bogus.key=1", r"bogus: unknown key"),
    bad_set("optim.lr", r"override 'optim\.lr' must look like section\.key=value"),
    bad_set("=3", r"override '=3' must look like section\.key=value"),
    bad_set("optim..lr=1", r"has an empty key"),
    bad_set("optim.lr.x=1", r"optim\.lr is a value, not a section"),
    cli("config", "config file missing", "train --config {tmp}/nope.yaml", r"does not exist"),
    cli("config", "config file is a directory", "train --config {tmp}", r"is a directory"),
    cli("config", "config file is not YAML", "train --config {tmp}/bad.yaml",
        r"is not valid YAML \(line \d+, column", setup=lambda w, p: Path(
            p["tmp"], "bad.yaml").write_text("model: [unclosed\n")),
    cli("config", "config file holds a list", "train --config {tmp}/list.yaml",
        r"must hold a mapping of sections, not a list",
        setup=lambda w, p: Path(p["tmp"], "list.yaml").write_text("- 1\n")),
    cli("config", "config file with an unknown section", "train --config {tmp}/c.yaml",
        r"trainer: unknown key", setup=lambda w, p: Path(p["tmp"], "c.yaml").write_text(
            "trainer: {seed: 1}\n")),
    cli("config", "config file is not UTF-8", "train --config {tmp}/c.yaml",
        r"c\.yaml", setup=lambda w, p: Path(p["tmp"], "c.yaml").write_bytes(b"\xff\xfe\x00")),
]

INSPECT = "inspect resnet20 --input-size 1 28 28"
MODEL_CASES = [
    cli("model", "unknown zoo model", "inspect nope", r"unknown model 'nope'|nope"),
    cli("model", "unknown torchvision model", "inspect torchvision:nope", r"nope"),
    cli("model", "inspect --divisions 0", f"{INSPECT} --divisions 0",
        r"--divisions must be at least 1, got 0"),
    cli("model", "inspect --divisions -3", f"{INSPECT} --divisions -3",
        r"--divisions must be at least 1"),
    cli("model", "inspect --divisions abc", f"{INSPECT} --divisions abc",
        r"argument --divisions: invalid int value"),
    cli("model", "inspect --min-ratio 0", f"{INSPECT} --min-ratio 0",
        r"--min-ratio must be in \(0, 1\]"),
    cli("model", "inspect --min-ratio 2", f"{INSPECT} --min-ratio 2",
        r"--min-ratio must be in \(0, 1\]"),
    cli("model", "inspect --input-size 0 28 28", "inspect resnet20 --input-size 0 28 28",
        r"--input-size must be between 1 and 8192"),
    cli("model", "inspect --input-size 1 28 99999", "inspect resnet20 --input-size 1 28 99999",
        r"--input-size must be between 1 and 8192"),
    cli("model", "inspect --input-size with two numbers", "inspect resnet20 --input-size 1 28",
        r"argument --input-size: expected 3 arguments"),
    cli("model", "inspect --in-channels disagrees", f"{INSPECT} --in-channels 3",
        r"--in-channels 3 disagrees with --input-size C=1"),
    cli("model", "inspect --num-classes 0", f"{INSPECT} --num-classes 0",
        r"--num-classes must be between 1 and 100000"),
    cli("model", "inspect --num-classes 10**9", f"{INSPECT} --num-classes 1000000000",
        r"--num-classes must be between 1 and 100000"),
    cli("model", "inspect --pattern zigzag", f"{INSPECT} --pattern zigzag",
        r"argument --pattern: invalid choice"),
    cli("model", "train an unknown model", f"{TRAIN} model.name=nope", r"nope"),
    cli("model", "train with a bad model argument", f"{TRAIN} model.kwargs.bogus=1",
        r"bad arguments for model 'resnet20'"),
    cli("model", "num_classes given in model.kwargs", f"{TRAIN} model.kwargs.num_classes=5",
        r"set model\.num_classes, not model\.kwargs\.num_classes"),
    cli("model", "fewer classes than the data", f"{TRAIN} model.num_classes=5",
        r"model\.num_classes=5 but fashion-mnist has 10 classes"),
    cli("model", "in_channels differs from the data", f"{TRAIN} model.in_channels=3",
        r"model\.in_channels=3 but fashion-mnist images have 1"),
]


def _outputs(value: Any) -> Callable[[Workspace], Any]:
    from widthsearch.train.outputs import split_outputs

    return lambda w: split_outputs(value)


_Aux = collections.namedtuple("_Aux", ["logits", "aux_mystery"])
_GoogLeNetOutputs = collections.namedtuple("GoogLeNetOutputs",
                                           ["logits", "aux_logits2", "aux_logits1"])
OUTPUT_CASES = [
    api("model", "forward returns a plain tuple", _outputs((torch.zeros(2, 3), torch.zeros(2, 3))),
        E.ModelError, r"returns a tuple of 2 items in training mode"),
    api("model", "forward returns a list", _outputs([torch.zeros(2, 3)]),
        E.ModelError, r"returns a list of 1 items"),
    api("model", "forward returns a dict", _outputs({"out": torch.zeros(2, 3)}),
        E.ModelError, r"returns a dict with keys \['out'\]"),
    api("model", "forward returns a feature map", _outputs(torch.zeros(2, 3, 4, 4)),
        E.ModelError, r"a tensor of shape \(2, 3, 4, 4\) where logits \(batch, classes\)"),
    api("model", "forward returns a 1-d tensor", _outputs(torch.zeros(3)),
        E.ModelError, r"a tensor of shape \(3,\)"),
    api("model", "forward returns None", _outputs(None), E.ModelError, r"returns a NoneType"),
    api("model", "named tuple with an unknown auxiliary head",
        _outputs(_Aux(torch.zeros(2, 3), torch.zeros(2, 3))), E.ModelError,
        r"returns a _Aux of 2 items"),
    api("model", "GoogLeNet outputs with a feature-map aux head",
        _outputs(_GoogLeNetOutputs(torch.zeros(2, 3), torch.zeros(2, 3, 4, 4), None)),
        E.ModelError, r"shape \(2, 3, 4, 4\) where logits"),
]


def _space(w: Workspace) -> Any:
    net = ws.Supernet(_Small(), torch.randn(1, 3, 8, 8))
    return net.space


def _validate(width: Any) -> Callable[[Workspace], Any]:
    return lambda w: _space(w).validate({_group(w): width})


def _group(w: Workspace) -> str:
    return _space(w).searchable[0].name


WIDTH_CASES = [
    api("widths", "width 16.5 (not a whole number)", _validate(6.5), E.WidthSearchError,
        r"width 6\.5 for group .* is not a whole number of channels"),
    api("widths", "width 17.9", _validate(7.9), E.WidthSearchError,
        r"width 7\.9 .* not a whole number"),
    api("widths", "width given as a string", _validate("6"), E.WidthSearchError,
        r"width '6' .* not a whole number"),
    api("widths", "width given as true", _validate(True), E.WidthSearchError,
        r"width True .* not a whole number"),
    api("widths", "width below the smallest choice", _validate(1), E.WidthSearchError,
        r"width 1 is not allowed for group"),
    api("widths", "width 0", _validate(0), E.WidthSearchError, r"width 0 is not allowed"),
    api("widths", "width above the group size", _validate(64), E.WidthSearchError,
        r"width 64 is not allowed"),
    api("widths", "unknown group", lambda w: _space(w).validate({"nope": 4}),
        E.WidthSearchError, r"nope"),
    api("widths", "uniform ratio 0", lambda w: _space(w).uniform(0), E.WidthSearchError,
        r"a width ratio must be in \(0, 1\], got 0"),
    api("widths", "uniform ratio 1.5", lambda w: _space(w).uniform(1.5), E.WidthSearchError,
        r"a width ratio must be in \(0, 1\]"),
]


def _write(name: str, data: bytes) -> Callable[[Workspace, dict[str, str]], None]:
    """Setup: a copy of the tiny data in {tmp}/fashion-mnist with file `name` replaced."""

    def setup(w: Workspace, p: dict[str, str]) -> None:
        folder = Path(p["tmp"], "fashion-mnist")
        shutil.copytree(w.data, folder)
        (folder / name).write_bytes(data if data else b"")

    return setup


def _damage(name: str, how: str) -> Callable[[Workspace, dict[str, str]], None]:
    def setup(w: Workspace, p: dict[str, str]) -> None:
        folder = Path(p["tmp"], "fashion-mnist")
        shutil.copytree(w.data, folder)
        path = folder / name
        raw = bytearray(path.read_bytes())
        if how == "flip":  # inside the deflate stream, past the gzip header
            for i in range(20, min(len(raw) - 8, 400)):
                raw[i] ^= 0xA5
        elif how == "truncate":
            raw = raw[: len(raw) // 2]
        elif how == "labels":  # a label outside 0..9
            data = bytearray(gzip.decompress(bytes(raw)))
            data[-1] = 42
            raw = bytearray(gzip.compress(bytes(data)))
        elif how == "count":  # a header that promises more images
            data = bytearray(gzip.decompress(bytes(raw)))
            data[4:8] = (10**6).to_bytes(4, "big")
            raw = bytearray(gzip.compress(bytes(data)))
        elif how == "magic":
            data = bytearray(gzip.decompress(bytes(raw)))
            data[0:4] = (7).to_bytes(4, "big")
            raw = bytearray(gzip.compress(bytes(data)))
        elif how == "fewer-labels":
            labels = np.zeros(10, np.uint8)
            raw = bytearray(gzip.compress((2049).to_bytes(4, "big") + (10).to_bytes(4, "big")
                                          + labels.tobytes()))
        path.write_bytes(bytes(raw))

    return setup


def _folder(classes: tuple[str, ...], test_classes: tuple[str, ...] | None = None,
            test: bool = True) -> Callable[[Workspace, dict[str, str]], None]:
    def setup(w: Workspace, p: dict[str, str]) -> None:
        from PIL import Image

        root = Path(p["tmp"], "images")
        for split, names in (("train", classes), ("val", test_classes or classes)):
            if split == "val" and not test:
                continue
            for c in names:
                (root / split / c).mkdir(parents=True)
                for i in range(3):
                    Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / c / f"{i}.png")

    return setup


def _cifar(batch: Any) -> Callable[[Workspace, dict[str, str]], None]:
    def setup(w: Workspace, p: dict[str, str]) -> None:
        folder = Path(p["tmp"], "cifar-10-batches-py")
        folder.mkdir()
        good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(folder / name, "wb") as f:
                pickle.dump(batch if name == "data_batch_2" else good, f)

    return setup


DTRAIN = "train --run-dir {tmp}/run --no-progress --data {tmp}/fashion-mnist --set " \
         "data.subset=64 data.val_size=32 data.batch_size=32 train.device=cpu"
IMAGES = "train --run-dir {tmp}/run --no-progress --data {tmp}/images --set " \
         "data.name=imagefolder data.val_size=1 data.batch_size=2 data.image_size=8 " \
         "train.device=cpu data.workers=0"
CIFAR = "train --run-dir {tmp}/run --no-progress --data {tmp} --set data.name=cifar10 " \
        "data.val_size=2 data.batch_size=2 train.device=cpu"
DATA_CASES = [
    cli("data", "data folder does not exist", "train --no-progress --data {tmp}/nope",
        r"Fashion-MNIST not found .*apt-get install dataset-fashion-mnist"),
    cli("data", "empty data folder", "train --no-progress --data {tmp}",
        r"Fashion-MNIST not found"),
    cli("data", "corrupt gzip stream", DTRAIN, r"not a readable gzip IDX file",
        setup=_damage("train-images-idx3-ubyte.gz", "flip")),
    cli("data", "gzip file cut short", DTRAIN, r"not a readable gzip IDX file",
        setup=_damage("train-images-idx3-ubyte.gz", "truncate")),
    cli("data", "not gzip at all", DTRAIN, r"not a readable gzip IDX file",
        setup=_write("train-images-idx3-ubyte.gz", b"plain text, not gzip")),
    cli("data", "empty image file", DTRAIN, r"IDX magic number None",
        setup=_write("train-images-idx3-ubyte.gz", gzip.compress(b""))),
    cli("data", "wrong IDX magic number", DTRAIN, r"IDX magic number 7 where 2051",
        setup=_damage("train-images-idx3-ubyte.gz", "magic")),
    cli("data", "IDX header promises more images", DTRAIN, r"truncated or damaged file",
        setup=_damage("train-images-idx3-ubyte.gz", "count")),
    cli("data", "fewer labels than images", DTRAIN, r"has 300 images but .* has 10 labels",
        setup=_damage("train-labels-idx1-ubyte.gz", "fewer-labels")),
    cli("data", "a label outside the classes", DTRAIN, r"labels span 0\.\.42, outside 0\.\.9",
        setup=_damage("train-labels-idx1-ubyte.gz", "labels")),
    cli("data", "val_size larger than the data", f"{DTRAIN} data.val_size=100000",
        r"val_size", setup=_damage("train-labels-idx1-ubyte.gz", "none")),
    cli("data", "image folder with one class", IMAGES,
        r"has 1 class folder\(s\) \(cats\); a classifier needs at least two",
        setup=_folder(("cats",))),
    cli("data", "image folder without val/ or test/", IMAGES, r"ImageFolder data not found",
        setup=_folder(("cats", "dogs"), test=False)),
    cli("data", "image folder whose val classes differ", IMAGES,
        r"has classes \['birds', 'cats'\] but .* has \['cats', 'dogs'\]",
        setup=_folder(("cats", "dogs"), ("cats", "birds"))),
    cli("data", "CIFAR-10 not found", "train --no-progress --data {tmp} --set data.name=cifar10",
        r"CIFAR-10 not found .*cifar-10-python\.tar\.gz"),
    cli("data", "CIFAR batch that plants code", CIFAR,
        r"refusing to unpickle posix\.system \(code, never run\)",
        setup=_cifar(_Evil())),
    cli("data", "CIFAR batch that is not a dict", CIFAR, r"a CIFAR batch is a dict, found list",
        setup=_cifar([1, 2, 3])),
    cli("data", "CIFAR batch without labels", CIFAR, r"lacks b'data' or b'labels'",
        setup=_cifar({b"data": np.zeros((2, 3072), np.uint8)})),
    cli("data", "CIFAR batch of the wrong shape", CIFAR, r"should be uint8 \(N, 3072\)",
        setup=_cifar({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})),
]


def _full_disk(w: Workspace) -> Any:
    """The disk fills up while the second checkpoint is written."""
    from unittest import mock

    from rich.console import Console

    import widthsearch.safeio as safeio
    from widthsearch.train.trainer import Trainer

    trainer = Trainer(tiny_config(w.data, train={"device": "cpu", "threads": 1,
                                                 "checkpoint_every_steps": 1,
                                                 "eval_recal_batches": 1, "eval_max_batches": 1}),
                      w.fresh() / "run", console=Console(file=io.StringIO()), progress=False)
    real = safeio.write_checksummed
    calls = []

    def fill(path: Any, data: bytes) -> Path:
        calls.append(path)
        if len(calls) >= 2:
            raise OSError(28, os.strerror(28), str(path))
        return real(path, data)

    with mock.patch("widthsearch.runs.write_checksummed", fill):
        return trainer.fit(max_steps=3)


def _hold_lock(w: Workspace, p: dict[str, str]) -> None:
    run = RunDir(p["partial"])
    run.lock.acquire()
    p["_held"] = run  # type: ignore[assignment]


RUN_CASES = [
    api("runs", "the disk fills up during a checkpoint", _full_disk, E.CheckpointError,
        r"cannot write checkpoint .*step-000000002\.pt: No space left on device; the "
        r"previous checkpoint step-000000001\.pt is intact"),
    cli("runs", "--resume a folder that does not exist", "train --resume {tmp}/nope",
        r"run directory .*nope does not exist"),
    cli("runs", "--resume a folder that is not a run", "train --resume {tmp}",
        r"is not a widthsearch run directory \(no config\.yaml\)"),
    cli("runs", "--resume with --config", "train --resume {partial} --config {tmp}/c.yaml",
        r"--resume takes the run's own config and directory"),
    cli("runs", "--resume with --run-dir", "train --resume {partial} --run-dir {tmp}",
        r"--resume takes the run's own config and directory"),
    cli("runs", "--resume changing the model", "train --resume {partial} --set model.name=x",
        r"cannot change model\.name when resuming .*allowed: .*optim\.lr"),
    cli("runs", "--resume changing momentum",
        "train --resume {partial} --set optim.momentum=0.5",
        r"cannot change optim\.momentum when resuming"),
    cli("runs", "--resume with an invalid new lr", "train --resume {partial} --set optim.lr=.inf",
        r"optim\.lr: .*finite number"),
    cli("runs", "a run another process is writing", "train --resume {partial}",
        r"is in use: process \d+ is writing into it; wait for it", setup=_hold_lock),
    cli("runs", "--run-dir of an existing run", "train --no-progress --run-dir {finished}",
        r"already holds a run; resume it"),
    cli("runs", "finished run whose checkpoints are gone", "train --resume {no_checkpoints}",
        r"has results .* but its checkpoints are gone; refusing to train it again"),
    cli("runs", "every checkpoint damaged", "train --resume {all_flipped}",
        r"no usable checkpoint: .*is damaged: its contents do not match its sha256"),
    cli("runs", "another run's checkpoint", "train --resume {foreign}",
        r"no usable checkpoint: .*belongs to another run"),
    cli("runs", "a checkpoint missing keys", "train --resume {missing_keys}",
        r"lacks step|lacks total_steps|lacks .*identity"),
    cli("runs", "a planted pickle as checkpoint", "train --resume {planted}",
        r"refused checkpoint .*run Python code \(posix\.system\)|no checksum"),
    cli("runs", "run config.yaml is not YAML", "train --resume {bad_yaml}",
        r"config\.yaml is not valid YAML"),
    cli("runs", "run config.yaml holds a list", "train --resume {list_yaml}",
        r"config\.yaml must hold a mapping, not a list"),
    cli("runs", "config.yaml edited after training (seed)", "train --resume {edited_config}",
        r"belongs to another run"),
    cli("runs", "metrics.jsonl damaged mid-file", "train --resume {bad_metrics}",
        r"metrics\.jsonl line 2 is not JSON"),
    cli("runs", "--run-dir is a file", "train --no-progress --run-dir {tmp}/file --config {config}",
        r"exists and is not a directory",
        setup=lambda w, p: Path(p["tmp"], "file").write_text("x")),
    cli("runs", "quickstart into a folder that is not a run",
        "quickstart --no-progress --run-dir {tmp}/file", r"exists and is not a directory|file",
        setup=lambda w, p: Path(p["tmp"], "file").write_text("x")),
]


def _edit(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(record: dict[str, Any]) -> None:
        for dotted, value in changes.items():
            node = record
            *parents, last = dotted.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            if value is _DELETE:
                node.pop(last, None)
            else:
                node[last] = value

    return edit


_DELETE = object()


def _load_edited(**changes: Any) -> Callable[[Workspace], Any]:
    return lambda w: ws.load(w.export_copy(_edit(**changes)), model=_Small())


def _load_written(sidecar: bytes | None = None, weights: bytes | None = None
                  ) -> Callable[[Workspace], Any]:
    def call(w: Workspace) -> Any:
        target = w.export_copy()
        if sidecar is not None:
            target.with_suffix(".json").write_bytes(sidecar)
        if weights is not None:
            target.with_suffix(".safetensors").write_bytes(weights)
        return ws.load(target, model=_Small())

    return call


def _load_flipped(w: Workspace) -> Any:
    target = w.export_copy()
    path = target.with_suffix(".safetensors")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    return ws.load(target, model=_Small())


def _load_swapped(w: Workspace) -> Any:
    target = w.export_copy()
    other = ws.Supernet(_Small(), torch.randn(1, 3, 8, 8))
    ws.save(other.export(other.space.min()), target.parent / "other")
    shutil.copy(target.parent / "other.safetensors", target.with_suffix(".safetensors"))
    return ws.load(target, model=_Small())


def _load_missing_weights(w: Workspace) -> Any:
    target = w.export_copy()
    target.with_suffix(".safetensors").unlink()
    return ws.load(target, model=_Small())


def _load_registered(**kwargs: Any) -> Callable[[Workspace], Any]:
    """An export of the zoo's resnet20 whose sidecar asks for `kwargs`."""

    def call(w: Workspace) -> Any:
        target = w.fresh() / "zoo"
        model = ws.models.get("resnet20", num_classes=10, in_channels=1)
        net = ws.Supernet(model, torch.randn(1, 1, 28, 28))
        ws.save(net.export(net.space.min()), target)
        record = json.loads(target.with_suffix(".json").read_text())
        record["model_kwargs"].update(kwargs)
        target.with_suffix(".json").write_text(json.dumps(record))
        return ws.load(target)

    return call


def _pretrained(content: bytes | None, suffix: str = ".pt") -> Callable[[Workspace], Any]:
    def call(w: Workspace) -> Any:
        path = w.fresh() / f"weights{suffix}"
        if content is not None:
            path.write_bytes(content)
        return ws.models.get("torchvision:resnet18", num_classes=4, pretrained_path=str(path))

    return call


def _evil_pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save({"conv1.weight": _Evil()}, buffer)
    return buffer.getvalue()


FILE_CASES = [
    api("files", "no export at the path", lambda w: ws.load(w.fresh() / "nothing"),
        E.ExportError, r"nothing\.json is missing"),
    api("files", "sidecar is not JSON", _load_written(sidecar=b"{not json"), E.ExportError,
        r"small\.json is not valid JSON \(line 1, column 2"),
    api("files", "sidecar is not UTF-8", _load_written(sidecar=b"\xff\xfe"), E.ExportError,
        r"is not UTF-8 text"),
    api("files", "sidecar holds a list", _load_written(sidecar=b"[1, 2]"), E.ExportError,
        r"must hold a JSON object, not list"),
    api("files", "sidecar of another format", _load_written(sidecar=b'{"format": "x"}'),
        E.ExportError, r"is not a widthsearch export \('x'\)"),
    api("files", "sidecar nested 100000 deep", _load_written(sidecar=b"[" * 100000),
        E.ExportError, r"nests too deeply|not valid JSON"),
    api("files", "sidecar without its shapes key", _load_edited(shapes=_DELETE),
        E.ExportError, r"does not fit|missing"),
    api("files", "sidecar without the version", _load_edited(widthsearch_version=_DELETE),
        E.ExportError, r"malformed: widthsearch_version: Field required"),
    api("files", "sidecar with an unknown key", _load_edited(run_this="rm -rf /"),
        E.ExportError, r"malformed: run_this: unknown key"),
    api("files", "sidecar resizes to a negative size", _load_edited(shapes__conv={
        "attrs": {"out_channels": -1}}), E.ExportError,
        r"shapes\.conv\.attrs\.out_channels.*greater than or equal to 0"),
    api("files", "sidecar grows a layer", _load_edited(shapes__conv={
        "attrs": {"out_channels": 4096}}), E.ExportError,
        r"conv\.out_channels=4096 exceeds the full model's 8; an export only shrinks"),
    api("files", "sidecar with an unknown shape key", _load_edited(shapes__conv={
        "forward": 1}), E.ExportError, r"shapes\.conv\.forward: unknown key"),
    api("files", "sidecar sets a layer attribute it may not", _load_edited(shapes__conv={
        "attrs": {"forward": 1}}), E.ExportError, r"cannot set \['forward'\] on Conv2d"),
    api("files", "sidecar grows a tensor", _load_edited(shapes__conv={
        "tensors": {"weight": [64, 3, 3, 3]}}), E.ExportError,
        r"conv\.weight \(Conv2d\) has shape \[8, 3, 3, 3\], the export \[64, 3, 3, 3\]"),
    api("files", "sidecar with a huge dimension", _load_edited(shapes__conv={
        "attrs": {"out_channels": 10**12}}), E.ExportError, r"less than or equal to 1048576"),
    api("files", "sidecar resizes a layer the model lacks", _load_edited(shapes__nope={
        "attrs": {"out_channels": 2}}), E.ExportError, r"resizes .*'nope'"),
    api("files", "sidecar names a model with a path", _load_edited(model="../../evil"),
        E.ExportError, r"model: String should match pattern"),
    api("files", "sidecar asks for num_classes=10**10", _load_registered(num_classes=10**10),
        E.ExportError, r"model_kwargs\.num_classes.*less than or equal to 1048576"),
    api("files", "sidecar asks for an enormous model", _load_registered(width_mult=1000.0),
        E.ExportError, r"parameters \(more than 2,000,000,000\)|does not fit"),
    api("files", "sidecar kwargs name a file outside the folder",
        _load_registered(pretrained_path="/etc/passwd"), E.UntrustedFileError,
        r"model_kwargs\.pretrained_path names '/etc/passwd', outside the export's folder"),
    api("files", "sidecar kwargs climb out with ..",
        _load_registered(pretrained_path="../../x.pt"), E.UntrustedFileError,
        r"outside the export's folder"),
    api("files", "sidecar kwargs of an unbounded float", _load_registered(width_mult=1e300),
        E.ExportError, r"model_kwargs\.width_mult"),
    api("files", "weights file is random bytes", _load_written(weights=b"\x00" * 64),
        E.ExportError, r"small\.safetensors is not a readable safetensors file"),
    api("files", "weights file missing", _load_missing_weights, E.ExportError,
        r"small\.safetensors is missing"),
    api("files", "weights with a flipped byte", _load_flipped, E.IntegrityError,
        r"is damaged: its tensors do not match their sha256 checksum"),
    api("files", "weights of another export", _load_swapped, E.ExportError,
        r"is not the weights file small\.json was saved with"),
    api("files", "pretrained_path does not exist", _pretrained(None), E.WidthSearchError,
        r"pretrained_path .* does not exist or is not a file"),
    api("files", "pretrained_path plants code", _pretrained(_evil_pickle()),
        E.UntrustedFileError, r"refused pretrained_path .*run Python code \(posix\.system\)"),
    api("files", "pretrained_path is a raw pickle", _pretrained(pickle.dumps({"a": 1})),
        E.WidthSearchError, r"not a torch zip file \(a plain pickle, which is never unpickled"),
    api("files", "pretrained_path is garbage", _pretrained(b"PK\x03\x04garbage"),
        E.WidthSearchError, r"cannot load pretrained_path .*corrupt or truncated"),
    api("files", "pretrained .safetensors is garbage", _pretrained(b"garbage", ".safetensors"),
        E.WidthSearchError, r"not a readable safetensors file"),
]


def _diverge_setup(w: Workspace, p: dict[str, str]) -> None:
    p["config"] = str(w.config_file(optim={"epochs": 1, "lr": 1e12, "warmup_epochs": 0}))


def _bn_poison(w: Workspace) -> Any:
    from rich.console import Console

    from widthsearch.train.trainer import Trainer

    trainer = Trainer(tiny_config(w.data, optim={"epochs": 1}), w.fresh() / "run",
                      console=Console(file=io.StringIO()), progress=False)

    def poison(t: Trainer, metrics: dict[str, float]) -> None:
        for name, buf in t.net.named_buffers():
            if name.endswith("running_var"):
                buf.fill_(float("inf"))
                return

    trainer.on_step.append(poison)
    return trainer.fit(max_steps=3)


NUMERIC_CASES = [
    cli("numerics", "a learning rate that diverges", "train --no-progress --run-dir {tmp}/run "
        "--config {config}", r"training diverged at step \d+ \(loss (nan|inf)\)\. No checkpoint "
        r"was written yet; .* --set optim\.lr=1e\+11", setup=_diverge_setup),
    api("numerics", "non-finite BN statistics at a checkpoint", _bn_poison, E.NumericsError,
        r"step \d+: non-finite values: .*running_var.*not saved\. No checkpoint was written"),
]

SUBCOMMAND_CASES = [
    cli("subcommands", "no subcommand", "", r"required: COMMAND"),
    cli("subcommands", "unknown subcommand", "frobnicate", r"invalid choice: 'frobnicate'"),
    cli("subcommands", "unknown option", "train --bogus", r"unrecognized arguments: --bogus"),
    cli("subcommands", "inspect without a model", "inspect", r"required: model"),
    cli("subcommands", "train --set without a value", "train --set",
        r"argument --set: expected at least one argument"),
    cli("subcommands", "coverage of no model", "coverage --models nothing-matches*",
        r"nothing-matches|no torchvision model"),
    cli("subcommands", "coverage --workers abc", "coverage --workers abc",
        r"argument --workers: invalid int value"),
    cli("subcommands", "quickstart with missing data",
        "quickstart --no-progress --run-dir {tmp}/run --data {tmp}/nope",
        r"Fashion-MNIST not found"),
    cli("subcommands", "export a folder that is not a run", "export {tmp} --pick 0",
        r"is not a widthsearch run directory"),
    cli("subcommands", "export before any search", "export {finished} --pick 0",
        r"search/chosen\.json does not exist: search the run first"),
    cli("subcommands", "export with negative recalibration", "export {finished} --pick 0 "
        "--recal-batches -1", r"--recal-batches must be >= 0, got -1"),
    cli("subcommands", "export without a width", "export {finished}",
        r"one of the arguments --pick --config is required"),
    cli("subcommands", "slimmable of a folder that is not a run", "slimmable {tmp}",
        r"is not a widthsearch run directory"),
    cli("subcommands", "report of a folder that is not a run", "report {tmp}",
        r"is not a widthsearch run directory"),
    cli("subcommands", "fidelity of a folder that is not a run", "fidelity {tmp} --samples 3",
        r"is not a widthsearch run directory"),
    cli("subcommands", "fidelity of fewer than two widths", "fidelity {finished} --samples 0",
        r"--samples must be an integer >= 2, got 0"),
    cli("subcommands", "latency-table of a folder that is not a run",
        "latency-table {tmp} -o {tmp}/t.json", r"is not a widthsearch run directory"),
    cli("subcommands", "latency-table without an output", "latency-table {finished}",
        r"required: -o/--output"),
    cli("subcommands", "inspect a folder that is not a run", "inspect {tmp}",
        r"is not a widthsearch run directory"),
    cli("subcommands", "search with a missing latency table",
        "search {finished} --quiet --budget macs=50% --latency-table {tmp}/nope.json",
        r"nope\.json"),
    cli("subcommands", "a latency budget without a table",
        "search {finished} --quiet --budget latency=1ms", r"latency"),
]

def _json(name: str, text: str) -> Callable[[Workspace, dict[str, str]], None]:
    return lambda w, p: Path(p["tmp"], name).write_text(text)


SEARCH = "search {finished} --quiet --budget"
BUDGET_CASES = [
    cli("budgets", "a percentage above 100", f"{SEARCH} macs=200%",
        r"budget 'macs=200%': a percentage must be in \(0, 100\]"),
    cli("budgets", "below the smallest subnet", f"{SEARCH} macs=0.001%",
        r"macs=0\.001% .* is outside the reachable macs range"),
    cli("budgets", "FLOPs instead of MACs", f"{SEARCH} flops=50%",
        r"budget metric 'flops': widthsearch counts multiply-accumulates, write macs=50%"),
    cli("budgets", "a budget without a value", f"{SEARCH} macs",
        r"a budget looks like macs=50% or latency=2\.5ms, got 'macs'"),
    cli("budgets", "a budget that is not a number", f"{SEARCH} macs=abc",
        r"'abc' is not a number with a unit"),
    cli("budgets", "search a folder that is not a run", "search {tmp} --budget macs=50%",
        r"is not a widthsearch run directory \(no config\.yaml\); train one there first"),
    cli("budgets", "search with population 0", f"{SEARCH} macs=50% --population 0",
        r"evolution needs population, generations, top_k >= 1"),
    cli("budgets", "search with an unknown method", f"{SEARCH} macs=50% --method nope",
        r"argument --method: invalid choice: 'nope'"),
]

FINISH_CASES = [
    cli("subcommands", "finetune a folder that is not a run", "finetune {tmp} --pick 0",
        r"is not a widthsearch run directory"),
    cli("subcommands", "finetune before any search", "finetune {finished} --pick 0",
        r"search/chosen\.json does not exist: search the run first"),
    cli("subcommands", "retrain before any search", "retrain {finished} --pick 0",
        r"search/chosen\.json does not exist"),
    cli("subcommands", "finetune a missing width file",
        "finetune {finished} --config {tmp}/nope.json", r"nope\.json does not exist"),
    cli("subcommands", "finetune a width file that is not JSON",
        "finetune {finished} --config {tmp}/bad.json", r"bad\.json is not readable JSON",
        setup=_json("bad.json", "{nope")),
    cli("subcommands", "finetune a width file holding a list",
        "finetune {finished} --config {tmp}/list.json", r"list\.json must hold a JSON object",
        setup=_json("list.json", "[1]")),
    cli("subcommands", "finetune without --pick or --config", "finetune {finished}",
        r"one of the arguments --pick --config is required"),
]

CASES: list[Case] = [*CONFIG_CASES, *MODEL_CASES, *OUTPUT_CASES, *WIDTH_CASES, *DATA_CASES,
                     *RUN_CASES, *FILE_CASES, *NUMERIC_CASES, *BUDGET_CASES,
                     *SUBCOMMAND_CASES, *FINISH_CASES]

# ------------------------------------------------------------------------------ running


@dataclass
class Outcome:
    """What a case gave: the message line, the exit code (CLI) or error type (API)."""

    message: str
    code: int | None
    error: str
    lines: int
    traceback: bool


def _placeholders(w: Workspace, case: Case) -> dict[str, str]:
    tmp = w.fresh()
    p = {"tmp": str(tmp), "data": str(w.data)}
    text = " ".join(case.argv)
    p["config"] = str(w.config_file()) if "{config}" in text else ""
    for state in ("finished", "partial", "no_checkpoints", "all_flipped", "foreign",
                  "missing_keys", "planted", "bad_yaml", "list_yaml", "edited_config",
                  "bad_metrics"):
        if "{" + state + "}" in text:
            p[state] = str(w.run(state))
    return p


def run_case(w: Workspace, case: Case) -> Outcome:
    """Run one case and capture what a user would see."""
    if case.api is not None:
        try:
            case.api(w)
        except Exception as e:
            text = str(e)
            return Outcome(text, None, type(e).__name__, len(text.splitlines()), False)
        return Outcome("(no error)", None, "none", 0, False)
    p = _placeholders(w, case)
    if case.setup is not None:
        case.setup(w, p)
    argv = [part.format(**p) for part in case.argv]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    held = p.get("_held")
    if isinstance(held, RunDir):
        held.lock.release()
    err = stderr.getvalue()
    lines = [line for line in err.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if line.startswith(_FAILURE_PREFIXES)),
                 len(lines) - 1)
    message = lines[-1] if lines else ""
    return Outcome(message, code, "", len(lines[first:]), "Traceback" in err)


_FAILURE_PREFIXES = ("error: ", "internal error: ", "interrupted")
"""What the failure line starts with; lines before it are the command's own progress."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    yield Workspace(tmp_path_factory.mktemp("errors"))


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 150
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_clear_line(workspace: Workspace, case: Case) -> None:
    outcome = run_case(workspace, case)
    assert not outcome.traceback, outcome.message
    assert outcome.lines == 1, outcome.message
    if case.api is None:
        assert outcome.code == case.code, outcome.message
        assert outcome.message.startswith("error: "), outcome.message
    else:
        assert issubclass(getattr(E, outcome.error, Exception), case.error), \
            f"{outcome.error}: {outcome.message}"
    import re

    assert re.search(case.match, outcome.message), outcome.message
    assert "weights_only=False" not in outcome.message


def test_no_message_suggests_unsafe_loading() -> None:
    package = Path(ws.__file__).parent
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
                 if "weights_only=False" in p.read_text(encoding="utf-8")]
    assert offenders == []
