"""Evolutionary searchers on the unit cube: regularized evolution, and CMA-ES / OpenAI-ES.

* ``regularized_evolution``: Real, Aggarwal, Huang & Le, "Regularized Evolution for Image
  Classifier Architecture Search", AAAI 2019. Tournament selection, one- or few-coordinate
  mutation, and aging: every new member replaces the *oldest* one. Written in ``jnp``.
* ``cma_es``: Hansen & Ostermeier, "Completely Derandomized Self-Adaptation in Evolution
  Strategies", Evol. Comput. 2001; Hansen, "The CMA Evolution Strategy: A Tutorial",
  arXiv:1604.00772.
* ``open_es``: Salimans, Ho, Chen, Sidor & Sutskever, "Evolution Strategies as a Scalable
  Alternative to Reinforcement Learning", arXiv:1703.03864, 2017.

The two ES are evosax's (Lange, "evosax: JAX-based Evolution Strategies", GECCO 2023) behind our
``Searcher`` protocol. evosax searches ``R^d``. CMA-ES keeps to the cube by resampling: a member
drawn outside it is drawn again from the same distribution (up to ``10 d`` times, then clipped),
as the ``cmaes`` library behind Optuna's ``CmaEsSampler`` does, and the strategy learns from the
in-cube points. OpenAI-ES (and CMA-ES with ``bounds="reflect"``) maps a raw sample ``x`` to the
cube by reflection at the faces, ``u = 1 - |(x mod 2) - 1|`` (continuous, no plateaus outside
the cube as clipping would create, and the identity inside it) and is updated with the raw
``x``. Either way a told ``u`` is matched to the points handed out to find its member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt._src.searchers import _check_dim
from metaopt._src.tpe import _check_float, _check_int, history_init, history_tell
from metaopt._src.types import COMPLETE, Searcher

_MATCH_TOL = 1e-6
_BOUNDS = ("resample", "reflect")
_STARTS = ("centre", "uniform", "best")
_SAMPLINGS = ("gaussian", "orthogonal", "mirrored")


def reflect(x: jax.Array) -> jax.Array:
  """Maps ``R^d`` onto ``[0, 1]^d`` by reflection at the faces (identity inside the cube)."""
  return 1.0 - jnp.abs(jnp.mod(x, 2.0) - 1.0)


def _structured_normal(key: jax.Array, n: int, dim: int, sampling: str) -> jax.Array:
  """``n`` rows, each marginally ``N(0, I_dim)``. ``"orthogonal"``: blocks of ``dim`` mutually
  orthogonal rows (Haar-random directions, independent chi-distributed lengths; Wang, Emmerich
  & Bäck, "Mirrored Orthogonal Sampling with Pairwise Selection in Evolution Strategies", SAC
  2014). ``"mirrored"``: pairs ``z, -z``. ``"gaussian"``: independent rows."""
  if sampling == "gaussian":
    return jax.random.normal(key, (n, dim))
  if sampling == "mirrored":
    z = jax.random.normal(key, (-(-n // 2), dim))
    return jnp.concatenate([z, -z], axis=0)[:n]
  k_dir, k_len = jax.random.split(key)
  blocks = -(-n // dim)
  g = jax.random.normal(k_dir, (blocks, dim, dim))
  q, r = jnp.linalg.qr(g)
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]  # Haar: fix QR's signs
  dirs = jnp.swapaxes(q, -1, -2).reshape(blocks * dim, dim)[:n]  # rows: orthonormal per block
  lens = jnp.linalg.norm(jax.random.normal(k_len, (n, dim)), axis=-1)  # chi_dim
  return dirs * lens[:, None]


def _cma_class(sampling: str):
  """evosax's ``CMA_ES`` whose ``ask`` draws its standard-normal rows by ``sampling``."""
  from evosax.algorithms import CMA_ES
  from evosax.algorithms.distribution_based.cma_es import eigen_decomposition

  if sampling == "gaussian":
    return CMA_ES

  class _CMA(CMA_ES):
    def _ask(self, key, state, params):
      C, B, D = eigen_decomposition(state.C)
      z = _structured_normal(key, self.population_size, self.num_dims, sampling)
      z = (z @ jnp.diag(D).T) @ B.T
      return state.mean + state.std * z, state.replace(C=C, B=B, D=D)

  return _CMA


def _check_levels(levels: Sequence[int] | None, dim: int) -> np.ndarray:
  if levels is None:
    return np.zeros(dim, np.int32)
  lv = list(levels)
  if len(lv) != dim or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
                           for v in lv):
    raise ValueError(f"levels={lv!r}: must be {dim} integers >= 0 (0 = continuous, k = a "
                     f"categorical index coordinate with k choices)")
  return np.asarray(lv, np.int32)


