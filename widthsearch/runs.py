"""The run directory and its durable state: config, checkpoints, metrics log.

Everything here is written so that a run can be killed at any instant and resumed:
files are replaced atomically, checkpoints are checksummed and rotated, checkpoints load with
``torch.load(weights_only=True)`` (never arbitrary unpickling), and only the writer rank
(rank 0 under torchrun) touches the disk.

Layout::

    run/
      config.yaml        the run's configuration (yaml.safe_dump; changes made on
                         resume are recorded as "config_change" lines in metrics.jsonl)
      .lock              flock'ed by the one process writing into the run (holds its pid)
      checkpoints/       step-000001000.pt ... (the newest K kept; each ends with the
                         sha256 of its contents and is verified before it is used)
      metrics.jsonl      one JSON object per line
      supernet.safetensors  final weights, their sha256 in the safetensors metadata
      search/            search results
      exports/           exported subnets
      report.md          summary, next to its plots
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import random
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from widthsearch.errors import (
    CheckpointError,
    RunError,
    RunLockedError,
    WidthSearchError,
)
from widthsearch.safeio import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    read_checksummed,
    safe_torch_load,
    write_checksummed,
)

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
SEARCH_DIR = "search"
EXPORTS_DIR = "exports"
REPORT_FILE = "report.md"
LOCK_FILE = ".lock"
SUPERNET_FILE = "supernet.safetensors"
CHECKPOINT_RE = re.compile(r"^step-(\d+)\.pt$")

# What torch.load(weights_only=True) accepts (exact types: np.float64 and friends are refused).
_SCALAR_TYPES = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device)
_SEQUENCE_TYPES = (list, tuple, set, torch.Size)
_MAPPING_TYPES = (dict, OrderedDict)


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Snapshot python, numpy (legacy global), torch CPU and CUDA RNGs as weights_only data.

    Resuming with this state makes the rest of a run draw the same numbers as an
    uninterrupted one (design invariant 5). numpy ``Generator`` objects are not global
    and are not covered: keep their state in your own checkpoint entry.
    """
    version, internal, gauss_next = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(np_name),
            "key": torch.from_numpy(np_key.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG state from :func:`capture_rng_state` (also after a checkpoint trip)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
    npst = state["numpy"]
    key = np.asarray(torch.as_tensor(npst["key"]).numpy(), dtype=np.uint32)
    np.random.set_state(
        (
            npst["bit_generator"],
            key,
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"checkpoint has CUDA RNG state for {len(cuda_states)} devices but "
                f"{torch.cuda.device_count()} are visible; CUDA RNG not restored",
                stacklevel=2,
            )


# --------------------------------------------------------------------------- checkpoints


def _check_loadable(obj: Any, where: str = "state") -> None:
    """Refuse at save time what weights_only loading would refuse at resume time."""
    if isinstance(obj, torch.Tensor) or type(obj) in _SCALAR_TYPES:
        return
    if type(obj) in _MAPPING_TYPES:
        for k, v in obj.items():
            _check_loadable(k, f"{where} key {k!r}")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if type(obj) in _SEQUENCE_TYPES:
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise WidthSearchError(
        f"cannot checkpoint {where}: it is a {type(obj).__module__}.{type(obj).__qualname__}; "
        "checkpoints hold only tensors, numbers, strings, lists, tuples and dicts "
        "(convert numpy values with .item() or torch.as_tensor)"
    )


def _load_one(path: Path) -> dict[str, Any]:
    """Load one checkpoint after verifying its checksum; failures name the file.

    A file without our checksum trailer is probed with safe loading only to name refused
    code as such; it is never used, since nothing vouches for its contents.
    """
    what = f"checkpoint {path}"
    try:
        data = read_checksummed(path)
    except CheckpointError as e:
        if type(e) is CheckpointError and path.is_file():
            with contextlib.suppress(CheckpointError):
                safe_torch_load(path, what)  # raises UntrustedFileError for planted code
        raise
    state = safe_torch_load(data, what)
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} holds a {type(state).__name__}, not a dict")
    match = CHECKPOINT_RE.match(path.name)
    if match and state.get("step") != int(match.group(1)):
        raise CheckpointError(f"{what} holds step {state.get('step')!r}, not the step its "
                              "name says")
    return state


class RunLock:
    """An exclusive `flock` on ``run/.lock``: one writing process per run directory.

    The kernel drops the lock when its holder exits, however it exits (Ctrl-C, kill -9),
    so a lock file left behind by a dead process never blocks anyone. The holder writes
    its pid into the file so the refusal can name it. Re-entrant within one RunLock.
    """

    def __init__(self, run_path: Path) -> None:
        self.path = run_path / LOCK_FILE
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise RunLockedError naming the process that holds it."""
        if self._fd is not None:
            self._depth += 1
            return
        from widthsearch.safeio import file_mode

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise RunLockedError(
                f"{self.path.parent} is in use: {who} is writing into it; wait for it "
                "to finish (or stop it), then retry") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        """Drop one level of the lock; the last release unlocks and closes the file."""
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self._depth = 1
        self.release()


def config_identity(config: dict[str, Any], ignore: Iterator[str] | set[str] = frozenset()) -> str:
    """A short hash of a run config without the `ignore`d "section.key" fields.

    Checkpoints carry it, so a checkpoint copied in from another run (another model, data
    or seed) is recognised as foreign instead of loading into the wrong run.
    """
    ignored = set(ignore)
    kept = {section: {k: v for k, v in values.items() if f"{section}.{k}" not in ignored}
            if isinstance(values, dict) else values for section, values in config.items()}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- metrics


def _jsonable(value: Any) -> Any:
    """Let callers log 0-d tensors and numpy scalars without converting them by hand."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot log a {type(value).__name__} as JSON")


