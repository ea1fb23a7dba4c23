"""Gaussian-process Bayesian optimisation (GP-BO) on the unit cube, written in ``jnp``.

Jones, Schonlau & Welch, "Efficient Global Optimization of Expensive Black-Box Functions",
J. Global Optim. 1998 (expected improvement); Srinivas et al., "Gaussian Process Optimization in
the Bandit Setting", ICML 2010 (UCB); Snoek, Larochelle & Adams, "Practical Bayesian
Optimization of Machine Learning Algorithms", NeurIPS 2012 (Matern-5/2 ARD); Ginsbourger,
Le Riche & Carraro, "Kriging is well-suited to parallelize optimization", 2010 (kriging
believer); Ament et al., "Unexpected Improvements to Expected Improvement", NeurIPS 2023
(log-EI). Priors, the Hamming kernel for categoricals and the incumbent as a start of the
acquisition search follow Optuna's ``GPSampler`` (Optuna 5, ``optuna/_gp``).

Model: zero-mean GP with a Matern-5/2 ARD kernel on warped, standardised ``y`` (``log1p`` of
the distance to the best value in units of the median's, so that a few huge values do not
flatten the surface near the optimum; ``output_warp="gp"`` chooses per ``ask`` between that and
plain ``y`` by GP marginal likelihood with the Jacobian). Categorical coordinates (``levels``)
enter the kernel by the Hamming distance of their choices. Log lengthscales, log signal variance
and log noise variance (relative to the signal) are MAP estimates (priors in
:func:`_log_prior`), fitted
with ``optax.adam`` for a fixed number of steps inside ``ask``, warm-started from the
previous fit. The noise is floored at 1e-6 of the signal variance; where float32 Cholesky
fails at that floor (near-duplicate points; found by a trial factorisation outside the
gradient) the factorisation is redone at 1e-4. The history
is a fixed-capacity buffer whose unused rows are masked out of the kernel matrix (identity
rows, zero targets), so shapes never change. With ``warp=True`` each continuous input goes
through a Kumaraswamy CDF (:func:`kumaraswamy_warp`) before the kernel, its two log
concentrations per coordinate fitted with the other hyperparameters (Snoek et al. 2014).
With ``trust_region=True`` every point of a model ``ask`` (its candidates, perturbations,
exploitation candidates and gradient refinement) stays in a box around the incumbent (TuRBO-1,
Eriksson et al., "Scalable Global Optimization via Local Bayesian Optimization", NeurIPS 2019):
side ``L`` times each continuous coordinate's fitted lengthscale over their geometric mean,
clipped to the cube (:func:`_tr_box`). ``L`` starts at 0.8 and is kept in ``state["tr"]``; each
model ``ask`` is one TuRBO batch (:func:`_tr_update`): ``L`` doubles (at most 1.6) after 3 asks
in a row that found a new best value (by 1e-3 of its magnitude), halves after
``ceil(max(4, dim) / n)`` asks of ``n`` points without one, and goes back to 0.8 below 0.5^7.

Acquisition (log-EI or UCB) is maximised over uniform random candidates plus Gaussian
perturbations of the best observations at four scales (``local_std`` down to
``local_std / 125``); the incumbent and the best candidates are refined by Adam with a
cosine-decayed step on the continuous coordinates, clipped to the cube, and each categorical
coordinate of the winner is then set to its best choice. A batch is chosen point by point
with the kriging believer: each chosen point joins the data as a fantasy observation equal
to its posterior mean; with ``believer_incumbent=True`` the incumbent of the following
points' EI is the best of the observations and the fantasies (otherwise the best observation,
and a believed point whose mean is below it keeps a positive EI at zero variance, so later
points of the batch can pile up next to it). When the batch has two or more points and
``n_exploit`` is not empty, its first points exploit instead (at most all but one point of
the batch): point ``j``
minimises the posterior mean of a local GP fitted (from the global hyperparameters) on the
``n_exploit[j]`` observations nearest the incumbent, with ``y`` re-standardised among them
(default: 24, 12, 48 and 96 neighbours, four local models at different scales). The global
model cannot resolve values closer to the optimum than its noise floor (1e-6 of the signal
variance, needed by float32 Cholesky); re-standardising the neighbourhood puts those small
differences back on the unit scale, so the batch keeps closing in on the incumbent's optimum
while the other points follow log-EI. Exploitation and log-EI points share one scan step (the
local model and its candidates, padded to the global model's shapes, are selected by the
step index), so the acquisition search is compiled once per ``ask``, not once per kind.

Compile time: ``ask(state, key, n)`` holds one copy of the model (the 100-step fit and the
believer scan) per bucket size, in a ``lax.switch`` picked on device, so that a user's ``jit``
of it serves every state; with the static fourth argument ``bucket = ask_static(state)``
(``Searcher.ask_static``, a host function of the concrete state; the engine passes it) it holds
only that bucket's copy (or only the Sobol design, ``bucket = 0``), compiled when the data
first reaches the bucket: the first model ``ask`` compiles one copy instead of three, and the
proposals are those of the switch bit for bit (``tests/test_gp_compile.py``). What does not
depend on the size is computed once outside the copies: every random number of the ask (one
uniform draw; normals by the inverse CDF), the warped targets, the incumbents and the
exploitation models (their nearest observations and fit, on the whole buffer). The
gradient refinement moves all its starts in one batched Adam (the acquisition is pointwise),
not a ``vmap`` over starts.

Under ``jax.vmap`` (several searches at once) the Cholesky factorisations become batched
LAPACK calls; on CPU, jaxlib 0.10's batched ``potrf`` hands its batch to the intra-op thread
pool and waits, and two such calls running at once can deadlock the pool (every thread
waiting, no CPU used). Run each search in its own jitted call (or a ``lax.map`` over them)
on CPU; the tests do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import cho_solve, solve_triangular
from jax.scipy.special import ndtr, ndtri

from metaopt._src.evolution import _check_levels
from metaopt._src.searchers import _check_dim, sobol
from metaopt._src.tpe import _check_float, _check_int, history_init, history_tell
from metaopt._src.types import Searcher

_SQRT5 = math.sqrt(5.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_MIN_NOISE = 1e-6
_SAFE_NOISE = 1e-4
_LOG_NOISE_MIN = math.log(1e-8)
_ACQUISITIONS = ("ei", "ucb")
_LOCAL_SCALES = (1.0, 0.2, 0.04, 0.008)  # multiples of the local perturbation scale
_EXPLOIT_FIT_STEPS = 50  # Adam steps refitting the local model of the exploitation point
_N_TOP = 5  # best observations whose perturbations are acquisition candidates
# Trust region (TuRBO, Eriksson et al. 2019): initial, smallest and largest side, model asks in
# a row with (without) a new best before the side doubles (halves)
_TR_INIT, _TR_MIN, _TR_MAX, _TR_SUCC = 0.8, 0.5**7, 1.6, 3


def _choice(x: jax.Array, levels: np.ndarray) -> jax.Array:
  """Choice index ``floor(u * k)`` of each categorical coordinate (0 where continuous)."""
  k = np.maximum(levels, 1)
  return jnp.clip(jnp.floor(x * k), 0, k - 1)


def snap(x: jax.Array, levels: np.ndarray | None) -> jax.Array:
  """Moves categorical coordinates to the midpoint of their choice; continuous ones stay."""
  if levels is None or not np.any(levels):
    return x
  return jnp.where(levels > 0, (_choice(x, levels) + 0.5) / np.maximum(levels, 1), x)


def _sq_dist(x1: jax.Array, x2: jax.Array, log_ls: jax.Array,
             levels: np.ndarray | None = None) -> jax.Array:
  """Squared scaled distances ``[n1, n2]``: Euclidean, or Hamming on categorical coordinates."""
  sq = jnp.square(x1[:, None, :] - x2[None, :, :])
  if levels is not None and np.any(levels):
    diff = (_choice(x1, levels)[:, None, :] != _choice(x2, levels)[None, :, :])
    sq = jnp.where(levels > 0, diff.astype(sq.dtype), sq)
  return sq @ jnp.exp(-2.0 * log_ls)


def matern52(x1: jax.Array, x2: jax.Array, log_ls: jax.Array, log_s2: jax.Array,
             levels: np.ndarray | None = None) -> jax.Array:
  """Matern-5/2 ARD kernel matrix ``[n1, n2]``, with a gradient that is finite at r = 0.

  Categorical coordinates (``levels[j] = k > 0``, decoded as ``floor(u * k)``) contribute
  the Hamming distance of their choices, scaled by their lengthscale.
  """
  r2 = _sq_dist(x1, x2, log_ls, levels)
  pos = r2 > 1e-12
  r = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
  return jnp.exp(log_s2) * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * jnp.exp(-_SQRT5 * r)


_WARP_EPS = 1e-6  # inputs clipped to [eps, 1 - eps] before warping (finite gradients)
_WARP_LOG_MAX = 2.0  # Kumaraswamy log-concentrations clipped to [-2, 2]
_WARP_PRIOR_STD = 0.75  # log-normal prior on each concentration, centred on the identity


def kumaraswamy_warp(x: jax.Array, theta, levels: np.ndarray | None = None) -> jax.Array:
  """Input warping by the Kumaraswamy CDF ``1 - (1 - x^a)^b`` per continuous coordinate.

  ``a = exp(theta["warp_a"])``, ``b = exp(theta["warp_b"])`` (both 1: the identity) are fitted
  with the other hyperparameters (Snoek et al., "Input Warping for Bayesian Optimization of
  Non-Stationary Functions", ICML 2014; Balandat et al., BoTorch 2020). Without those keys in
  ``theta`` (``gp_bo(warp=False)``), and on categorical coordinates, ``x`` is returned as is.
  """
  if "warp_a" not in theta:
    return x
  xc = jnp.clip(x, _WARP_EPS, 1.0 - _WARP_EPS)
  xa = jnp.exp(jnp.exp(theta["warp_a"]) * jnp.log(xc))
  w = 1.0 - jnp.exp(jnp.exp(theta["warp_b"]) * jnp.log(jnp.maximum(1.0 - xa, _WARP_EPS)))
  if levels is not None and np.any(levels):
    w = jnp.where(levels > 0, x, w)
  return w


def _kernel(theta, x, mask, levels=None):
  """The Gram matrix without noise; masked rows and columns are zero."""
  m = mask.astype(jnp.float32)
  x = kumaraswamy_warp(x, theta, levels)
  return matern52(x, x, theta["log_ls"], theta["log_s2"], levels) * (m[:, None] * m[None, :])


def _gram(theta, x, mask, levels=None, floor=None, kernel=None):
  """:func:`_kernel` (or ``kernel``, its value) plus the noise; 1 on masked diagonals."""
  k = _kernel(theta, x, mask, levels) if kernel is None else kernel
  noise = jnp.exp(theta["log_s2"]) * ((_MIN_NOISE if floor is None else floor)
                                      + jnp.exp(theta["log_noise"]))
  return k + jnp.diag(jnp.where(mask, noise, 1.0))


def _cholesky(theta, x, mask, levels=None):
  """Cholesky factor of the Gram matrix with noise floored at ``_MIN_NOISE`` (1e-6 of the
  signal variance); where float32 loses positive definiteness at that floor (near-duplicate
  points), it is refactored with the floor at ``_SAFE_NOISE`` (1e-4).

  The floor is picked by a trial factorisation outside the gradient, so differentiating
  this (the marginal-likelihood fit) traces one Cholesky, not both branches of a ``cond``:
  the gradient of a ``cond`` of two factorisations cost ~1.5 s of compile per fit. The Gram
  matrix is symmetric bit for bit, so the factorisations skip ``cholesky``'s symmetrisation
  (its kernels and their transposes in the gradient, ~4% of ``ask``'s compile)."""
  k = _kernel(theta, x, mask, levels)  # traced once for both factorisations
  trial = jnp.linalg.cholesky(jax.lax.stop_gradient(_gram(theta, x, mask, kernel=k)),
                              symmetrize_input=False)
  floor = jnp.where(jnp.all(jnp.isfinite(trial)), _MIN_NOISE, _SAFE_NOISE)
  return jnp.linalg.cholesky(_gram(theta, x, mask, floor=floor, kernel=k),
                             symmetrize_input=False)


def _log_prior(theta, dim: int) -> jax.Array:
  """Log prior of the hyperparameters (up to a constant), in the log space they are fitted in.

  Lengthscales: ``-0.1 (l^2 + 1 / l^2)`` per dimension, peaked at ``l = 1`` on the unit cube
  (the shape of Optuna's prior on inverse squared lengthscales). Signal variance: Gamma(2, 1).
  Relative noise variance: log-normal around ``exp(-9) = 1.2e-4`` with log-std 1.5, so a
  deterministic objective is fitted down to the float32-safe floor.
  """
  del dim
  ls2 = jnp.exp(2.0 * theta["log_ls"])
  lp = -jnp.sum(0.1 * ls2 + 0.1 / ls2)
  lp += theta["log_s2"] - jnp.exp(theta["log_s2"])
  lp -= 0.5 * jnp.square((theta["log_noise"] + 9.0) / 1.5)
  if "warp_a" in theta:  # log-normal around the identity warp
    lp -= 0.5 * jnp.sum(jnp.square(theta["warp_a"]) + jnp.square(theta["warp_b"])) / (
        _WARP_PRIOR_STD**2)
  return lp


def _neg_log_marginal(theta, x, yz, mask, dim: int, levels=None) -> jax.Array:
  chol = _cholesky(theta, x, mask, levels)
  alpha = cho_solve((chol, True), yz)
  n = jnp.sum(mask)
  nll = 0.5 * jnp.dot(yz, alpha) + jnp.sum(jnp.log(jnp.diag(chol))) + n * _LOG_SQRT_2PI
  return nll / jnp.maximum(n, 1) - _log_prior(theta, dim) / jnp.maximum(n, 1)


def _clip_theta(theta):
  out = {"log_ls": jnp.clip(theta["log_ls"], math.log(1e-2), math.log(1e2)),
         "log_s2": jnp.clip(theta["log_s2"], -4.0, 4.0),
         "log_noise": jnp.clip(theta["log_noise"], _LOG_NOISE_MIN, 1.0)}
  for k in ("warp_a", "warp_b"):
    if k in theta:
      out[k] = jnp.clip(theta[k], -_WARP_LOG_MAX, _WARP_LOG_MAX)
  return out


def fit_gp(theta, x, yz, mask, steps: int, lr: float, levels=None, fixed_noise: bool = False):
  """MAP hyperparameters by ``steps`` of Adam from ``theta``; non-finite steps are skipped."""
  dim = x.shape[1]
  opt = optax.adam(lr)
  loss_grad = jax.value_and_grad(_neg_log_marginal)

  def step(carry, _):
    theta, opt_state = carry
    loss, g = loss_grad(theta, x, yz, mask, dim, levels)
    if fixed_noise:
      g = {**g, "log_noise": jnp.zeros_like(g["log_noise"])}
    upd, new_opt = opt.update(g, opt_state, theta)
    new = _clip_theta(optax.apply_updates(theta, upd))
    ok = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(new)]))
    theta = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, theta)
    return (theta, new_opt), loss

  (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), None, length=steps)
  return theta