def regularized_evolution(dim: int, population_size: int = 32, tournament_size: int = 8,
                          mutation_std: float = 0.1, n_mutations: int = 1,
                          levels: Sequence[int] | None = None) -> Searcher:
  """Regularized (aging) evolution over ``[0, 1]^dim``.

  Until ``population_size`` trials are complete, proposals are uniform random (the initial
  population). Then each child copies the best of ``tournament_size`` members drawn without
  replacement and mutates ``n_mutations`` distinct coordinates: a continuous coordinate moves
  by ``N(0, mutation_std^2)`` reflected into ``[0, 1]``; a categorical index coordinate
  (``levels[j] = k > 0``, decoded as ``floor(u * k)`` like ``metaopt.spaces.Choice``) jumps to the
  midpoint of another of its ``k`` choices. Told complete results join the population,
  replacing the oldest member; failed, pruned and infeasible trials are ignored. A batch's
  children all come from the population as it was at ``ask``.

  Args:
    dim: dimension of the unit cube.
    population_size: members alive at once.
    tournament_size: members sampled per tournament.
    mutation_std: step of a continuous mutation.
    n_mutations: coordinates changed per child.
    levels: per coordinate, 0 for continuous or the number of choices of a categorical.

  Returns:
    A :class:`Searcher`; ``state["x"], state["y"]`` are the population (a ring buffer).

  Examples:
    >>> s = regularized_evolution(3, population_size=8, tournament_size=3)
    >>> state = s.init(jax.random.key(0))
    >>> state, u = s.ask(state, jax.random.key(1), 8)
    >>> state = s.tell(state, u, jnp.sum(u, axis=1), jnp.zeros(8, jnp.int32))
    >>> state, children = s.ask(state, jax.random.key(2), 4)  # mutated tournament winners
  """
  _check_dim(dim)
  _check_int("population_size", population_size, 2)
  _check_int("tournament_size", tournament_size, 1)
  if tournament_size > population_size:
    raise ValueError(f"tournament_size={tournament_size}: must be <= population_size="
                     f"{population_size}")
  _check_float("mutation_std", mutation_std, 0.0, float("inf"))
  _check_int("n_mutations", n_mutations, 1)
  if n_mutations > dim:
    raise ValueError(f"n_mutations={n_mutations}: must be <= dim={dim}")
  lv_host = _check_levels(levels, dim)  # placed from the host: eager jnp ops would compile
  is_cat = jax.device_put(lv_host > 0)
  k_safe = jax.device_put(np.maximum(lv_host, 1))

  def init(key):
    del key
    return history_init(population_size, dim)

  def child(state, key):
    k_t, k_c, k_g, k_l = jax.random.split(key, 4)
    idx = jax.random.choice(k_t, population_size, (tournament_size,), replace=False)
    parent = state["x"][idx[jnp.argmin(state["y"][idx])]]
    coords = jax.random.choice(k_c, dim, (n_mutations,), replace=False)
    mask = jnp.zeros(dim, bool).at[coords].set(True)
    cont = reflect(parent + mutation_std * jax.random.normal(k_g, (dim,)))
    cur = jnp.clip(jnp.floor(parent * k_safe), 0, k_safe - 1).astype(jnp.int32)
    jump = jax.random.randint(k_l, (dim,), 1, jnp.maximum(k_safe, 2))
    new_level = jnp.where(k_safe > 1, (cur + jump) % k_safe, cur)
    cat = (new_level + 0.5) / k_safe
    return jnp.where(mask, jnp.where(is_cat, cat, cont), parent)

  def ask(state, key, n):
    k_rand, k_child = jax.random.split(key)
    full = state["count"] >= population_size
    children = jax.vmap(lambda k: child(state, k))(jax.random.split(k_child, n))
    u = jnp.where(full, children, jax.random.uniform(k_rand, (n, dim)))
    return state, u

  def tell(state, u, y, status):
    return history_tell(state, u, y, status)

  return Searcher(init, ask, tell)


def _resample(strategy, params, key: jax.Array, es, n_draws: int):
  """One generation of ``strategy``: each member redrawn (up to ``n_draws`` draws) until it
  falls inside the cube, clipped if it never does; and the strategy's state after the ask."""
  xs, es_k = jax.vmap(lambda k: strategy.ask(k, es, params))(jax.random.split(key, n_draws))
  inside = jnp.all((xs >= 0.0) & (xs <= 1.0), axis=-1)  # [draws, popsize]
  first = jnp.argmax(inside, axis=0)  # first draw inside the cube (0 if none: clipped)
  x = jnp.clip(xs[first, jnp.arange(strategy.population_size)], 0.0, 1.0)
  return x, jax.tree_util.tree_map(lambda a: a[0], es_k)


