"""Width proposers: which width configurations training should try next (ask / tell).

`WidthOptimizer` is the protocol every proposer follows: `ask(n)` returns n width configs,
`tell(configs, objectives)` records (or updates) their losses, and `state_dict()` /
`load_state_dict()` make a run resumable. Joslim's training strategy drives any proposer
through it, so a random sampler, the Bayesian optimizer below or another algorithm can pick
the widths a supernet trains.

A proposer works on a *multiplier vector* m in [lo, 1]^G, one entry per encoded group (the
searchable groups, minus those kept full); group g gets floor(m_g * n_g) channels, snapped
down to the nearest width the group allows (`WidthEncoder`). Costs are computed exactly by
a cost function of the width matrix (the supernet's cost model), never modelled.

`JoslimProposer` is the Bayesian optimizer of Joslim (Chin et al., ECML-PKDD 2021): a GP
with a Matern 5/2 ARD kernel on the standardized loss, an optimistic lower confidence bound,
a random augmented-Tchebyshev scalarization against the exact cost, and a bisection of the
scalarization weight until the proposal's cost hits a random target level.

Speed (1,000 history points, 30 groups, one proposal round <= 2 s on a small CPU):
- the GP is fitted on at most `max_points` history points (default 200): the best Pareto
  fronts of (loss, cost) first (peeled until half the budget is used), then the newest
  points, then a random draw of the rest; standardization uses the whole history;
- its hyper-parameters are warm-started from the previous fit and refitted with at most
  `warm_iters` L-BFGS iterations (a cold fit gets `cold_iters`);
- the acquisition is optimized over a pool of snapped candidate configs (random boxes,
  one-multiplier configs, mutations of the best history points) whose GP posterior is
  computed once per round; each bisection round adds local mutations around its best
  candidates. Optimizing over snapped configs means the cost of the candidate picked is the
  exact cost of the config trained (no floor after a continuous optimum).
"""

from __future__ import annotations

import abc
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import WidthSearchError, require
from ..space import WidthConfig, WidthSpace

log = logging.getLogger("widthsearch.joslim")

CostFn = Callable[[np.ndarray], np.ndarray]
"""Exact cost of an (n, groups) width matrix (all groups of the space, in space order)."""


# ------------------------------------------------------------------------------ encoding


