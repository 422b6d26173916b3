"""The searcher base class: a fixed, resumable loop; subclasses only say how to propose.

`Searcher.search()` is the same for every method: reset -> load the state file if the run's
search/ folder holds one -> run the remaining steps, saving the state atomically after each
(subclass state, RNG state, every evaluation so far) -> return the result. A search killed at
any point resumes from its last completed step and ends with the same result as an
uninterrupted one, because the RNG state and every score it has seen are restored and the
evaluator is only asked about configs it has not scored yet.
"""

from __future__ import annotations

import base64
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from ..errors import WidthSearchError
from ..runs import atomic_write_text
from ..sampling import MetricSource
from ..space import WidthConfig, WidthSpace
from .budgets import METRICS, Budget, Target, metric_costs, resolve_budgets
from .pareto import pareto_front

STATE_VERSION = 1
REPORTED_METRICS = ("macs", "params", "memory")


class ScoreLike(Protocol):
    """What an evaluator returns per config (widthsearch.evaluate.Score)."""

    accuracy: float
    loss: float
    choice: Mapping[str, int]


class EvaluatorLike(Protocol):
    """Scores configs on the VAL split (widthsearch.evaluate.Evaluator)."""

    def evaluate(self, configs: Sequence[Mapping[str, int]]) -> Sequence[ScoreLike]: ...


@dataclass(frozen=True)
class Record:
    """One evaluated config: its widths, costs and val score, and the step that scored it."""

    indices: tuple[int, ...]
    config: WidthConfig
    costs: Mapping[str, float]
    accuracy: float
    loss: float
    choice: Mapping[str, int]
    step: int

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "indices": list(self.indices),
                "costs": dict(self.costs), "val_accuracy": self.accuracy,
                "val_loss": self.loss, "choice": dict(self.choice), "step": self.step}


@dataclass(frozen=True)
class Chosen:
    """The best evaluated config (val accuracy) that meets every budget of a target."""

    target: Target
    record: Record

    def to_json(self) -> dict[str, Any]:
        return {"config": self.record.config.to_dict(), "choice": dict(self.record.choice),
                "budget": self.target.to_json(), "costs": dict(self.record.costs),
                "val_accuracy": self.record.accuracy}