def _claim_members(u: jax.Array, gen_x: jax.Array, open_: jax.Array) -> jax.Array:
  """The generation row each told point ``u`` fills: the nearest open member within
  ``_MATCH_TOL``, or ``len(gen_x)`` (dropped) if none."""
  size = gen_x.shape[0]
  dist = jnp.max(jnp.abs(jnp.asarray(u)[:, None, :] - gen_x[None]), axis=-1)

  def claim(open_, d):
    d = jnp.where(open_ & (d < _MATCH_TOL), d, jnp.inf)
    j = jnp.argmin(d)
    hit = jnp.isfinite(d[j])
    return open_ & ~(hit & (jnp.arange(size) == j)), jnp.where(hit, j, size)

  return jax.lax.scan(claim, open_, dist)[1]


def _finite_strategy(es) -> jax.Array:
  ok = jnp.all(jnp.isfinite(es.mean))
  for name in ("std", "C"):
    if hasattr(es, name):
      ok &= jnp.all(jnp.isfinite(jnp.asarray(getattr(es, name))))
  return ok


def _evosax_searcher(strategy, params, dim: int, mean0: jax.Array,
                     bounds: str = "reflect", restart_tol: float = 0.0,
                     start: str = "centre") -> Searcher:
  """Wraps an evosax distribution-based strategy as a :class:`Searcher` on the cube.

  ``bounds="reflect"`` maps raw samples into the cube by :func:`reflect` and tells the strategy
  the raw samples; ``bounds="resample"`` redraws each member (up to ``10 * dim`` draws from
  the same distribution) until it falls inside the cube, clips the ones that never do, and
  tells the strategy those in-cube points (as the ``cmaes`` library and Optuna do).
  ``start="uniform"`` / ``"best"``: the first generation is uniform on the cube and updates
  nothing (``"uniform"``) or only moves the mean to its best complete point (``"best"``).
  """
  popsize = strategy.population_size
  startup = start != "centre"
  n_draws = 10 * dim

  def sample(key, es):
    if bounds == "reflect":
      return strategy.ask(key, es, params)
    return _resample(strategy, params, key, es, n_draws)

  to_cube = reflect if bounds == "reflect" else (lambda x: x)

  def init(key):
    es = strategy.init(key, mean0, params)
    # Strong dtypes, as after a tell: otherwise a jitted ask/tell compiles twice.
    es = jax.tree_util.tree_map(lambda a: jnp.array(a, jnp.asarray(a).dtype), es)
    return {"es": es, "gen_x": jnp.zeros((popsize, dim), jnp.float32),
            "gen_y": jnp.full((popsize,), jnp.nan, jnp.float32),
            "told": jnp.zeros((popsize,), bool), "handed": jnp.zeros((), jnp.int32),
            "fresh": jnp.ones((), bool), "generation": jnp.zeros((), jnp.int32),
            "restarts": jnp.zeros((), jnp.int32), "startup": jnp.asarray(startup)}

  def ask(state, key, n):
    k_gen, k_extra = jax.random.split(key)
    fresh = state["fresh"]

    def new_generation():
      x, es = sample(k_gen, state["es"])
      if startup:  # the first generation: uniform on the cube
        u = jax.random.uniform(jax.random.fold_in(k_gen, 1), x.shape, x.dtype)
        x = jnp.where(state["startup"], u, x)
      return es, x

    es, gen_x = jax.lax.cond(fresh, new_generation, lambda: (state["es"], state["gen_x"]))
    handed = jnp.where(fresh, 0, state["handed"])
    idx = handed + jnp.arange(n)
    reps = -(-n // popsize)
    extra = jax.vmap(lambda k: sample(k, es)[0])(jax.random.split(k_extra, reps))
    extra = extra.reshape(-1, dim)[:n]
    x = jnp.where((idx < popsize)[:, None], gen_x[jnp.minimum(idx, popsize - 1)], extra)
    return {**state, "es": es, "gen_x": gen_x,
            "gen_y": jnp.where(fresh, jnp.nan, state["gen_y"]),
            "told": state["told"] & ~fresh, "handed": jnp.minimum(handed + n, popsize),
            "fresh": jnp.zeros((), bool)}, to_cube(x)

  def tell(state, u, y, status):
    open_ = (jnp.arange(popsize) < state["handed"]) & ~state["told"] & ~state["fresh"]
    member = _claim_members(u, to_cube(state["gen_x"]), open_)
    # Failed / pruned / infeasible members rank last (NaN fitness in evosax's shaping).
    fit = jnp.where((jnp.asarray(status) == COMPLETE) & jnp.isfinite(y), y, jnp.nan)
    gen_y = state["gen_y"].at[member].set(fit.astype(jnp.float32), mode="drop")
    told = state["told"].at[member].set(True, mode="drop")
    done = jnp.all(told)

    def update():
      es, _ = strategy.tell(jax.random.key(0), state["gen_x"], gen_y, state["es"], params)
      return es

    es = jax.lax.cond(done & ~state["startup"], update, lambda: state["es"])
    if start == "best":  # after the uniform generation: its best complete point is the mean
      j = jnp.argmin(jnp.where(jnp.isnan(gen_y), jnp.inf, gen_y))
      move = done & state["startup"] & jnp.isfinite(gen_y[j])
      es = es.replace(mean=jnp.where(move, state["gen_x"][j].astype(es.mean.dtype), es.mean))
    # A strategy whose update broke (NaN mean or step after the step collapsed) always starts
    # again elsewhere: otherwise every later ask would hand out NaN points.
    restart = done & ~_finite_strategy(es)
    if restart_tol > 0:  # step collapsed or a flat generation: start again elsewhere
      flat = jnp.nanmax(gen_y) - jnp.nanmin(gen_y) <= 1e-12 * jnp.maximum(
          jnp.nanmax(jnp.abs(gen_y)), 1e-12)
      restart |= done & ~state["startup"] & ((jnp.max(jnp.asarray(es.std)) < restart_tol)
                                             | flat)
    k = jax.random.fold_in(jax.random.key(1), state["generation"])
    fresh_es = strategy.init(k, jax.random.uniform(k, (dim,)), params)
    es = jax.tree_util.tree_map(lambda a, b: jnp.where(restart, a, b), fresh_es, es)
    return {**state, "es": es, "gen_y": gen_y, "told": told, "fresh": done,
            "generation": state["generation"] + done.astype(jnp.int32),
            "restarts": state["restarts"] + restart.astype(jnp.int32),
            "startup": state["startup"] & ~done}

  return Searcher(init, ask, tell)


_RESTARTS = ("none", "ipop", "bipop")
_TOL_FUN = 1e-12  # range of the recent generations' values (Hansen's tolfun)
_EPS32 = float(np.finfo(np.float32).eps)
_TOL_X = 1e-11  # sigma * the largest axis of C, in unit-cube lengths (tolx)
_MAX_COND = 1e14  # condition number of C (tolconditioncov)


def _cma_restarts(strategies, params, dim: int, sigma0: float, mode: str,
                  restart_tol: float) -> Searcher:
  """CMA-ES with IPOP / BIPOP restarts (Auger & Hansen 2005; Hansen 2009) on the cube.

  ``strategies[k]`` is evosax's CMA-ES with population ``lam0 * 2**k``; the level in use is part
  of the state and picked with ``lax.switch``, the generation lives in arrays of the largest
  size, masked beyond the current ``lam``. Bounds are handled by resampling as in
  :func:`cma_es`.
  """
  lams = [s.population_size for s in strategies]
  lam0, big, n_levels = lams[0], lams[-1], len(lams)
  n_draws = 10 * dim
  hist_len = 10 + int(math.ceil(30 * dim / lam0))  # tolfun window (generations)
  stall_len = 120 + int(math.ceil(30 * dim / lam0))  # no improvement of the run's best

  def sample_level(k):
    strat, prm, lam = strategies[k], params[k], lams[k]

    def go(key, es):
      x, es = _resample(strat, prm, key, es, n_draws)
      return jnp.concatenate([x, jnp.full((big - lam, dim), 0.5, x.dtype)], axis=0), es
    return go

  samplers = [sample_level(k) for k in range(n_levels)]

  def update_level(k):
    strat, prm, lam = strategies[k], params[k], lams[k]

    def go(gen_x, gen_y, es):
      es, _ = strat.tell(jax.random.key(0), gen_x[:lam], gen_y[:lam], es, prm)
      return es
    return go

  updaters = [update_level(k) for k in range(n_levels)]

  def fresh_es(key, sigma):
    k_m, k_i = jax.random.split(key)
    es = strategies[0].init(k_i, jax.random.uniform(k_m, (dim,)), params[0])
    return es.replace(std=jnp.asarray(sigma, jnp.asarray(es.std).dtype))

  def init(key):
    es = strategies[0].init(key, jnp.full((dim,), 0.5), params[0])
    # Strong dtypes, as after a tell: otherwise a jitted ask/tell compiles twice.
    es = jax.tree_util.tree_map(lambda a: jnp.array(a, jnp.asarray(a).dtype), es)
    i32, f32 = jnp.int32, jnp.float32
    return {"es": es, "gen_x": jnp.zeros((big, dim), f32),
            "gen_y": jnp.full((big,), jnp.nan, f32), "told": jnp.zeros((big,), bool),
            "handed": jnp.zeros((), i32), "fresh": jnp.ones((), bool),
            "generation": jnp.zeros((), i32), "restarts": jnp.zeros((), i32),
            "level": jnp.zeros((), i32), "popsize": jnp.asarray(lam0, i32),
            "large_level": jnp.zeros((), i32), "small": jnp.zeros((), bool),
            "budget_large": jnp.zeros((), i32), "budget_small": jnp.zeros((), i32),
            "hist": jnp.full((hist_len,), jnp.nan, f32), "run_gens": jnp.zeros((), i32),
            "run_best": jnp.asarray(jnp.inf, f32), "stall": jnp.zeros((), i32),
            "best_x": jnp.full((dim,), 0.5, f32), "best_y": jnp.asarray(jnp.inf, f32)}

  def ask(state, key, n):
    k_gen, k_extra = jax.random.split(key)
    fresh, lam = state["fresh"], state["popsize"]

    def new_generation():
      x, es = jax.lax.switch(state["level"], samplers, k_gen, state["es"])
      return es, x

    es, gen_x = jax.lax.cond(fresh, new_generation, lambda: (state["es"], state["gen_x"]))
    handed = jnp.where(fresh, 0, state["handed"])
    idx = handed + jnp.arange(n)
    reps = -(-n // lam0)
    extra = jax.vmap(lambda k: samplers[0](k, es)[0][:lam0])(jax.random.split(k_extra, reps))
    extra = extra.reshape(-1, dim)[:n]
    x = jnp.where((idx < lam)[:, None], gen_x[jnp.minimum(idx, big - 1)], extra)
    return {**state, "es": es, "gen_x": gen_x,
            "gen_y": jnp.where(fresh, jnp.nan, state["gen_y"]),
            "told": state["told"] & ~fresh, "handed": jnp.minimum(handed + n, lam),
            "fresh": jnp.zeros((), bool)}, x

  def tell(state, u, y, status):
    u = jnp.asarray(u)
    lam = state["popsize"]
    open_ = (jnp.arange(big) < state["handed"]) & ~state["told"] & ~state["fresh"]
    member = _claim_members(u, state["gen_x"], open_)
    ok = (jnp.asarray(status) == COMPLETE) & jnp.isfinite(y)
    fit = jnp.where(ok, y, jnp.nan).astype(jnp.float32)
    # The best complete point over all restarts (any told point, matched or extra).
    yb = jnp.where(ok, y, jnp.inf).astype(jnp.float32)
    j = jnp.argmin(yb)
    better = yb[j] < state["best_y"]
    best_y = jnp.where(better, yb[j], state["best_y"])
    best_x = jnp.where(better, u[j].astype(jnp.float32), state["best_x"])
    gen_y = state["gen_y"].at[member].set(fit, mode="drop")
    told = state["told"].at[member].set(True, mode="drop")
    done = jnp.all(told | (jnp.arange(big) >= lam))

    es = jax.lax.cond(done, lambda: jax.lax.switch(state["level"], updaters, state["gen_x"],
                                                   gen_y, state["es"]), lambda: state["es"])
    # Stopping criteria, checked once a generation is complete.
    valid = jnp.arange(big) < lam
    g_min = jnp.nanmin(jnp.where(valid, gen_y, jnp.nan))
    g_max = jnp.nanmax(jnp.where(valid, gen_y, jnp.nan))
    hist = jnp.where(done, jnp.roll(state["hist"], 1).at[0].set(g_min), state["hist"])
    run_gens = state["run_gens"] + done.astype(jnp.int32)
    improved = g_min < state["run_best"]
    run_best = jnp.where(done & improved, g_min, state["run_best"])
    stall = jnp.where(done, jnp.where(improved, 0, state["stall"] + 1), state["stall"])
    h_rng = jnp.nanmax(hist) - jnp.nanmin(hist)
    # 1e-12, or float32's resolution at the values' magnitude when that is coarser.
    f_tol = jnp.maximum(_TOL_FUN, 4 * _EPS32 * jnp.abs(run_best))
    tol_fun = (run_gens >= hist_len) & (jnp.maximum(h_rng, g_max - g_min) < f_tol)
    sd = jnp.asarray(es.std) * jnp.sqrt(jnp.max(jnp.diag(es.C)))
    d2 = jnp.asarray(es.D) ** 2
    cond = jnp.max(d2) / jnp.maximum(jnp.min(d2), 1e-30)
    flat = (g_max - g_min) <= 1e-12 * jnp.maximum(jnp.maximum(jnp.abs(g_max),
                                                              jnp.abs(g_min)), 1e-12)
    broken = ~_finite_strategy(es) | ~jnp.isfinite(sd)
    stop = (tol_fun | (sd < _TOL_X) | (cond > _MAX_COND) | (stall >= stall_len) | flat | broken
            | (jnp.asarray(es.std) < restart_tol))
    restart = done & stop

    # Budget accounting and the next regime (IPOP: always large; BIPOP: the regime that has
    # used fewer evaluations so far, large first).
    small_now = state["small"]
    spent = jnp.where(done, lam, 0)
    b_large = state["budget_large"] + jnp.where(small_now, 0, spent)
    b_small = state["budget_small"] + jnp.where(small_now, spent, 0)
    k_r = jax.random.fold_in(jax.random.key(1), state["generation"])
    k_u, k_es = jax.random.split(k_r)
    if mode == "bipop":
      go_small = (state["restarts"] >= 1) & (b_small < b_large)
    else:
      go_small = jnp.zeros((), bool)
    large_level = jnp.where(restart & ~go_small,
                            jnp.minimum(state["large_level"] + 1, n_levels - 1),
                            state["large_level"])
    # BIPOP's small regime: lam = lam0 * (lam_large / (2 lam0))**(U**2) (rounded down to our
    # power-of-two levels), sigma = sigma0 * 10**(-2 U).
    uu = jax.random.uniform(k_u)
    small_level = jnp.floor(uu ** 2 * jnp.maximum(large_level - 1, 0)).astype(jnp.int32)
    level = jnp.where(restart, jnp.where(go_small, small_level, large_level), state["level"])
    sigma = jnp.where(go_small, sigma0 * 10.0 ** (-2.0 * uu), sigma0)
    new_es = fresh_es(k_es, sigma)
    es = jax.tree_util.tree_map(lambda a, b: jnp.where(restart, a, b), new_es, es)
    lam_of = jnp.asarray(lams, jnp.int32)
    return {**state, "es": es, "gen_y": gen_y, "told": told, "fresh": done,
            "generation": state["generation"] + done.astype(jnp.int32),
            "restarts": state["restarts"] + restart.astype(jnp.int32),
            "level": level, "popsize": lam_of[level], "large_level": large_level,
            "small": jnp.where(restart, go_small, small_now),
            "budget_large": b_large, "budget_small": b_small,
            "hist": jnp.where(restart, jnp.nan, hist),
            "run_gens": jnp.where(restart, 0, run_gens),
            "run_best": jnp.where(restart, jnp.inf, run_best),
            "stall": jnp.where(restart, 0, stall), "best_x": best_x, "best_y": best_y}

  return Searcher(init, ask, tell)


def _check_cma_args(popsize: int, sigma0: float, bounds: str, restart_tol: float,
                    restarts: str, start: str, sampling: str, c_mean: float) -> None:
  _check_int("popsize", popsize, 2)
  _check_float("sigma0", sigma0, 0.0, float("inf"))
  _check_float("c_mean", c_mean, 0.0, float("inf"))
  _check_float("restart_tol", restart_tol, 0.0, float("inf"), lo_open=False)
  if bounds not in _BOUNDS:
    raise ValueError(f"bounds={bounds!r}: must be one of {_BOUNDS}")
  if start not in _STARTS:
    raise ValueError(f"start={start!r}: must be one of {_STARTS}")
  if sampling not in _SAMPLINGS:
    raise ValueError(f"sampling={sampling!r}: must be one of {_SAMPLINGS}")
  if restarts not in _RESTARTS:
    raise ValueError(f"restarts={restarts!r}: must be one of {_RESTARTS}")
  if restarts != "none" and bounds != "resample":
    raise ValueError(f"bounds={bounds!r}: restarts={restarts!r} needs bounds='resample'")
  if restarts != "none" and start != "centre":
    raise ValueError(f"start={start!r}: restarts={restarts!r} needs start='centre'")


def default_sigma0(dim: int) -> float:
  """CMA-ES's default initial step on the unit cube: ``min(1/6, 0.3 / sqrt(dim))``.

  1/6 (Optuna's range / 6) up to ``dim = 3``; from there the first generation's radius
  ``sigma0 sqrt(dim)`` is held at 0.3 (chosen on dev seeds of the BBOB suite, issue 20)."""
  return min(1.0 / 6.0, 0.3 / math.sqrt(dim))


def default_c_mean(dim: int) -> float:
  """CMA-ES's default learning rate of the mean: 1.5 from ``dim = 5`` on, else 1 (Hansen's).

  The mean moves 1.5 times the weighted recombination's step: at the suite's budgets (4-10
  generations of 10 at batch 10) it lowered the final regrets at d = 5 and 10 on dev, diagnostic
  and fresh seeds, but not consistently at d = 2 (issue 20; BENCHMARKS.md, CMA-ES round 6 and
  session 20's cma lane)."""
  return 1.5 if dim >= 5 else 1.0


def _cma_params(strategy, sigma0: float, c_mean: float):
  """The strategy's default parameters with the initial step ``sigma0`` and mean rate ``c_mean``
  (placed from the host: ``jnp.asarray(x, jnp.float32)`` would compile a conversion)."""
  return strategy.default_params.replace(std_init=jax.device_put(np.float32(sigma0)),
                                         c_mean=jax.device_put(np.float32(c_mean)))


def _host_full(dim: int, value: float) -> jax.Array:
  """``jnp.full((dim,), value)`` in the default float dtype, placed from the host (an eager
  ``jnp.full`` / ``jnp.zeros`` compiles a broadcast per shape)."""
  return jax.device_put(np.full(dim, value, jax.dtypes.canonicalize_dtype(np.float64)))


def _cma_with_restarts(CMA_ES: type, dim: int, popsize: int, max_popsize: int | None,  # noqa: N803
                       sigma0: float, restarts: str, restart_tol: float,
                       c_mean: float) -> Searcher:
  """:func:`cma_es` with IPOP/BIPOP restarts: one strategy per population size."""
  if max_popsize is None:
    max_popsize = 16 * popsize
  _check_int("max_popsize", max_popsize, popsize)
  lams = [popsize]
  while lams[-1] * 2 <= max_popsize:
    lams.append(lams[-1] * 2)
  strategies = [CMA_ES(population_size=lam, solution=_host_full(dim, 0.0)) for lam in lams]
  params = [_cma_params(st, sigma0, c_mean) for st in strategies]
  return _cma_restarts(strategies, params, dim, sigma0, restarts, restart_tol)


def cma_es(dim: int, popsize: int | None = None, sigma0: float | None = None,
           bounds: str = "resample", restart_tol: float = 0.0, restarts: str = "none",
           max_popsize: int | None = None, start: str = "centre",
           sampling: str = "gaussian", c_mean: float | None = None) -> Searcher:
  """CMA-ES (evosax ``CMA_ES``) on ``[0, 1]^dim``, started at the centre with step ``sigma0``.

  ``ask(state, key, n)`` hands out the next ``n`` members of the current generation of
  ``popsize``; requests beyond the generation's end are extra samples from the same
  distribution that do not update the strategy (the engine should ask ``popsize`` points per
  round, or a divisor of it). The generation updates the strategy once every member has been
  told; members told with a status other than ``COMPLETE`` (or a non-finite ``y``) rank last.
  ``tell`` must receive the points as ``ask`` returned them (matched to within 1e-6).

  Bounds: by default (``"resample"``) a member sampled outside the cube is redrawn from the
  same distribution, up to ``10 * dim`` times, and clipped if it never lands inside; the
  strategy learns from the in-cube points it handed out (the ``cmaes`` library's and Optuna's
  rule). ``"reflect"`` folds samples into the cube at its faces and updates the strategy with
  the raw samples (the behaviour before; it lets the mean drift outside the cube, and lost
  to resampling on Branin, Rosenbrock-10 and the mixed function over 30 seeds).

  Args:
    dim: dimension of the unit cube.
    popsize: generation size; ``None`` gives CMA-ES's default ``4 + floor(3 ln dim)``.
    sigma0: initial step size, in unit-cube lengths; ``None`` (default):
      :func:`default_sigma0`, ``min(1/6, 0.3 / sqrt(dim))`` (Optuna's range / 6 up to
      ``dim = 3``, smaller above: 0.134 at 5, 0.095 at 10).
    bounds: ``"resample"`` or ``"reflect"``, see above.
    restart_tol: when > 0, restarts: after a generation whose step size ``sigma`` fell below
      ``restart_tol`` or whose values were all equal, the strategy starts again from a
      uniformly random mean with ``sigma0`` (the restart trigger of IPOP/BIPOP-CMA-ES, Auger
      & Hansen 2005, Hansen 2009, without their population growth: shapes stay fixed);
      ``state["restarts"]`` counts them. 0 (default): no restarts.
    restarts: ``"none"`` (default), ``"ipop"`` or ``"bipop"``: restarts with population
      growth. A run stops when a generation is complete and one of Hansen's criteria holds:
      the best values of the last ``10 + ceil(30 dim / popsize)`` generations and the current
      generation's values span less than 1e-12 or ``4 eps |best|`` (float32's ``eps``), whichever
      is larger (tolfun); ``sigma`` times the largest axis
      of ``C`` is below 1e-11 (tolx); the condition number of ``C`` exceeds 1e14; the run's
      best has not improved for ``120 + ceil(30 dim / popsize)`` generations; a generation's
      values are all equal; the state is not finite; or ``sigma < restart_tol``. It then
      starts again from a uniformly random mean. IPOP doubles the population at every restart
      (up to ``max_popsize``) and starts with ``sigma0``. BIPOP (requires ``bounds="resample"``)
      alternates the IPOP regime with local runs of a small population
      ``popsize * 2**floor(U**2 (k - 1))`` (``k`` the current number of doublings, U uniform;
      Hansen's ``lam0 (lam_large / (2 lam0))**(U**2)`` on our power-of-two sizes) and
      ``sigma0 * 10**(-2 U)``; after the first restart, whichever regime has used fewer
      evaluations runs next. Shapes stay static: the generation is an array of
      ``max_popsize`` rows masked beyond the current size ``state["popsize"]``, and
      ``ask(state, key, n)`` keeps handing out ``n`` members a call, so a generation of
      ``2**k popsize`` spans ``2**k`` asks when the engine asks ``popsize`` points per round
      (as it should: a batch dividing ``popsize``). ``state["best_x"], state["best_y"]``
      keep the best complete point over all restarts. Only the resampling bounds rule is
      supported with restarts.
    max_popsize: the largest population of ``"ipop"``/``"bipop"``, rounded down to
      ``popsize * 2**k``; ``None``: ``16 * popsize`` (four doublings). Only with restarts.
    start: the first generation. ``"centre"`` (default): drawn from the strategy, mean at the
      centre of the cube. ``"uniform"``: ``popsize`` uniform points that update nothing, then
      the strategy starts at the centre (what Optuna's ``CmaEsSampler`` does when a batch is
      asked before any trial completes: its ``n_startup_trials=1`` independent samples).
      ``"best"``: ``popsize`` uniform points, then the strategy starts at the best complete
      one with ``sigma0``. Only without restarts.
    sampling: how a generation's standard-normal draws are made, before the strategy's
      ``mean + sigma B D z``: ``"gaussian"`` (default) independent rows; ``"orthogonal"``
      blocks of ``dim`` mutually orthogonal rows with independent chi-distributed lengths (each
      row is still ``N(0, I)``, the generation covers more directions); ``"mirrored"`` pairs
      ``z, -z``. A member redrawn to stay inside the cube takes the next draw's row.
    c_mean: the mean's learning rate (it moves ``c_mean`` times the weighted recombination's
      step); ``None`` (default): :func:`default_c_mean`, 1.5 from ``dim = 5`` on, else 1.

  Returns:
    A :class:`Searcher`; ``state["es"]`` is evosax's state, ``state["generation"]`` counts updates.

  Examples:
    >>> s = cma_es(3, popsize=6)
    >>> state = s.init(jax.random.key(0))
    >>> state, u = s.ask(state, jax.random.key(1), 6)
    >>> state = s.tell(state, u, jnp.sum(u, axis=1), jnp.zeros(6, jnp.int32))
    >>> int(state["generation"])
    1
  """
  _check_dim(dim)
  if popsize is None:
    popsize = 4 + int(math.floor(3 * math.log(dim)))
  if sigma0 is None:
    sigma0 = default_sigma0(dim)
  c_mean = default_c_mean(dim) if c_mean is None else c_mean
  _check_cma_args(popsize, sigma0, bounds, restart_tol, restarts, start, sampling, c_mean)
  CMA_ES = _cma_class(sampling)  # noqa: N806
  if restarts != "none":
    return _cma_with_restarts(CMA_ES, dim, popsize, max_popsize, sigma0, restarts, restart_tol,
                              c_mean)
  if max_popsize is not None:
    raise ValueError(f"max_popsize={max_popsize!r}: only with restarts in ('ipop', 'bipop')")
  strategy = CMA_ES(population_size=popsize, solution=_host_full(dim, 0.0))
  params = _cma_params(strategy, sigma0, c_mean)
  return _evosax_searcher(strategy, params, dim, _host_full(dim, 0.5), bounds, restart_tol,
                          start)


def open_es(dim: int, popsize: int = 16, sigma: float = 0.1,
            learning_rate: float = 0.05) -> Searcher:
  """OpenAI-ES (evosax ``Open_ES``, antithetic sampling, centred ranks, Adam) on the cube.

  Generations, batching and failed trials behave as in :func:`cma_es`.

  Args:
    dim: dimension of the unit cube.
    popsize: generation size (even: antithetic pairs).
    sigma: fixed perturbation std, in unit-cube lengths.
    learning_rate: Adam step on the mean.

  Returns:
    A :class:`Searcher`.
  """
  from evosax.algorithms import Open_ES

  _check_dim(dim)
  _check_int("popsize", popsize, 2)
  if popsize % 2:
    raise ValueError(f"popsize={popsize}: must be even (antithetic pairs)")
  _check_float("sigma", sigma, 0.0, float("inf"))
  _check_float("learning_rate", learning_rate, 0.0, float("inf"))
  strategy = Open_ES(population_size=popsize, solution=_host_full(dim, 0.0),
                     optimizer=optax.adam(learning_rate),
                     std_schedule=optax.constant_schedule(sigma))
  return _evosax_searcher(strategy, strategy.default_params, dim, _host_full(dim, 0.5))