class WidthEncoder:
    """Width configs <-> multiplier vectors over the encoded groups of a space.

    `keep_full` names groups that stay at full width (the classifier's input, as the
    reference keeps the last conv and the classifier full); fixed groups stay full anyway.
    """

    def __init__(self, space: WidthSpace, lo: float = 0.42, keep_full: Sequence[str] = ()) -> None:
        if not 0.0 < lo <= 1.0:
            raise WidthSearchError(f"lo must be in (0, 1], got {lo}")
        for name in keep_full:
            space[name]  # unknown names raise with the list of groups
        self.space, self.lo = space, float(lo)
        self.keep_full = tuple(keep_full)
        self.dims = [i for i, g in enumerate(space.groups)
                     if g.slimmable and g.name not in self.keep_full]
        self.sizes = np.array([space.groups[i].size for i in self.dims], dtype=np.float64)
        self._choices = [np.asarray(space.groups[i].choices, dtype=np.int64) for i in self.dims]
        self._full = np.array([g.choices[-1] for g in space.groups], dtype=np.int64)

    @property
    def num_dims(self) -> int:
        return len(self.dims)

    def widths(self, multipliers: np.ndarray) -> np.ndarray:
        """(n, G) multipliers -> (n, groups) widths: floor(m * n) snapped down to an allowed
        width (the smallest allowed one if none is below)."""
        m = np.clip(np.atleast_2d(np.asarray(multipliers, dtype=np.float64)), self.lo, 1.0)
        if m.shape[1] != self.num_dims:
            raise WidthSearchError(f"expected {self.num_dims} multipliers, got {m.shape[1]}")
        out = np.tile(self._full, (len(m), 1))
        raw = np.floor(m * self.sizes + 1e-9).astype(np.int64)
        for j, (i, ch) in enumerate(zip(self.dims, self._choices, strict=True)):
            pos = np.searchsorted(ch, raw[:, j], side="right") - 1
            out[:, i] = ch[np.clip(pos, 0, len(ch) - 1)]
        return out

    def ratios(self, widths: np.ndarray) -> np.ndarray:
        """(n, groups) widths -> (n, G) width ratios of the encoded groups (the GP inputs)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        return w[:, self.dims] / self.sizes

    def to_widths(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        if not configs:
            return np.zeros((0, len(self.space)), dtype=np.int64)
        return np.stack([self.space.to_vector(c) for c in configs])

    def configs(self, widths: np.ndarray) -> list[WidthConfig]:
        return [self.space.from_vector(row) for row in np.atleast_2d(widths)]

    def smallest(self) -> np.ndarray:
        """The widths of multiplier lo everywhere (the smallest width training uses)."""
        return self.widths(np.full((1, self.num_dims), self.lo))[0]

    def full(self) -> np.ndarray:
        return self._full.copy()

    def uniform(self, m: np.ndarray) -> np.ndarray:
        """Widths of one multiplier per row for every encoded group."""
        m = np.asarray(m, dtype=np.float64).reshape(-1, 1)
        return self.widths(np.repeat(m, self.num_dims, axis=1))


def classifier_inputs(net: Any) -> list[str]:
    """Groups read by the last layer the forward calls (the classifier): kept full.

    The last conv before the classifier writes these channels, so keeping them full keeps
    both at full width where the graph allows it.
    """
    layers = list(net.graph.layers)
    if not layers or layers[-1].inputs.layout is None:
        return []
    names: list[str] = []
    _leaves(layers[-1].inputs.layout.segments, names)
    return [n for n in dict.fromkeys(names) if net.space[n].slimmable]


def _leaves(segments: tuple, out: list[str]) -> None:
    for seg in segments:
        if hasattr(seg, "parts"):
            for part in seg.parts:
                _leaves(part, out)
        elif hasattr(seg, "space"):
            out.append(seg.space)
        else:
            out.append(seg)


# ------------------------------------------------------------------------------ protocol


class WidthOptimizer(abc.ABC):
    """Ask / tell protocol: `ask(n)` proposes width configs; `tell(configs, objectives)`
    records their losses (a config told again gets its new loss: Joslim re-scores the whole
    history with the current weights). The history keeps each config once, with its exact
    cost."""

    name = "optimizer"

    def __init__(self, encoder: WidthEncoder, cost_fn: CostFn, seed: int = 0) -> None:
        self.encoder, self.cost_fn = encoder, cost_fn
        self.generator = torch.Generator().manual_seed(int(seed))
        self._index: dict[WidthConfig, int] = {}
        self.widths = np.zeros((0, len(encoder.space)), dtype=np.int64)
        self.costs = np.zeros(0, dtype=np.float64)
        self.losses = np.zeros(0, dtype=np.float64)
        self.asked = 0

    @abc.abstractmethod
    def _propose(self, n: int, generator: torch.Generator) -> np.ndarray:
        """(n, groups) widths of the next n proposals."""

    def ask(self, n: int, generator: torch.Generator | None = None) -> list[WidthConfig]:
        """`n` new width configs; `generator` overrides the proposer's own random stream
        (the slimmable baselines draw from the step's shared generator)."""
        if n < 0:
            raise WidthSearchError(f"ask needs n >= 0, got {n}")
        widths = self._propose(n, self.generator if generator is None else generator)
        self.asked += n
        return self.encoder.configs(widths) if n else []

    def tell(self, configs: Sequence[Mapping[str, int]], objectives: Sequence[float]) -> None:
        """Record the loss of each config (new configs join the history with their cost)."""
        values = np.asarray(objectives, dtype=np.float64).reshape(-1)
        if len(values) != len(configs):
            raise WidthSearchError(f"tell got {len(configs)} configs and {len(values)} objectives")
        new = [c for c in dict.fromkeys(WidthConfig(c) for c in configs) if c not in self._index]
        if new:
            w = self.encoder.to_widths(new)
            for c in new:
                self._index[c] = len(self._index)
            self.widths = np.concatenate([self.widths, w])
            self.costs = np.concatenate([self.costs, self.cost_fn(w).astype(np.float64)])
            self.losses = np.concatenate([self.losses, np.full(len(new), np.nan)])
        for c, v in zip(configs, values, strict=True):
            self.losses[self._index[WidthConfig(c)]] = v

    @property
    def history(self) -> list[WidthConfig]:
        return list(self._index)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "asked": self.asked,
            "widths": self.widths.tolist(), "losses": self.losses.tolist(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise WidthSearchError(f"proposer state is for {state.get('name')!r}, not {self.name!r}")
        widths = np.asarray(state["widths"], dtype=np.int64).reshape(-1, len(self.encoder.space))
        configs = self.encoder.configs(widths) if len(widths) else []
        self._index = {}
        self.widths = np.zeros((0, len(self.encoder.space)), dtype=np.int64)
        self.costs = np.zeros(0)
        self.losses = np.zeros(0)
        self.tell(configs, [float(v) for v in state["losses"]])
        self.asked = int(state["asked"])
        self.generator.set_state(state["generator"])


def _rand(generator: torch.Generator, *shape: int) -> np.ndarray:
    return torch.rand(shape, generator=generator, dtype=torch.float64).numpy()


class RandomProposer(WidthOptimizer):
    """Random widths: one multiplier for all groups (`uniform`, conventional slimmable
    training) or one per group (BigNAS-style, the two-stage baseline)."""

    def __init__(self, encoder: WidthEncoder, cost_fn: CostFn, uniform: bool, seed: int = 0) -> None:
        super().__init__(encoder, cost_fn, seed)
        self.uniform = uniform
        self.name = "uniform" if uniform else "random"

    def _propose(self, n: int, generator: torch.Generator) -> np.ndarray:
        lo = self.encoder.lo
        if self.uniform:
            return self.encoder.uniform(lo + (1 - lo) * _rand(generator, n))
        return self.encoder.widths(lo + (1 - lo) * _rand(generator, n, self.encoder.num_dims))


# ------------------------------------------------------------------------------ Joslim BO


def tchebyshev(u_loss: torch.Tensor, u_cost: torch.Tensor, weight: float, b: float = -3.0,
               rho: float = 1e-6) -> torch.Tensor:
    """Augmented Tchebyshev scalarization (minimized): max((1-l)(U_loss-b), l(U_cost-b))
    + rho * the sum of both terms; `b` lies below every standardized value."""
    a = (1.0 - weight) * (u_loss - b)
    c = weight * (u_cost - b)
    return torch.maximum(a, c) + rho * (a + c)


def botorch_lower_confidence_bound(model: Any, x: torch.Tensor, beta: float) -> torch.Tensor:
    """mean - sqrt(beta) * std of the GP at x (n, d) through botorch: its analytic
    UpperConfidenceBound with maximize=False returns -mean + sqrt(beta) * std (the value to
    maximize), whose negative is the optimistic bound of a minimized loss. Reference for
    `GPPredictor`, which computes the same for thousands of points at once."""
    from botorch.acquisition.analytic import UpperConfidenceBound

    acq = UpperConfidenceBound(model, beta=beta, maximize=False)
    with torch.no_grad():
        return -acq(x.unsqueeze(1))


class GPPredictor:
    """Posterior mean and std of a fitted SingleTaskGP (Standardize outcome transform, no
    input transform) for many points, from one Cholesky factor.

    gpytorch's batched posterior over n single points costs O(n) lazy-tensor work per
    call; this is two matrix products and a triangular solve (about 30x faster at 3,000
    candidates and 256 training points), equal to botorch's result to rounding.
    """

    def __init__(self, model: Any) -> None:
        with torch.no_grad():
            self.kernel = model.covar_module
            self.x = model.train_inputs[0]
            y = model.train_targets
            self.mean_const = model.mean_module.constant.detach().reshape(())
            noise = model.likelihood.noise.detach().reshape(())
            k = self.kernel(self.x).to_dense() + noise * torch.eye(len(self.x), dtype=self.x.dtype)
            self.chol = torch.linalg.cholesky(k)
            self.alpha = torch.cholesky_solve((y - self.mean_const).unsqueeze(-1), self.chol)
            self.prior_var = self.kernel.outputscale.detach().reshape(())
            tf = model.outcome_transform
            self.y_mean, self.y_std = tf.means.reshape(()), tf.stdvs.reshape(())

    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            ks = self.kernel(x, self.x).to_dense()
            mean = self.mean_const + (ks @ self.alpha).squeeze(-1)
            v = torch.linalg.solve_triangular(self.chol, ks.T, upper=False)
            var = (self.prior_var - (v * v).sum(0)).clamp_min(1e-12)
        return mean * self.y_std + self.y_mean, var.sqrt() * self.y_std

    def lower_confidence_bound(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        """The optimistic bound of a minimized loss: mean - sqrt(beta) * std."""
        mean, std = self.mean_std(x)
        return mean - math.sqrt(beta) * std


@dataclass
class ProposalStats:
    """Counters of the Bayesian proposals, for logs and benchmarks."""

    proposals: int = 0
    hits: int = 0
    misses: int = 0
    snapped: int = 0
    """Targets no candidate came within the tolerance of, moved to the nearest candidate
    cost (a cost with few distinct values, such as peak memory, leaves gaps between them)."""
    rounds: int = 0
    fits: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class JoslimProposer(WidthOptimizer):
    """Joslim's proposals: `prior_points` one-multiplier configs, the full network once,
    then multi-objective Bayesian optimization of (loss, exact cost).

    Args:
        encoder, cost_fn: the width encoding and the exact cost of a width matrix.
        prior_points: proposals drawn as conventional slimmable widths before the BO starts.
        b: the scalarization's ideal point (below every standardized value).
        beta: confidence-bound width (the bound is mean - sqrt(beta) * std).
        levels: target costs are drawn from this many levels between the smallest and full;
            a level that no candidate's cost comes within the tolerance of (peak memory
            moves in steps of one layer's activation) is moved to the nearest candidate cost
            (`snap_targets`; off, such a proposal misses as in the reference code).
        tolerance: a proposal hits its target when |cost - target| <= tolerance * full cost.
        rounds: at most this many bisection rounds of the scalarization weight.
        max_points: history points the GP is fitted on (see the module docstring).
        pool: random candidates per proposal; mutations per round are `pool // 8`.
        warm_iters / cold_iters: L-BFGS iterations of a warm-started / first GP fit.
    """

    name = "joslim"

    def __init__(self, encoder: WidthEncoder, cost_fn: CostFn, *, prior_points: int = 20,
                 b: float = -3.0, beta: float = 0.1, levels: int = 50, tolerance: float = 0.02,
                 rounds: int = 10, snap_targets: bool = True, max_points: int = 200,
                 pool: int = 2048, warm_iters: int = 20, cold_iters: int = 150, seed: int = 0) -> None:
        super().__init__(encoder, cost_fn, seed)
        require("botorch", "joslim", "Joslim's Bayesian optimization")
        if encoder.num_dims == 0:
            raise WidthSearchError("the width space has no group to search")
        self.prior_points, self.b, self.beta = int(prior_points), float(b), float(beta)
        self.levels, self.tolerance, self.rounds = int(levels), float(tolerance), int(rounds)
        self.snap_targets = bool(snap_targets)
        self.max_points, self.pool = int(max_points), int(pool)
        self.warm_iters, self.cold_iters = int(warm_iters), int(cold_iters)
        self.full_done = False
        self.gp_state: dict[str, torch.Tensor] = {}
        self.stats = ProposalStats()
        self.last_targets: list[float] = []
        w_min, w_full = encoder.smallest()[None, :], encoder.full()[None, :]
        self.min_cost = float(cost_fn(w_min)[0])
        self.full_cost = float(cost_fn(w_full)[0])

    # -- proposals ---------------------------------------------------------------------------
    def _propose(self, n: int, generator: torch.Generator) -> np.ndarray:
        rows: list[np.ndarray] = []
        model = None
        for _ in range(n):
            index = self.asked + len(rows)
            if index < self.prior_points:
                lo = self.encoder.lo
                rows.append(self.encoder.uniform(lo + (1 - lo) * _rand(generator, 1))[0])
            elif not self.full_done:
                self.full_done = True
                rows.append(self.encoder.full())
            else:
                if model is None:
                    model = self._fit(generator)
                if model is None:  # too few scored points: a random one-multiplier config
                    log.warning("joslim: %d scored widths are too few for the GP; proposing a "
                                "random one-multiplier width", int(np.isfinite(self.losses).sum()))
                    lo = self.encoder.lo
                    rows.append(self.encoder.uniform(lo + (1 - lo) * _rand(generator, 1))[0])
                else:
                    rows.append(self._bo_proposal(model, generator))
        return np.stack(rows) if rows else np.zeros((0, len(self.encoder.space)), dtype=np.int64)

    def _scored(self) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.losses))

    def _inputs(self, widths: np.ndarray) -> torch.Tensor:
        r = self.encoder.ratios(widths)
        return torch.as_tensor((r - self.encoder.lo) / (1.0 - self.encoder.lo + 1e-12),
                               dtype=torch.float64)

    def _subset(self, scored: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """At most `max_points` scored indices: the best fronts, the newest, then random."""
        if len(scored) <= self.max_points:
            return scored
        from ..search.pareto import pareto_fronts

        points = np.stack([self.losses[scored], self.costs[scored]], axis=1)
        chosen: list[int] = []
        for front in pareto_fronts(points):
            if len(chosen) + len(front) > self.max_points // 2:
                break
            chosen.extend(scored[front].tolist())
        taken = set(chosen)
        newest = [int(i) for i in scored[::-1] if int(i) not in taken][: self.max_points // 4]
        chosen.extend(newest)
        taken.update(newest)
        rest = np.array([int(i) for i in scored if int(i) not in taken], dtype=np.int64)
        need = self.max_points - len(chosen)
        if need > 0 and len(rest):
            perm = torch.randperm(len(rest), generator=generator).numpy()[:need]
            chosen.extend(rest[perm].tolist())
        return np.array(sorted(chosen), dtype=np.int64)

    def _fit(self, generator: torch.Generator) -> Any:
        """The GP on the standardized loss of (a subset of) the scored history, or None."""
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.kernels import MaternKernel, ScaleKernel
        from gpytorch.mlls import ExactMarginalLogLikelihood

        scored = self._scored()
        if len(scored) < 2 or np.ptp(self.losses[scored]) == 0:
            return None
        idx = self._subset(scored, generator)
        x = self._inputs(self.widths[idx])
        y = torch.as_tensor(self.losses[idx], dtype=torch.float64).unsqueeze(-1)
        d = self.encoder.num_dims
        kernel = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=d))
        model = SingleTaskGP(x, y, covar_module=kernel)
        warm = bool(self.gp_state)
        if warm:
            model.load_state_dict(self.gp_state, strict=False)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        iters = self.warm_iters if warm else self.cold_iters
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(), warnings.catch_warnings():
            torch.manual_seed(seed)  # refit attempts resample priors: reproducibly
            warnings.simplefilter("ignore")
            try:
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": iters}})
            except Exception as err:  # a failed fit keeps the last hyper-parameters
                log.warning("joslim: GP fit failed (%s); keeping its previous hyper-parameters",
                            type(err).__name__)
                if warm:
                    model.load_state_dict(self.gp_state, strict=False)
        model.eval()
        self.gp_state = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.stats.fits += 1
        return model

    def _candidates(self, generator: torch.Generator) -> np.ndarray:
        """A pool of snapped candidate widths: random boxes, one-multiplier configs and
        mutations of the history's first front."""
        enc, lo = self.encoder, self.encoder.lo
        parts = [enc.widths(lo + (1 - lo) * _rand(generator, self.pool, enc.num_dims)),
                 enc.uniform(np.linspace(lo, 1.0, self.levels))]
        scored = self._scored()
        if len(scored):
            from ..search.pareto import pareto_front

            front = scored[pareto_front(np.stack([self.losses[scored], self.costs[scored]], 1))]
            parts.append(self._mutate(self.widths[front], self.pool // 4, generator))
        return np.unique(np.concatenate(parts), axis=0)

    def _mutate(self, widths: np.ndarray, n: int, generator: torch.Generator,
                scale: float = 0.08) -> np.ndarray:
        """`n` Gaussian perturbations (in multiplier space) of rows of `widths`."""
        enc = self.encoder
        base = enc.ratios(widths)
        pick = torch.randint(0, len(base), (n,), generator=generator).numpy()
        noise = torch.randn((n, enc.num_dims), generator=generator, dtype=torch.float64).numpy()
        # a ratio r of a width w = floor(m n) needs m a bit above r to floor back to w
        m = base[pick] + 0.5 / enc.sizes + scale * noise
        return enc.widths(m)

    def _bo_proposal(self, model: Any, generator: torch.Generator) -> np.ndarray:
        predictor = GPPredictor(model)
        scored = self._scored()
        y = self.losses[scored]
        y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
        c_hist = self.costs[scored]
        c_mean, c_std = float(c_hist.mean()), float(c_hist.std()) or 1.0

        def standardized(widths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
            cost = self.cost_fn(widths).astype(np.float64)
            lcb = predictor.lower_confidence_bound(self._inputs(widths), self.beta)
            return ((lcb - y_mean) / y_std, torch.as_tensor((cost - c_mean) / c_std), cost)

        pool = self._candidates(generator)
        u_loss, u_cost, cost = standardized(pool)
        levels = np.linspace(self.min_cost, self.full_cost, self.levels)
        target = float(levels[int(torch.randint(0, self.levels, (1,), generator=generator))])
        tol = self.tolerance * self.full_cost
        nearest = float(cost[int(np.argmin(np.abs(cost - target)))])
        if self.snap_targets and abs(nearest - target) > tol:
            log.debug("joslim: no candidate costs within the tolerance of the target %.4g; "
                      "aiming at the nearest candidate cost %.4g", target, nearest)
            self.stats.snapped += 1
            target = nearest
        self.last_targets.append(target)
        low, high = 0.0, 1.0
        best_i, best_gap = 0, math.inf
        self.stats.proposals += 1
        for _ in range(self.rounds):
            self.stats.rounds += 1
            weight = 0.5 * (low + high)
            score = tchebyshev(u_loss, u_cost, weight, self.b)
            top = torch.topk(-score, min(8, len(score))).indices.numpy()
            extra = self._mutate(pool[top], max(1, self.pool // 8), generator)
            e_loss, e_cost, e_c = standardized(extra)
            pool = np.concatenate([pool, extra])
            u_loss, u_cost = torch.cat([u_loss, e_loss]), torch.cat([u_cost, e_cost])
            cost = np.concatenate([cost, e_c])
            score = tchebyshev(u_loss, u_cost, weight, self.b)
            i = int(torch.argmin(score))
            gap = abs(cost[i] - target)
            if gap < best_gap:
                best_i, best_gap = i, gap
            if gap <= tol:
                self.stats.hits += 1
                return pool[i]
            if cost[i] > target:
                low = weight  # too expensive: weigh the cost more
            else:
                high = weight
        self.stats.misses += 1
        near = np.flatnonzero(np.abs(cost - target) <= tol)
        if len(near):
            pick = int(near[int(torch.argmin(u_loss[near]))])
            log.warning("joslim: the bisection missed the target cost %.4g after %d rounds "
                        "(closest %.4g); proposing the pool's lowest loss bound within the "
                        "tolerance instead (cost %.4g)", target, self.rounds,
                        cost[best_i], cost[pick])
            return pool[pick]
        log.warning("joslim: the bisection missed the target cost %.4g after %d rounds and no "
                    "candidate lies within the tolerance; proposing the closest (cost %.4g)",
                    target, self.rounds, cost[best_i])
        return pool[best_i]

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(full_done=self.full_done, stats=self.stats.to_dict(),
                     gp={k: v.clone() for k, v in self.gp_state.items()},
                     targets=list(self.last_targets))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.full_done = bool(state["full_done"])
        self.stats = ProposalStats(**{k: int(v) for k, v in state["stats"].items()})
        self.gp_state = {k: v.clone() for k, v in state["gp"].items()}
        self.last_targets = [float(t) for t in state.get("targets", [])]