@dataclass
class SearchResult:
    """Everything a search evaluated, its Pareto front and one chosen config per target."""

    method: str
    records: list[Record]
    targets: list[Target]
    chosen: list[Chosen]
    front: list[int]  # indices into records: non-dominated in (val accuracy, budget costs)
    objectives: tuple[str, ...]
    full_costs: Mapping[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    uniform: list[Record] = field(default_factory=list)
    """The uniform-multiplier configs (space.uniform(r)), scored for comparison."""

    def front_json(self) -> dict[str, Any]:
        on_front = set(self.front)
        return {
            "method": self.method,
            "objectives": ["val_accuracy", *self.objectives],
            "full_costs": dict(self.full_costs),
            "evaluated": [{**r.to_json(), "on_front": i in on_front}
                          for i, r in enumerate(self.records)],
            **({"extra": self.extra} if self.extra else {}),
        }

    def chosen_json(self) -> dict[str, Any]:
        return {"chosen": [c.to_json() for c in self.chosen]}


def _encode_generator(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")


def _decode_generator(gen: torch.Generator, text: str) -> None:
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy()
    gen.set_state(torch.from_numpy(raw))


def writer_rank() -> bool:
    """Under torch.distributed every rank runs the same search (the evaluator shards the
    scoring); only rank 0 writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Searcher(ABC):
    """Base of every searcher. Subclasses set `method`, implement `init_state`, `step`,
    `total_steps` (an upper bound) and may end early through `done`; they call `score`
    to evaluate and `costs` / `usage` to price configs, and draw randomness from `rng`.

    `state_dir` is the run's search/ folder; with None the search keeps no state file.
    """

    method: ClassVar[str] = ""

    def __init__(
        self,
        space: WidthSpace,
        cost_model: MetricSource,
        evaluator: EvaluatorLike,
        budgets: Sequence[str | Budget] | Sequence[Target],
        *,
        seed: int = 0,
        state_dir: str | Path | None = None,
        objectives: Sequence[str] | None = None,
        progress: bool = False,
    ) -> None:
        self.space = space
        self.cost_model = cost_model
        self.evaluator = evaluator
        if budgets and all(isinstance(b, Target) for b in budgets):
            self.targets = list(budgets)
        else:
            self.targets = resolve_budgets(budgets, space, cost_model)  # type: ignore[arg-type]
        budget_metrics = tuple(dict.fromkeys(m for t in self.targets for m in t.metrics))
        self.objectives = tuple(objectives) if objectives else budget_metrics
        unknown = [m for m in self.objectives if m not in METRICS]
        if unknown:
            raise WidthSearchError(
                f"unknown objective {unknown[0]!r}; known: {', '.join(METRICS)}"
            )
        self.metrics = tuple(dict.fromkeys((*budget_metrics, *self.objectives,
                                            *self._reportable())))
        self.seed = int(seed)
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.progress = progress
        self.searchable = np.array([j for j, g in enumerate(space.groups) if g.slimmable],
                                   dtype=np.int64)
        self.counts = np.array([len(g.choices) for g in space.groups], dtype=np.int64)
        self.full_costs = {m: float(metric_costs(cost_model, space.to_vector(space.max())[None],
                                                 m)[0]) for m in self.metrics}
        self._reset()

    # -- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def init_state(self) -> dict[str, Any]:
        """The method's own JSON state before its first step."""

    @abstractmethod
    def step(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        """Run step `k` (a generation, a batch, a shrink) and return the new JSON state."""

    @abstractmethod
    def total_steps(self) -> int:
        """The number of steps the search runs at most."""

    def done(self, state: dict[str, Any]) -> bool:
        """A search may end before `total_steps` (greedy reaches its last target)."""
        return False

    def options(self) -> dict[str, Any]:
        """The settings that change the result; a state file is resumed only if they match."""
        return {}

    def result_extra(self, state: dict[str, Any]) -> dict[str, Any]:
        """Method-specific output added to front.json (greedy's trajectory)."""
        return {}

    # -- the fixed loop ----------------------------------------------------------------------
    def search(self, *, max_steps: int | None = None, resume: bool = True) -> SearchResult:
        """Reset, resume from the state file if there is one, run, save; see the module doc.

        `max_steps` stops after that many new steps (the state is saved, a later call
        continues); `resume=False` ignores and overwrites an existing state file.
        """
        self._reset()
        if resume:
            self._load_state()
        ran = 0
        total = self.total_steps()
        while self._k < total and not self.done(self._state):
            if max_steps is not None and ran >= max_steps:
                break
            # through JSON, so an uninterrupted search sees exactly what a resumed one loads
            self._state = json.loads(json.dumps(self.step(self._k, self._state)))
            self._k += 1
            ran += 1
            self._save_state()
            if self.progress:
                best = max((r.accuracy for r in self._records), default=float("nan"))
                print(f"{self.method}: step {self._k}/{total}, {len(self._records)} evaluated, "
                      f"best val accuracy {best:.4f}", flush=True)
        self._save_state()
        return self._result()

    @property
    def finished(self) -> bool:
        return self._k >= self.total_steps() or self.done(self._state)

    # -- helpers for subclasses ----------------------------------------------------------------
    def score(self, indices: np.ndarray) -> np.ndarray:
        """Val accuracy of each row of choice indices; new configs are evaluated in one batch."""
        idx = np.atleast_2d(np.asarray(indices, dtype=np.int64))
        keys = [tuple(int(v) for v in row) for row in idx]
        new = list(dict.fromkeys(k for k in keys if k not in self._lookup))
        if new:
            configs = [self.space.from_indices(k) for k in new]
            scores = list(self.evaluator.evaluate(configs))
            if len(scores) != len(configs):
                raise WidthSearchError(
                    f"the evaluator returned {len(scores)} scores for {len(configs)} configs"
                )
            costs = self.costs(np.array(new, dtype=np.int64))
            for i, (key, cfg, s) in enumerate(zip(new, configs, scores, strict=True)):
                rec = Record(key, cfg, {m: float(costs[m][i]) for m in self.metrics},
                             float(s.accuracy), float(s.loss),
                             {str(a): int(b) for a, b in dict(s.choice).items()}, self._k)
                self._lookup[key] = len(self._records)
                self._records.append(rec)
        return np.array([self._records[self._lookup[k]].accuracy for k in keys])

    def baseline(self, configs: Sequence[Mapping[str, int]]) -> list[Record]:
        """Score configs outside the search (the uniform multipliers) without adding them to
        its history, so they change neither its state nor its result."""
        cfgs = list(dict.fromkeys(self.space.validate(c) for c in configs))
        if not cfgs:
            return []
        idx = np.stack([self.space.to_indices(c) for c in cfgs])
        costs = self.costs(idx)
        scores = list(self.evaluator.evaluate(cfgs))
        return [Record(tuple(int(v) for v in idx[i]), c, {m: float(costs[m][i]) for m in self.metrics},
                       float(s.accuracy), float(s.loss),
                       {str(a): int(b) for a, b in dict(s.choice).items()}, -1)
                for i, (c, s) in enumerate(zip(cfgs, scores, strict=True))]

    def costs(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Every reported metric of each row of choice indices."""
        widths = self.space.widths_of_indices(np.atleast_2d(indices))
        return {m: metric_costs(self.cost_model, widths, m) for m in self.metrics}

    def usage(self, target: Target) -> Any:
        """The target's usage (largest cost / limit) as a cost of width arrays."""
        return target.usage(self.cost_model)

    def usage_of_indices(self, target: Target, indices: np.ndarray) -> np.ndarray:
        return self.usage(target)(self.space.widths_of_indices(np.atleast_2d(indices)))

    @property
    def rng(self) -> torch.Generator:
        return self._rng

    @property
    def records(self) -> list[Record]:
        return list(self._records)

    # -- state ----------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._rng = torch.Generator().manual_seed(self.seed)
        self._records: list[Record] = []
        self._lookup: dict[tuple[int, ...], int] = {}
        self._k = 0
        self._state = self.init_state()

    @property
    def state_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"state-{self.method}.json"

    def _signature(self) -> dict[str, Any]:
        return {
            "method": self.method, "seed": self.seed, "options": self.options(),
            "budgets": [dict(t.specs) for t in self.targets], "objectives": list(self.objectives),
            "space": {g.name: list(g.choices) for g in self.space.groups},
        }

    def _save_state(self) -> None:
        path = self.state_path
        if path is None or not writer_rank():
            return
        payload = {
            "version": STATE_VERSION, "signature": self._signature(), "k": self._k,
            "rng": _encode_generator(self._rng), "state": self._state,
            "records": [[list(r.indices), r.accuracy, r.loss, dict(r.choice), r.step]
                        for r in self._records],
        }
        atomic_write_text(path, json.dumps({"sha256": _digest(payload), "payload": payload}))

    def _load_state(self) -> None:
        path = self.state_path
        if path is None or not path.exists():
            return
        try:
            blob = json.loads(path.read_text())
            payload = blob["payload"]
            ok = blob["sha256"] == _digest(payload)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise WidthSearchError(
                f"search state {path} is damaged (checksum mismatch); delete it or start "
                "the search fresh"
            )
        if payload.get("version") != STATE_VERSION or payload["signature"] != self._signature():
            raise WidthSearchError(
                f"search state {path} belongs to a search with other settings "
                f"(method, seed, budgets or options); delete it or start the search fresh"
            )
        self._k = int(payload["k"])
        _decode_generator(self._rng, payload["rng"])
        self._state = payload["state"]
        keys = np.array([row[0] for row in payload["records"]], dtype=np.int64).reshape(
            -1, len(self.space.groups))
        costs = self.costs(keys) if len(keys) else {}
        for i, (key, acc, loss, choice, step) in enumerate(payload["records"]):
            rec = Record(tuple(key), self.space.from_indices(key),
                         {m: float(costs[m][i]) for m in self.metrics}, float(acc), float(loss),
                         {str(a): int(b) for a, b in choice.items()}, int(step))
            self._lookup[rec.indices] = len(self._records)
            self._records.append(rec)

    # -- result -----------------------------------------------------------------------------------
    def _reportable(self) -> tuple[str, ...]:
        out = []
        ends = self.space.to_vector(self.space.max())[None]
        known = tuple(getattr(self.cost_model, "metrics", ()) or ())
        extra = tuple(m for m in ("memory_live", "latency") if m in known)
        for m in (*REPORTED_METRICS, *extra):
            try:
                self.cost_model.evaluate(ends, m)
            except (KeyError, WidthSearchError):
                continue
            out.append(m)
        return tuple(out)

    def eligible(self, target: int, usage: np.ndarray) -> np.ndarray:
        """Indices of the evaluated records target `target` may choose from (`usage`: each
        record's share of that target's budgets); the most accurate of them is chosen.
        Here: every record within the budget."""
        return np.flatnonzero(usage <= 1.0 + 1e-12)

    def _result(self) -> SearchResult:
        recs = self._records
        chosen = []
        if recs:
            acc = np.array([r.accuracy for r in recs])
            for i, t in enumerate(self.targets):
                usage = t.usage_of({m: np.array([r.costs[m] for r in recs]) for m in t.metrics})
                ok = self.eligible(i, usage)
                if len(ok):
                    best = ok[np.lexsort((usage[ok], -acc[ok]))[0]]
                    chosen.append(Chosen(t, recs[best]))
            pts = np.column_stack([-acc] + [[r.costs[m] for r in recs] for m in self.objectives])
            front = np.flatnonzero(pareto_front(pts)).tolist()
        else:
            front = []
        return SearchResult(self.method, list(recs), list(self.targets), chosen, front,
                            self.objectives, dict(self.full_costs), self.result_extra(self._state))