class MetricsLog:
    """An append-only JSON-lines log; one flushed line per event survives a kill.

    Only the writer rank writes; on other ranks :meth:`log` and :meth:`truncate_after`
    do nothing, so the training loop can call them unconditionally.
    """

    def __init__(self, path: str | os.PathLike[str], *, rank: int = 0) -> None:
        self.path = Path(path)
        self.rank = rank

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def log(self, **fields: Any) -> None:
        """Append ``fields`` plus a wall-clock ``time`` (seconds since the epoch)."""
        if not self.is_writer:
            return
        record = {"time": time.time(), **fields}
        line = json.dumps(record, default=_jsonable)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                yield line, json.loads(line)
            except json.JSONDecodeError as e:
                if i == len(lines) - 1:  # a line cut short by a kill: drop it
                    warnings.warn(f"{self.path}: ignoring a truncated last line", stacklevel=3)
                    return
                raise WidthSearchError(f"{self.path} line {i + 1} is not JSON: {e}") from e

    def read(self) -> list[dict[str, Any]]:
        """All records in order ([] if nothing was logged yet)."""
        return [record for _, record in self._records()]

    def truncate_after(self, step: int) -> None:
        """Drop records whose ``step`` is beyond ``step``, so a resume logs no duplicates.

        Records without a ``step`` are kept. The rewrite is atomic.
        """
        if not self.is_writer or not self.path.exists():
            return
        kept = [
            line
            for line, record in self._records()
            if not (isinstance(record.get("step"), (int, float)) and record["step"] > step)
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------- run directory


class RunDir:
    """A run directory: paths to its parts plus its durable state.

    ``rank`` is the distributed rank; only rank 0 writes. Other ranks may read (every rank
    loads the checkpoint on resume) but never create, save or log. Other ranks should
    read only after a barrier that follows rank 0's :meth:`create` or save.
    """

    def __init__(self, path: str | os.PathLike[str], *, rank: int = 0) -> None:
        """Wrap ``path`` without checking it; use :meth:`create` or :meth:`open`."""
        self.path = Path(path)
        self.rank = rank
        self.lock = RunLock(self.path)
        """Held by the process writing into the run (`with run.lock:`); no-op off rank 0."""
        if not self.is_writer:
            self.lock = _NoLock(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, rank={self.rank})"

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def search_dir(self) -> Path:
        return self.path / SEARCH_DIR

    @property
    def exports_dir(self) -> Path:
        return self.path / EXPORTS_DIR

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def supernet_path(self) -> Path:
        return self.path / SUPERNET_FILE

    @property
    def metrics(self) -> MetricsLog:
        """The run's metrics log, writing only on the writer rank."""
        return MetricsLog(self.metrics_path, rank=self.rank)

    # lifecycle
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        config: dict[str, Any],
        *,
        exist_ok: bool = False,
        rank: int = 0,
    ) -> RunDir:
        """Make a new run: the folder tree and config.yaml.

        Refuses to overwrite an existing run's config (that would silently mix two runs'
        checkpoints and metrics) unless ``exist_ok``. Non-writer ranks only get the handle:
        they do not even look at the disk, since rank 0 may be creating the run meanwhile.
        """
        run = cls(path, rank=rank)
        if not run.is_writer:
            return run
        if run.path.exists() and not run.path.is_dir():
            raise RunError(f"{run.path} exists and is not a directory")
        try:
            text = yaml.safe_dump(config, sort_keys=False)
        except yaml.YAMLError as e:
            raise WidthSearchError(f"the run config is not plain YAML data: {e}") from e
        with run.lock:
            if run.config_path.exists() and not exist_ok:
                if not run.is_unstarted():
                    raise RunError(
                        f"{run.path} already holds a run (it has {CONFIG_FILE}); "
                        "resume it or choose another directory"
                    )
                # A run that stopped before its first checkpoint left nothing to resume:
                # its folder must not block a retry, and its log must not mix into it.
                run.metrics_path.unlink(missing_ok=True)
            for sub in (run.checkpoints, run.search_dir, run.exports_dir):
                sub.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.config_path, text)
        return run

    def is_unstarted(self) -> bool:
        """True when the folder holds no checkpoint and no result: nothing to resume or lose."""
        return not (self.list_checkpoints() or self.has_results())

    def has_results(self) -> bool:
        """Whether the run produced something durable: final weights, search results,
        exports or an evaluated epoch (each epoch ends with a checkpoint)."""
        if self.supernet_path.exists():
            return True
        for sub in (self.search_dir, self.exports_dir):
            if sub.is_dir() and any(sub.iterdir()):
                return True
        try:
            return any(r.get("kind") == "epoch" for r in self.metrics.read())
        except WidthSearchError:
            return True  # an unreadable log is not evidence that nothing happened

    def update_config(self, config: dict[str, Any], changes: dict[str, tuple[Any, Any]],
                      step: int) -> None:
        """Replace config.yaml with ``config`` and record ``changes`` (key -> (old, new))
        in the metrics log, so the run's history says what changed and when."""
        if not self.is_writer or not changes:
            return
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))
        self.metrics.log(kind="config_change", step=step,
                         changes={k: {"old": old, "new": new} for k, (old, new) in changes.items()})

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, rank: int = 0) -> RunDir:
        """Open an existing run (for resume, search, export or report)."""
        run = cls(path, rank=rank)
        if not run.path.is_dir():
            raise WidthSearchError(f"run directory {run.path} does not exist")
        if not run.config_path.is_file():
            raise WidthSearchError(
                f"{run.path} is not a widthsearch run directory (no {CONFIG_FILE}); "
                f"train one there first (widthsearch train --run-dir {run.path})"
            )
        return run

    def read_config(self) -> dict[str, Any]:
        """The config the run was created with."""
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WidthSearchError(f"{self.config_path} does not exist") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise RunError(f"{self.config_path} is not valid YAML{where}: {problem}") from None
        except UnicodeDecodeError:
            raise RunError(f"{self.config_path} is not UTF-8 text") from None
        if config is None:
            return {}
        if not isinstance(config, dict):
            raise WidthSearchError(
                f"{self.config_path} must hold a mapping, not a {type(config).__name__}"
            )
        return config

    # final weights
    def save_supernet_weights(self, state: dict[str, torch.Tensor], step: int) -> Path | None:
        """Write supernet.safetensors atomically, its tensors' sha256 in its metadata."""
        if not self.is_writer:
            return None
        from widthsearch.safeio import save_safetensors_verified

        try:
            return save_safetensors_verified(self.supernet_path, state, {"step": str(step)})
        except OSError as e:
            raise CheckpointError(f"cannot write {self.supernet_path}: {e.strerror or e}; "
                                  "the checkpoints are intact") from None

    def load_supernet_weights(self) -> dict[str, torch.Tensor]:
        """The tensors of supernet.safetensors after verifying their checksum."""
        from widthsearch.safeio import load_safetensors_verified

        if not self.supernet_path.is_file():
            raise RunError(f"{self.path} has no {SUPERNET_FILE}: the run has not finished "
                           f"(resume it with widthsearch train --resume {self.path})")
        return load_safetensors_verified(self.supernet_path)[0]

    # checkpoints
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:09d}.pt"

    def list_checkpoints(self) -> list[Path]:
        """Checkpoints oldest to newest (by step number, not by file time)."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.checkpoints.iterdir()
            if (m := CHECKPOINT_RE.match(p.name)) and p.is_file()
        ]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint file, or None before the first save."""
        found = self.list_checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, state: dict[str, Any], step: int, *, keep: int = 3) -> Path | None:
        """Atomically write ``state`` (plus ``"step"``) with its checksum, then delete all
        but the newest ``keep``.

        ``state`` must be weights_only-loadable (tensors, numbers, strings, lists, tuples,
        dicts); anything else is refused now rather than at resume. A failed write (a full
        disk) leaves the earlier checkpoints as they were and raises one CheckpointError.
        Returns None on non-writer ranks, which write nothing.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if "step" in state and state["step"] != step:
            raise ValueError(f"state['step'] is {state['step']} but step is {step}")
        if not self.is_writer:
            return None
        payload = {**state, "step": step}
        _check_loadable(payload)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        target = self.checkpoint_path(step)
        previous = [p for p in self.list_checkpoints() if p != target]
        try:
            path = write_checksummed(target, buffer.getvalue())
        except OSError as e:
            kept = (f"the previous checkpoint {previous[-1].name} is intact" if previous
                    else "no earlier checkpoint exists")
            raise CheckpointError(f"cannot write checkpoint {target}: "
                                  f"{e.strerror or e}; {kept}") from None
        for old in self.list_checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None, *,
                        accept: Callable[[dict[str, Any], Path], None] | None = None
                        ) -> dict[str, Any]:
        """Load the given checkpoint, or the newest one that verifies, safely onto the CPU.

        Without ``path``, a newest checkpoint that fails (damaged, cut short, planted,
        or refused by ``accept(state, path)``, which raises CheckpointError for a state
        that does not belong to the run) is skipped with a warning naming it and why, in
        favour of the one before it. A run never continues from a file it cannot verify.
        """
        if path is not None:
            state = _load_one(Path(path))
            if accept is not None:
                accept(state, Path(path))
            return state
        candidates = self.list_checkpoints()
        if not candidates:
            raise CheckpointError(f"{self.checkpoints} has no checkpoints to resume from")
        errors: list[str] = []
        for candidate in reversed(candidates):
            try:
                state = _load_one(candidate)
                if accept is not None:
                    accept(state, candidate)
            except WidthSearchError as e:
                errors.append(str(e))
                continue
            if errors:
                warnings.warn(
                    f"skipped unusable checkpoint(s), resuming from {candidate.name}: "
                    + "; ".join(errors),
                    stacklevel=2,
                )
            return state
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors))


class _NoLock(RunLock):
    """The lock of a non-writer rank: rank 0 holds the real one."""

    def acquire(self) -> None:
        return None

    def release(self) -> None:
        return None


__all__ = [
    "CheckpointError",
    "MetricsLog",
    "RunDir",
    "RunLock",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng_state",
    "config_identity",
    "restore_rng_state",
]
