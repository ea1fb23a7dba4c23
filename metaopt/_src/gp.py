"""Gaussian-process Bayesian optimisation (GP-BO) on the unit cube, written in ``jnp``.

Jones, Schonlau & Welch, "Efficient Global Optimization of Expensive Black-Box Functions",
J. Global Optim. 1998 (expected improvement); Srinivas et al., "Gaussian Process Optimization in
the Bandit Setting", ICML 2010 (UCB); Snoek, Larochelle & Adams, "Practical Bayesian
Optimization of Machine Learning Algorithms", NeurIPS 2012 (Matern-5/2 ARD); Ginsbourger,
Le Riche & Carraro, "Kriging is well-suited to parallelize optimization", 2010 (kriging
believer); Ament et al., "Unexpected Improvements to Expected Improvement", NeurIPS 2023
(log-EI); Hvarfner, Hellsten & Nardi, "Vanilla Bayesian Optimization Performs Great in High
Dimensions", ICML 2024 (dimension-scaled lengthscale prior).

Model: zero-mean GP with a Matern-5/2 ARD kernel on warped, standardised ``y`` (``log1p`` of
the distance to the best value in units of the median's, so that a few huge values do not
flatten the surface near the optimum). Log lengthscales, log signal variance and log noise
variance (relative to the signal, floored at 1e-4 so float32 Cholesky stays safe) are MAP
estimates under log-normal priors, fitted with ``optax.adam`` for a fixed number of steps inside
``ask``, warm-started from the previous fit. The history is a fixed-capacity buffer whose
unused rows are masked out of the kernel matrix (identity rows, zero targets), so shapes never
change.

Acquisition (log-EI or UCB) is maximised over uniform random candidates plus Gaussian
perturbations of the best observations, then refined by a few ``adam`` steps from the best
candidates, clipped to the cube. A batch is chosen point by point with the kriging believer:
each chosen point joins the data as a fantasy observation equal to its posterior mean.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from jax.scipy.linalg import cho_solve, solve_triangular
from jax.scipy.special import ndtr

from metaopt._src.searchers import _check_dim, sobol
from metaopt._src.tpe import _check_float, _check_int, history_init, history_tell
from metaopt._src.types import Searcher

_SQRT5 = math.sqrt(5.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_MIN_NOISE = 1e-4
_ACQUISITIONS = ("ei", "ucb")


def _sq_dist(x1: jax.Array, x2: jax.Array, log_ls: jax.Array) -> jax.Array:
  a, b = x1 / jnp.exp(log_ls), x2 / jnp.exp(log_ls)
  return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def matern52(x1: jax.Array, x2: jax.Array, log_ls: jax.Array, log_s2: jax.Array) -> jax.Array:
  """Matern-5/2 ARD kernel matrix ``[n1, n2]``, with a gradient that is finite at r = 0."""
  r2 = _sq_dist(x1, x2, log_ls)
  pos = r2 > 1e-12
  r = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
  return jnp.exp(log_s2) * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * jnp.exp(-_SQRT5 * r)


def _gram(theta, x, mask):
  m = mask.astype(jnp.float32)
  k = matern52(x, x, theta["log_ls"], theta["log_s2"]) * (m[:, None] * m[None, :])
  # Noise relative to the signal variance, floored, keeps cond(K) <~ n / _MIN_NOISE: float32-safe.
  noise = jnp.exp(theta["log_s2"]) * (_MIN_NOISE + jnp.exp(theta["log_noise"]))
  return k + jnp.diag(jnp.where(mask, noise, 1.0))


def _log_prior(theta, dim: int) -> jax.Array:
  mu_ls = math.sqrt(2.0) + 0.5 * math.log(dim)
  lp = -0.5 * jnp.sum(jnp.square(theta["log_ls"] - mu_ls)) / 3.0
  lp -= 0.5 * jnp.square(theta["log_s2"])
  lp -= 0.5 * jnp.square(theta["log_noise"] + 4.0)
  return lp


def _neg_log_marginal(theta, x, yz, mask, dim: int) -> jax.Array:
  chol = jnp.linalg.cholesky(_gram(theta, x, mask))
  alpha = cho_solve((chol, True), yz)
  n = jnp.sum(mask)
  nll = 0.5 * jnp.dot(yz, alpha) + jnp.sum(jnp.log(jnp.diag(chol))) + n * _LOG_SQRT_2PI
  return nll / jnp.maximum(n, 1) - _log_prior(theta, dim) / jnp.maximum(n, 1)


def _clip_theta(theta):
  return {"log_ls": jnp.clip(theta["log_ls"], math.log(1e-2), math.log(1e2)),
          "log_s2": jnp.clip(theta["log_s2"], -4.0, 4.0),
          "log_noise": jnp.clip(theta["log_noise"], math.log(1e-8), 1.0)}


def fit_gp(theta, x, yz, mask, steps: int, lr: float):
  """MAP hyperparameters by ``steps`` of Adam from ``theta``; non-finite steps are skipped."""
  dim = x.shape[1]
  opt = optax.adam(lr)
  loss_grad = jax.value_and_grad(_neg_log_marginal)

  def step(carry, _):
    theta, opt_state = carry
    loss, g = loss_grad(theta, x, yz, mask, dim)
    upd, new_opt = opt.update(g, opt_state, theta)
    new = _clip_theta(optax.apply_updates(theta, upd))
    ok = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(new)]))
    theta = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, theta)
    return (theta, new_opt), loss

  (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), None, length=steps)
  return theta


def _posterior(theta, x, yz, mask):
  """Returns ``predict(xq) -> (mean, std)`` of the latent function at ``xq[c, d]``."""
  chol = jnp.linalg.cholesky(_gram(theta, x, mask))
  alpha = cho_solve((chol, True), yz)
  s2 = jnp.exp(theta["log_s2"])

  def predict(xq):
    ks = matern52(xq, x, theta["log_ls"], theta["log_s2"]) * mask[None, :]
    mean = ks @ alpha
    v = solve_triangular(chol, ks.T, lower=True)
    var = jnp.maximum(s2 - jnp.sum(jnp.square(v), axis=0), 1e-10)
    return mean, jnp.sqrt(var)

  return predict


def warp_and_standardize(y: jax.Array, valid: jax.Array) -> jax.Array:
  """Monotone output warping, then standardisation, of the valid entries of ``y``.

  ``s = (y - min) / (median - min)`` keeps the scale-free shape near the minimum and
  ``log1p(s)`` compresses large values, so a few huge losses do not flatten the surface where
  the optimum is (compare the log and power transforms of SMAC and HEBO). Invalid rows get 0.
  """
  n = jnp.sum(valid)
  lo = jnp.min(jnp.where(valid, y, jnp.inf))
  srt = jnp.sort(jnp.where(valid, y, jnp.inf))
  med = srt[jnp.maximum((n - 1) // 2, 0)]
  scale = jnp.maximum(med - lo, 1e-12 * jnp.maximum(jnp.abs(lo), 1.0))
  w = jnp.log1p(jnp.maximum(jnp.where(valid, y, lo) - lo, 0.0) / scale)
  mean = jnp.sum(jnp.where(valid, w, 0.0)) / jnp.maximum(n, 1)
  std = jnp.sqrt(jnp.sum(jnp.where(valid, jnp.square(w - mean), 0.0)) / jnp.maximum(n, 1))
  return jnp.where(valid, (w - mean) / jnp.maximum(std, 1e-6), 0.0)


def _log_h(z: jax.Array) -> jax.Array:
  """``log(z Phi(z) + phi(z))``, stable for very negative ``z`` (asymptotic expansion)."""
  zc = jnp.maximum(z, -5.0)
  direct = jnp.log(jnp.maximum(zc * ndtr(zc) + jnp.exp(-0.5 * zc**2 - _LOG_SQRT_2PI), 1e-30))
  zn = jnp.minimum(z, -5.0)
  asym = -0.5 * zn**2 - _LOG_SQRT_2PI - 2.0 * jnp.log(-zn) + jnp.log1p(-3.0 / zn**2)
  return jnp.where(z > -5.0, direct, asym)


def gp_bo(dim: int, n_startup: int = 10, acquisition: str = "ei", kappa: float = 2.0,
          capacity: int = 256, fit_steps: int = 100, fit_lr: float = 0.05,
          n_candidates: int = 1024, n_local: int = 256, local_std: float = 0.05,
          n_restarts: int = 4, grad_steps: int = 25, grad_lr: float = 0.01) -> Searcher:
  """GP-BO with a Matern-5/2 ARD kernel, log-EI or UCB, and kriging-believer batches.

  Until ``n_startup`` observations are complete, proposals are scrambled Sobol points. Then
  each ``ask`` fits the GP on the smallest buffer prefix of 64, 128, 256, ... (or
  ``capacity``) rows that holds all observations, one compiled branch per size picked by
  ``lax.switch``, so early asks are cheap; the cost grows as rows^3 (a Cholesky per Adam step
  and per batch point). Beyond ``capacity`` observations the oldest are overwritten. Under
  ``vmap`` the switch evaluates every branch: vmap over GP searchers only with small capacity.

  Args:
    dim: dimension of the unit cube.
    n_startup: complete observations before the GP is used.
    acquisition: ``"ei"`` (log expected improvement) or ``"ucb"`` (``-mean + kappa * std`` on
      the minimised, standardised objective).
    kappa: exploration weight of UCB.
    capacity: observations remembered.
    fit_steps: Adam steps of the marginal-likelihood fit per ``ask``.
    fit_lr: Adam learning rate of the fit.
    n_candidates: uniform random acquisition candidates per proposal.
    n_local: candidates perturbed (``local_std``) around the best five observations.
    local_std: std of the local perturbations.
    n_restarts: best candidates refined by gradient ascent.
    grad_steps: Adam steps of that refinement.
    grad_lr: its learning rate.

  Returns:
    A :class:`Searcher`; ``state["theta"]`` holds the fitted GP hyperparameters.

  Examples:
    >>> s = gp_bo(2, n_startup=4, capacity=16)
    >>> state = s.init(jax.random.key(0))
    >>> state, u = s.ask(state, jax.random.key(1), 4)
    >>> state = s.tell(state, u, jnp.sum(u, axis=1), jnp.zeros(4, jnp.int32))
    >>> state, u = s.ask(state, jax.random.key(2), 2)  # fits the GP, then two proposals
    >>> u.shape
    (2, 2)
  """
  _check_dim(dim)
  if acquisition not in _ACQUISITIONS:
    raise ValueError(f"acquisition={acquisition!r}: must be one of {_ACQUISITIONS}")
  _check_int("n_startup", n_startup, 0)
  _check_int("capacity", capacity, 2)
  _check_int("fit_steps", fit_steps, 0)
  _check_int("n_candidates", n_candidates, 1)
  _check_int("n_local", n_local, 0)
  _check_int("n_restarts", n_restarts, 1)
  _check_int("grad_steps", grad_steps, 0)
  if n_restarts > n_candidates + n_local:
    raise ValueError(f"n_restarts={n_restarts}: must be <= n_candidates + n_local")
  for name, v in (("kappa", kappa), ("fit_lr", fit_lr), ("local_std", local_std),
                  ("grad_lr", grad_lr)):
    _check_float(name, v, 0.0, float("inf"))
  design = sobol(dim)
  n_top = 5
  # Buffer prefixes the GP is fitted on, one compiled branch each: 64, 128, 256, ... capacity.
  sizes = sorted({2**k for k in range(6, 31) if 2**k < capacity} | {capacity})

  def init(key):
    theta = {"log_ls": jnp.full((dim,), math.log(0.5 * math.sqrt(dim)), jnp.float32),
             "log_s2": jnp.zeros((), jnp.float32), "log_noise": jnp.full((), -6.0, jnp.float32)}
    return {**history_init(capacity, dim), "theta": theta, "design": design.init(key)}

  def acq_fn(predict, best):
    def acq(xq):
      mean, std = predict(xq)
      if acquisition == "ei":
        return _log_h((best - mean) / std) + jnp.log(std)
      return -mean + kappa * std
    return acq

  def refine(acq, x0):
    opt = optax.adam(grad_lr)
    grad = jax.grad(lambda x: -acq(x[None])[0])

    def step(carry, _):
      x, s = carry
      upd, s = opt.update(grad(x), s, x)
      x = jnp.clip(optax.apply_updates(x, upd), 0.0, 1.0)
      return (x, s), None

    (x, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), None, length=grad_steps)
    return x

  def model_ask(size, state, key, n):
    """Fits the GP on the first ``size`` buffer rows and proposes a kriging-believer batch."""
    x, y, valid = state["x"][:size], state["y"][:size], state["valid"][:size]
    n_obs = jnp.sum(valid)
    yz = warp_and_standardize(y, valid)
    best = jnp.min(jnp.where(valid, yz, jnp.inf))
    theta = fit_gp(state["theta"], x, yz, valid, fit_steps, fit_lr)
    top = x[jnp.argsort(jnp.where(valid, y, jnp.inf))[:n_top]]

    def propose(carry, i):
      x_all, yz_all, m_all = carry
      k_rand, k_loc, k_pick = jax.random.split(jax.random.fold_in(key, i), 3)
      predict = _posterior(theta, x_all, yz_all, m_all)
      acq = acq_fn(predict, best)
      cand = jax.random.uniform(k_rand, (n_candidates, dim))
      if n_local:
        parent = top[jax.random.randint(k_pick, (n_local,), 0, jnp.minimum(n_obs, n_top))]
        local = parent + local_std * jax.random.normal(k_loc, (n_local, dim))
        cand = jnp.concatenate([cand, jnp.clip(local, 0.0, 1.0)])
      score = acq(cand)
      _, idx = jax.lax.top_k(jnp.where(jnp.isfinite(score), score, -jnp.inf), n_restarts)
      starts = cand[idx]
      refined = jax.vmap(lambda x0: refine(acq, x0))(starts) if grad_steps else starts
      pool = jnp.concatenate([starts, refined])
      pool_score = acq(pool)
      u = pool[jnp.argmax(jnp.where(jnp.isfinite(pool_score), pool_score, -jnp.inf))]
      fantasy, _ = predict(u[None])
      x_all = x_all.at[size + i].set(u)
      yz_all = yz_all.at[size + i].set(fantasy[0])
      m_all = m_all.at[size + i].set(True)
      return (x_all, yz_all, m_all), u

    init_c = (jnp.concatenate([x, jnp.zeros((n, dim), jnp.float32)]),
              jnp.concatenate([yz, jnp.zeros(n, jnp.float32)]),
              jnp.concatenate([valid, jnp.zeros(n, bool)]))
    _, u = jax.lax.scan(propose, init_c, jnp.arange(n))
    return theta, u

  def ask(state, key, n):
    design_state, u_design = design.ask(state["design"], None, n)
    # Rows 0 .. min(count, capacity)-1 hold the data: fit on the smallest bucket that holds them.
    rows = jnp.minimum(state["count"], capacity)
    bucket = jnp.searchsorted(jnp.asarray(sizes), rows, side="left")
    startup = jnp.sum(state["valid"]) < n_startup
    branches = [lambda st, k: (st["theta"], u_design)]
    branches += [functools.partial(model_ask, size, n=n) for size in sizes]
    theta, u = jax.lax.switch(jnp.where(startup, 0, 1 + bucket), branches, state, key)
    design_state = jax.tree_util.tree_map(lambda a, b: jnp.where(startup, a, b), design_state,
                                          state["design"])
    return {**state, "theta": theta, "design": design_state}, u

  def tell(state, u, y, status):
    hist = history_tell({k: state[k] for k in ("x", "y", "valid", "count")}, u, y, status)
    return {**state, **hist}

  return Searcher(init, ask, tell)