def _posterior(theta, x, yz, mask, levels=None):
  """Returns ``predict(xq) -> (mean, std)`` of the latent function at ``xq[c, d]``."""
  chol = _cholesky(theta, x, mask, levels)
  alpha = cho_solve((chol, True), yz)
  s2 = jnp.exp(theta["log_s2"])

  xw = kumaraswamy_warp(x, theta, levels)

  def predict(xq, with_std=True):  # with_std=False: (mean, None)
    ks = matern52(kumaraswamy_warp(xq, theta, levels), xw, theta["log_ls"], theta["log_s2"],
                  levels) * mask[None, :]
    mean = ks @ alpha
    if not with_std:
      return mean, None
    v = solve_triangular(chol, ks.T, lower=True)
    var = jnp.maximum(s2 - jnp.sum(jnp.square(v), axis=0), 1e-10)
    return mean, jnp.sqrt(var)

  return predict


def _standardize(w: jax.Array, valid: jax.Array, floor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(w - mean) / std`` over the valid entries (0 elsewhere) and that ``std``."""
  n = jnp.maximum(jnp.sum(valid), 1)
  mean = jnp.sum(jnp.where(valid, w, 0.0)) / n
  std = jnp.maximum(jnp.sqrt(jnp.sum(jnp.where(valid, jnp.square(w - mean), 0.0)) / n), floor)
  return jnp.where(valid, (w - mean) / std, 0.0), std


def warp_and_standardize(y: jax.Array, valid: jax.Array, warp: bool | float | str = True,
                         theta=None, x=None, levels=None) -> jax.Array:
  """Monotone output warping, then standardisation, of the valid entries of ``y``.

  ``s = (y - min) / (median - min)`` keeps the scale-free shape near the minimum and
  ``log1p(s)`` compresses large values, so a few huge losses do not flatten the surface where
  the optimum is (compare the log and power transforms of SMAC and HEBO). Invalid rows get 0.
  ``warp=False``: plain standardisation of ``y`` (Optuna's ``GPSampler``). A float ``k > 0``:
  ``log1p(s / k)``, near-linear for ``s << k`` (a quadratic bowl stays a bowl) and logarithmic
  for ``s >> k``; ``True`` is ``k = 1``, and ``k -> inf`` tends to the plain standardisation.
  ``"auto"``: ``log1p`` or plain, whichever gives the valid ``y`` the higher likelihood as
  i.i.d. normal values after the transform, its Jacobian included (Box-Cox's criterion);
  ``"gp"``: the same with the GP of hyperparameters ``theta`` on inputs ``x`` as the model.
  """
  n = jnp.sum(valid)
  plain, std_y = _standardize(y, valid, 1e-12 * jnp.maximum(jnp.abs(
      jnp.sum(jnp.where(valid, y, 0.0)) / jnp.maximum(n, 1)), 1.0))
  if warp is False or (isinstance(warp, np.bool_) and not warp):
    return plain
  lo = jnp.min(jnp.where(valid, y, jnp.inf))
  srt = jnp.sort(jnp.where(valid, y, jnp.inf))
  med = srt[jnp.maximum((n - 1) // 2, 0)]
  scale = jnp.maximum(med - lo, 1e-12 * jnp.maximum(jnp.abs(lo), 1.0))
  k = 1.0 if isinstance(warp, str) else float(warp)
  d = jnp.maximum(jnp.where(valid, y, lo) - lo, 0.0)
  warped, std_w = _standardize(jnp.log1p(d / (scale * k)), valid, 1e-6)
  if not isinstance(warp, str):
    return warped
  # log-likelihood difference (warped - plain); d log1p(d / c) / dy = 1 / (c + d)
  gain = n * (jnp.log(std_y) - jnp.log(std_w)) - jnp.sum(jnp.where(valid, jnp.log(scale + d), 0.0))
  if warp == "gp":  # the Gram matrix does not depend on y: one factor, two quadratic forms
    chol = _cholesky(theta, x, valid, levels)
    quad = lambda z: 0.5 * jnp.dot(z, cho_solve((chol, True), z))  # noqa: E731
    gain = gain + quad(plain) - quad(warped)
  return jnp.where(gain > 0, warped, plain)


def _log_h(z: jax.Array) -> jax.Array:
  """``log(z Phi(z) + phi(z))``, stable for very negative ``z`` (asymptotic expansion)."""
  zc = jnp.maximum(z, -5.0)
  direct = jnp.log(jnp.maximum(zc * ndtr(zc) + jnp.exp(-0.5 * zc**2 - _LOG_SQRT_2PI), 1e-30))
  zn = jnp.minimum(z, -5.0)
  asym = -0.5 * zn**2 - _LOG_SQRT_2PI - 2.0 * jnp.log(-zn) + jnp.log1p(-3.0 / zn**2)
  return jnp.where(z > -5.0, direct, asym)


def _check_n_exploit(n_exploit: int | Sequence[int], n_candidates: int,
                     capacity: int) -> tuple[int, ...]:
  """``n_exploit`` as a tuple; a ``ValueError`` if it is malformed or if ``n_candidates``
  cannot hold a local model's candidates (its neighbours, padded to the global model's)."""
  if isinstance(n_exploit, (int, np.integer)) and not isinstance(n_exploit, bool):
    _check_int("n_exploit", n_exploit, 0)
    n_exploit = [n_exploit] if n_exploit else []
  elif not (isinstance(n_exploit, Sequence) and all(
      isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
      for k in n_exploit)):
    raise ValueError(f"n_exploit={n_exploit!r}: must be an integer >= 0 or a sequence of "
                     "integers >= 1")
  need = min(max(n_exploit, default=0), capacity)
  if n_candidates < need:
    raise ValueError(f"n_candidates={n_candidates}: must be >= min(max(n_exploit), capacity) "
                     f"= {need} (each exploitation model's neighbours are candidates too), "
                     "or lower n_exploit")
  return tuple(int(k) for k in n_exploit)


def _refine(acq, x0: jax.Array, cont: jax.Array, grad_lr: float, grad_steps: int,
            lo: jax.Array | float = 0.0, hi: jax.Array | float = 1.0):
  """``(x, acq(x0), acq(x))`` after Adam on the continuous coordinates of every start
  ``x0[k, dim]`` at once, with a cosine-decayed step: large first moves, then steps down to
  grad_lr / 1000 so the optimum is located to float32 precision. The acquisition is
  pointwise and Adam elementwise, so the gradient of the sum moves each start as its own
  Adam would (one batched solve per step instead of a vmap that copies the Cholesky factor
  per start). The values come from the steps' own forward passes (a last step evaluates
  the result and does not move it): no separate acquisition call to compile for them. The
  points stay in the box ``[lo, hi]`` (the cube, or the trust region)."""
  opt = optax.adam(optax.cosine_decay_schedule(grad_lr, max(grad_steps, 1), 1e-3))

  def step(carry, i):
    x, s = carry
    val, pullback = jax.vjp(acq, x)
    upd, s = opt.update(pullback(-jnp.ones_like(val))[0] * cont, s, x)
    x = jnp.where(i < grad_steps, jnp.clip(optax.apply_updates(x, upd), lo, hi), x)
    return (x, s), val

  (x, _), vals = jax.lax.scan(step, (x0, opt.init(x0)), jnp.arange(grad_steps + 1))
  return x, vals[0], vals[-1]


def _tr_update(tr, y_best, n: int, dim: int):
  """The trust region's state after a model ask of ``n`` points with best value ``y_best``
  so far: the previous ask's best is improved on or not (the first ask only records it)."""
  first = ~jnp.isfinite(tr["best"])
  better = ~first & (y_best < tr["best"] - 1e-3 * jnp.abs(tr["best"]))
  succ = jnp.where(better, tr["succ"] + 1, 0)
  fail = jnp.where(better | first, 0, tr["fail"] + 1)
  grow, shrink = succ >= _TR_SUCC, fail >= math.ceil(max(4, dim) / n)
  length = jnp.where(grow, jnp.minimum(2.0 * tr["length"], _TR_MAX),
                     jnp.where(shrink, 0.5 * tr["length"], tr["length"]))
  length = jnp.where(length < _TR_MIN, _TR_INIT, length)
  return {"length": length.astype(jnp.float32), "succ": jnp.where(grow, 0, succ),
          "fail": jnp.where(shrink, 0, fail),
          "best": jnp.where(jnp.isfinite(y_best), y_best, tr["best"]).astype(jnp.float32)}


def _tr_box(length, centre, log_ls, lv: np.ndarray):
  """``(lo, hi)`` of the trust region: sides ``length`` times the continuous coordinates'
  lengthscales over their geometric mean, around ``centre``, clipped to the cube
  (categorical coordinates keep their whole range)."""
  c = np.asarray(lv == 0)
  rel = log_ls - jnp.sum(jnp.where(c, log_ls, 0.0)) / max(int(c.sum()), 1)
  half = 0.5 * length * jnp.exp(rel)
  lo = jnp.where(c, jnp.clip(centre - half, 0.0, 1.0), 0.0)
  hi = jnp.where(c, jnp.clip(centre + half, 0.0, 1.0), 1.0)
  return lo, hi


def _check_gp_args(dim: int, acquisition: str, warp: bool, believer_incumbent: bool,
                   output_warp: bool | float | str, floats: dict[str, float],
                   trust_region: bool = False, **ints: int) -> None:
  """One ``ValueError`` naming the first bad integer, float or flag argument of
  :func:`gp_bo`."""
  _check_dim(dim)
  for name, v in floats.items():
    _check_float(name, v, 0.0, float("inf"))
  for name, flag in (("warp", warp), ("believer_incumbent", believer_incumbent),
                     ("trust_region", trust_region)):
    if not isinstance(flag, (bool, np.bool_)):
      raise ValueError(f"{name}={flag!r}: must be True or False")
  if not (isinstance(output_warp, (bool, np.bool_)) or output_warp in ("auto", "gp") or (
      isinstance(output_warp, (float, np.floating)) and 0.0 < output_warp < float("inf"))):
    raise ValueError(f"output_warp={output_warp!r}: must be True, False, 'auto', 'gp' or a float "
                     "scale k > 0 (log1p of the distance to the best in units of k medians)")
  if acquisition not in _ACQUISITIONS:
    raise ValueError(f"acquisition={acquisition!r}: must be one of {_ACQUISITIONS}")
  lows = {"n_startup": 0, "capacity": 2, "fit_steps": 0, "n_candidates": 1, "n_local": 0,
          "n_restarts": 1, "grad_steps": 0, "n_diverse": 0}
  for name, low in lows.items():
    _check_int(name, ints[name], low)
  n_restarts = ints["n_restarts"]
  if ints["n_diverse"] > n_restarts - 1:
    raise ValueError(f"n_diverse={ints['n_diverse']}: must be <= n_restarts - 1 = "
                     f"{n_restarts - 1}")
  if n_restarts > ints["n_candidates"] + ints["n_local"] + 1:
    raise ValueError(f"n_restarts={n_restarts}: must be <= n_candidates + n_local + 1")


def _host_uniform(n: int, dim: int) -> np.ndarray:
  """Fixed uniform points (seed 0) in float32, made on the host: nothing compiles."""
  return np.random.default_rng(0).uniform(size=(n, dim)).astype(np.float32)


def gp_bo(dim: int, n_startup: int = 10, acquisition: str = "ei", kappa: float = 2.0,
          capacity: int = 256, fit_steps: int = 100, fit_lr: float = 0.05,
          n_candidates: int = 1024, n_local: int = 256, local_std: float = 0.05,
          n_restarts: int = 8, grad_steps: int = 50, grad_lr: float = 0.02,
          levels: Sequence[int] | None = None, deterministic: bool = False,
          n_exploit: int | Sequence[int] = (24, 12, 48, 96), buckets: bool = True,
          n_diverse: int = 0, warp: bool = False, believer_incumbent: bool = True,
          output_warp: float | str = True, trust_region: bool = False) -> Searcher:
  """GP-BO with a Matern-5/2 ARD kernel, log-EI or UCB, and kriging-believer batches.

  Until ``n_startup`` observations are complete, proposals are scrambled Sobol points. Then
  each ``ask`` fits the GP on the smallest prefix of 64, 128, 256, ... (or ``capacity``)
  rows that holds the data (cost ~ rows^3): ``ask(state, key, n)`` compiles a ``lax.switch``
  branch per size (under ``vmap`` all run); ``ask(state, key, n, s.ask_static(state))``, as
  the engine calls it, only the state's, the same proposals bit for bit (see the module
  docstring). Beyond ``capacity`` observations the oldest are overwritten. In batches of two
  or more, the first points minimise the posterior mean of GPs refitted on the
  ``n_exploit[j]`` observations nearest the incumbent; the others maximise the acquisition.

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
    n_local: candidates perturbed around the best five observations, a quarter each with
      std ``local_std``, ``local_std / 5``, ``/ 25`` and ``/ 125``.
    local_std: largest std of the local perturbations.
    n_restarts: points refined by gradient ascent: the incumbent and the
      ``n_restarts - 1`` best candidates (``n_diverse`` of them chosen per region, below).
    grad_steps: Adam steps of that refinement.
    grad_lr: its initial learning rate (cosine-decayed to ``grad_lr / 1000``).
    levels: per coordinate, 0 for continuous or the number of choices ``k`` of a categorical
      index coordinate (decoded as ``floor(u * k)``, as ``metaopt.spaces.Choice`` does). Categorical
      coordinates get a Hamming kernel, proposals at choice midpoints and an exhaustive
      search over their choices. ``None``: all continuous.
    deterministic: the objective has no noise: the noise variance stays at the floor instead
      of being fitted (Optuna's ``deterministic_objective``).
    n_exploit: neighbourhood sizes of the exploitation points: in batches of two or more,
      point ``j`` (for the first ``min(len(n_exploit), batch - 1)`` points) minimises the mean
      of a local GP on the ``n_exploit[j]`` observations nearest the incumbent. An integer
      ``k > 0`` means ``(k,)``; 0 or ``()``: every point maximises the acquisition.
    buckets: ``False``: fit on all ``capacity`` rows, unused ones masked (one compiled body
      instead of one per size: less to compile, slower asks).
    n_diverse: of the ``n_restarts - 1`` refined candidates, this many are the best candidate
      in each of as many fixed regions of the cube (Voronoi cells of fixed anchor points), so
      the acquisition search also starts away from the leading basin; the others are the
      best candidates overall.
    warp, output_warp: fit a Kumaraswamy CDF per continuous input with the GP (input warping);
      ``log1p``-warp ``y`` before standardising (float ``k``: milder; ``"auto"``, ``"gp"``).
    believer_incumbent: the log-EI incumbent of each batch point is the best of the data and
      the means believed at earlier points (default), or (``False``) the best observation.
    trust_region: search every model ``ask``'s points in a TuRBO trust region (module doc).

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
  _check_gp_args(dim, acquisition, n_startup=n_startup, capacity=capacity,
                 fit_steps=fit_steps, n_candidates=n_candidates, n_local=n_local,
                 n_restarts=n_restarts, grad_steps=grad_steps, n_diverse=n_diverse, warp=warp,
                 believer_incumbent=believer_incumbent, output_warp=output_warp,
                 trust_region=trust_region, floats={
                     "kappa": kappa, "fit_lr": fit_lr, "local_std": local_std, "grad_lr": grad_lr})
  n_exploit = _check_n_exploit(n_exploit, n_candidates, capacity)
  lv = _check_levels(levels, dim)
  lvl, cont = (lv if np.any(lv) else None), jax.device_put((lv == 0).astype(np.float32))
  design = sobol(dim)
  # Buffer prefixes the GP is fitted on, one compiled branch each: 64, 128, 256, ... capacity.
  sizes = (sorted({2**k for k in range(6, 31) if 2**k < capacity} | {capacity}) if buckets
           else [capacity])
  anchors = jax.device_put(_host_uniform(n_diverse, dim))

  def init(key):
    theta = {"log_ls": jnp.full((dim,), math.log(0.5 * math.sqrt(dim)), jnp.float32),
             "log_s2": jnp.zeros((), jnp.float32),
             "log_noise": jnp.full((), _LOG_NOISE_MIN if deterministic else -6.0, jnp.float32)}
    if warp:  # the identity warp to start from
      theta |= {"warp_a": jnp.zeros((dim,), jnp.float32),
                "warp_b": jnp.zeros((dim,), jnp.float32)}
    tr = ({"tr": {"length": jnp.full((), _TR_INIT, jnp.float32),
                  "succ": jnp.zeros((), jnp.int32), "fail": jnp.zeros((), jnp.int32),
                  "best": jnp.full((), jnp.inf, jnp.float32)}} if trust_region else {})
    return {**history_init(capacity, dim), "theta": theta, "design": design.init(key), **tr}

  def choice_search(acq, u):
    """Tries every choice of each categorical coordinate in turn, keeping the best."""
    for j in np.flatnonzero(lv):
      alt = jnp.tile(u, (int(lv[j]), 1)).at[:, j].set((jnp.arange(lv[j]) + 0.5) / lv[j])
      score = acq(alt)
      u = alt[jnp.argmax(jnp.where(jnp.isfinite(score), score, -jnp.inf))]
    return u

  def perturb(parents, z, lo=0.0, hi=1.0):
    """``n_local`` perturbations of ``parents`` (``[n_local, dim]`` or one point) by the
    standard normal ``z[n_local, dim]`` at the scales ``local_std``, ``local_std / 5``, ...,
    clipped to the cube (or the box ``[lo, hi]``)."""
    mult = local_std * jnp.asarray(_LOCAL_SCALES)[jnp.arange(n_local) % len(_LOCAL_SCALES)]
    local = parents + mult[:, None] * z
    return snap(jnp.clip(local, lo, hi), lvl)

  def maximise(acq, cand, centre, cand_ok=True, lo=0.0, hi=1.0):
    """Best of ``centre`` and the best candidates (where ``cand_ok``), each before and after
    Adam refinement (inside the box ``[lo, hi]``)."""
    score = acq(cand)
    score = jnp.where(jnp.isfinite(score) & cand_ok, score, -jnp.inf)
    k = min(n_restarts - 1 - n_diverse, cand.shape[0])
    _, idx = jax.lax.top_k(score, k)
    starts = [centre[None], cand[idx]]
    if n_diverse:  # the best candidate of each region: diverse starting points
      region = jnp.argmin(jnp.sum(jnp.square(cand[:, None] - anchors[None]), -1), axis=1)
      mine = region[None, :] == jnp.arange(n_diverse)[:, None]
      starts.append(cand[jnp.argmax(jnp.where(mine, score[None, :], -jnp.inf), axis=1)])
    starts = jnp.concatenate(starts)
    if grad_steps:
      refined, start_score, refined_score = _refine(acq, starts, cont, grad_lr,
                                                      grad_steps, lo, hi)
      pool, pool_score = (jnp.concatenate([starts, refined]),
                          jnp.concatenate([start_score, refined_score]))
    else:
      pool = starts
      pool_score = acq(pool)
    u = pool[jnp.argmax(jnp.where(jnp.isfinite(pool_score), pool_score, -jnp.inf))]
    return choice_search(acq, u)

  def local_model(theta, x, y, valid, z, k_nn):
    """A GP refitted on the ``k_nn`` (traced) observations nearest the incumbent (in the
    fitted lengthscales), ``y`` re-standardised among them, and its candidates. The model
    masks all but the first ``k_nn`` of the ``max(n_exploit)`` nearest, so one compiled body
    serves every size; all of them are candidates."""
    inc = jnp.argmin(jnp.where(valid, y, jnp.inf))
    xw = kumaraswamy_warp(x, theta, lvl)
    d2 = jnp.where(valid, _sq_dist(xw, xw[inc][None], theta["log_ls"], lvl)[:, 0], jnp.inf)
    neg_d2, nn = jax.lax.top_k(-d2, min(max(n_exploit), x.shape[0]))
    ml = jnp.isfinite(neg_d2) & (jnp.arange(nn.shape[0]) < k_nn)
    xl = x[nn]
    yl = warp_and_standardize(y[nn], ml, output_warp, theta, xl, lvl)
    theta_l = fit_gp(theta, xl, yl, ml, _EXPLOIT_FIT_STEPS, fit_lr, lvl, deterministic)
    cand = jnp.concatenate([perturb(snap(x[inc], lvl), z), snap(xl, lvl)])
    return theta_l, xl, yl, ml, cand

  def pad_rows(a, rows, fill=0):
    return jnp.concatenate([a, jnp.full((rows - a.shape[0], *a.shape[1:]), fill, a.dtype)])

  def draws(key, n):
    """Every random number one ``ask`` of ``n`` points uses, drawn once outside the model's
    bucketed copies (one uniform draw: each random-number call site costs ~0.3 s of XLA
    compile, and each copy would compile its own): per point the uniform candidates, the
    parents' ranks and the perturbations; per exploitation model its perturbations."""
    m = min(len(n_exploit), n - 1)
    sizes_ = {"cand": (n, n_candidates, dim), "parent": (n, n_local),
              "z": (n, n_local, dim), "z_l": (m, n_local, dim)}
    total = sum(math.prod(v) for v in sizes_.values())
    flat = jax.random.uniform(key, (total,), minval=1e-7, maxval=1.0 - 1e-7)
    n_unif = math.prod(sizes_["cand"]) + math.prod(sizes_["parent"])
    flat = jnp.concatenate([flat[:n_unif], ndtri(flat[n_unif:])])  # one inverse CDF to compile
    out, at = {}, 0
    for name, shape in sizes_.items():
      out[name] = flat[at:at + math.prod(shape)].reshape(shape)
      at += math.prod(shape)
    return out

  def fit_global(size, state, rnd):
    """MAP hyperparameters of the GP on the first ``size`` buffer rows."""
    return fit_gp(state["theta"], state["x"][:size], rnd["yz"][:size], state["valid"][:size],
                  fit_steps, fit_lr, lvl, deterministic)

  def local_models(theta, state, rnd, m):
    """The ``m`` exploitation models, built once on the whole buffer (the rows past the data
    are invalid, so the nearest observations are the same in every bucket): one compiled
    copy of their fit instead of one per bucket."""
    return jax.lax.map(
        lambda a: local_model(theta, state["x"], state["y"], state["valid"], a[0], a[1]),
        (rnd["z_l"], jnp.asarray(n_exploit[:m])))

  def model_ask(size, state, rnd, n):
    """Proposes a kriging-believer batch from the GP on the first ``size`` buffer rows
    (hyperparameters ``rnd["theta"]``, exploitation models ``rnd["local"]``).

    Exploitation and log-EI points go through one scan (one compiled acquisition search):
    step ``i < m`` maximises minus the mean of local model ``i``, the others the acquisition
    of the global model with the believed points; every chosen point then joins the global
    data as a fantasy observation (and, with ``believer_incumbent``, lowers the EI's
    incumbent if its mean is below it)."""
    x, valid = state["x"][:size], state["valid"][:size]
    n_obs, best, top, yz = rnd["n_obs"], rnd["best"], rnd["top"], rnd["yz"][:size]
    theta = rnd["theta"]
    rows = size + n
    n_cand = n_candidates + n_local
    lo, hi = (rnd["tr_lo"], rnd["tr_hi"]) if trust_region else (0.0, 1.0)
    m = min(len(n_exploit), n - 1)  # exploitation points; at least one point follows log-EI
    if m:
      # the buffer's nearest rows, valid ones first: the first min(K, size) are this bucket's
      k = min(max(n_exploit), size)
      theta_l, xl, yl, ml, cand_l = rnd["local"]
      xl, yl, ml, cand_l = xl[:, :k], yl[:, :k], ml[:, :k], cand_l[:, :n_local + k]
      # padded to the global model's rows and candidates (masked rows; repeats of the centre)
      xl = jax.vmap(lambda a: pad_rows(a, rows))(xl)
      yl = jax.vmap(lambda a: pad_rows(a, rows))(yl)
      ml = jax.vmap(lambda a: pad_rows(a, rows, False))(ml)
      n_pad = n_cand - cand_l.shape[1]
      cand_l = jnp.concatenate([cand_l, jnp.broadcast_to(top[0], (m, n_pad, dim))], axis=1)
      if trust_region:
        cand_l = snap(jnp.clip(cand_l, lo, hi), lvl)
      ok_l = jnp.arange(n_cand) < n_cand - n_pad
      pick = lambda a, i: a[jnp.minimum(i, m - 1)]  # noqa: E731

    def propose(carry, xs):
      x_all, yz_all, m_all, best = carry
      i, r = xs
      cand = snap(lo + r["cand"] * (hi - lo) if trust_region else r["cand"], lvl)
      if n_local:  # perturbations of the best observations
        rank = jnp.floor(r["parent"] * jnp.minimum(n_obs, _N_TOP)).astype(jnp.int32)
        cand = jnp.concatenate([cand, perturb(top[rank], r["z"], lo, hi)])
      model = (theta, x_all, yz_all, m_all)
      glob = _posterior(*model, lvl)
      if m:
        local = i < m
        sel = lambda a, b: jnp.where(local, a, b)  # noqa: E731
        model = jax.tree_util.tree_map(
            sel, (jax.tree_util.tree_map(lambda a: pick(a, i), theta_l), pick(xl, i),
                  pick(yl, i), pick(ml, i)), model)
        cand = sel(pick(cand_l, i), cand)
        cand_ok = ~local | ok_l
        predict = _posterior(*model, lvl)
      else:
        local, predict, cand_ok = False, glob, True

      def acq(xq):
        mean, std = predict(xq)
        if acquisition == "ei":
          score = _log_h((best - mean) / std) + jnp.log(std)
        else:
          score = -mean + kappa * std
        return jnp.where(local, -mean, score) if m else score

      u = maximise(acq, cand, top[0], cand_ok, lo, hi)  # the incumbent always starts a search
      fantasy, _ = glob(u[None], with_std=False)  # joins the global data at its posterior mean
      carry = (x_all.at[size + i].set(u), yz_all.at[size + i].set(fantasy[0]),
               m_all.at[size + i].set(True),
               jnp.minimum(best, fantasy[0]) if believer_incumbent else best)
      return carry, u

    carry = (pad_rows(x, rows), pad_rows(yz, rows), pad_rows(valid, rows, False), best)
    per_point = {k: rnd[k] for k in ("cand", "parent", "z")}
    _, u = jax.lax.scan(propose, carry, (jnp.arange(n), per_point))
    return u

  def ask(state, key, n, bucket=None):
    if bucket is not None and (isinstance(bucket, bool) or bucket not in range(len(sizes) + 1)):
      raise ValueError(f"bucket={bucket!r}: must be None or ask_static(state), an int in "
                       f"0..{len(sizes)} (0: the Sobol design; i: the {sizes}[i - 1]-row fit)")
    design_state, u_design = design.ask(state["design"], None, n)
    if bucket == 0:  # before n_startup observations (ask_bucket): the Sobol design
      return {**state, "design": design_state}, u_design
    # Rows 0 .. min(count, capacity)-1 hold the data: fit on the smallest bucket that holds them.
    rows = jnp.minimum(state["count"], capacity)
    startup = jnp.sum(state["valid"]) < n_startup
    branch = jnp.where(startup, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), rows, side="left"))
    # bucket None: every size compiled, the branch picked on device; else only this one
    run = (functools.partial(jax.lax.switch, branch) if bucket is None else
           lambda branches, *a: branches[bucket](*a))
    # what does not depend on the bucket is computed once, outside its copies (the data
    # rows are a prefix of the buffer, so the whole buffer gives the same values)
    valid = state["valid"]
    yz = warp_and_standardize(state["y"], valid, output_warp, state["theta"], state["x"], lvl)
    shared = {**draws(key, n), "n_obs": jnp.sum(valid), "yz": yz,
              "best": jnp.min(jnp.where(valid, yz, jnp.inf)),
              "top": snap(state["x"][jnp.argsort(jnp.where(valid, state["y"], jnp.inf))[:_N_TOP]],
                          lvl)}
    fits = [lambda st, r: st["theta"]] + [functools.partial(fit_global, size) for size in sizes]
    theta = run(fits, state, shared)
    tr = {}
    if trust_region:
      tr = {"tr": _tr_update(state["tr"], jnp.min(jnp.where(valid, state["y"], jnp.inf)), n,
                                dim)}
      if bucket is None:
        tr["tr"] = jax.tree_util.tree_map(lambda a, b: jnp.where(startup, a, b), state["tr"],
                                          tr["tr"])
      shared["tr_lo"], shared["tr_hi"] = _tr_box(tr["tr"]["length"], shared["top"][0],
                                                 theta["log_ls"], lv)
    m = min(len(n_exploit), n - 1)
    if m:
      shapes = jax.eval_shape(lambda: local_models(theta, state, shared, m))
      zeros = lambda: jax.tree_util.tree_map(  # noqa: E731
          lambda a: jnp.zeros(a.shape, a.dtype), shapes)
      local = lambda: local_models(theta, state, shared, m)  # noqa: E731
      shared["local"] = jax.lax.cond(startup, zeros, local) if bucket is None else local()
    shared["theta"] = theta
    branches = [lambda st, r: u_design]
    branches += [functools.partial(model_ask, size, n=n) for size in sizes]
    u = run(branches, state, shared)
    if bucket is None:
      design_state = jax.tree_util.tree_map(lambda a, b: jnp.where(startup, a, b),
                                            design_state, state["design"])
    else:
      design_state = state["design"]
    return {**state, "theta": theta, "design": design_state, **tr}, u

  def ask_bucket(state):
    """``ask``'s static ``bucket`` for a concrete ``state`` (host integers): 0 before
    ``n_startup`` observations, else 1 + the index of the smallest size holding the data."""
    if int(np.sum(np.asarray(state["valid"]))) < n_startup:
      return 0
    rows = min(int(state["count"]), capacity)
    return 1 + int(np.searchsorted(np.asarray(sizes), rows, side="left"))

  def startup_ask(state, key, n):
    del key
    design_state, u = design.ask(state["design"], None, n)
    return {**state, "design": design_state}, u, jnp.sum(state["valid"]) < n_startup

  def tell(state, u, y, status):
    hist = history_tell({k: state[k] for k in ("x", "y", "valid", "count")}, u, y, status)
    return {**state, **hist}

  return Searcher(init, ask, tell, startup_ask=startup_ask, ask_static=ask_bucket)
