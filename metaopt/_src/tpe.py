"""Tree-structured Parzen Estimator (TPE) on the unit cube, written in ``jnp``.

Bergstra, Bardenet, Bengio & Kegl, "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011;
the multivariate variant of Falkner, Klein & Hutter, "BOHB", ICML 2018; defaults as in Optuna's
``TPESampler`` (Akiba et al., KDD 2019; Watanabe, "Tree-Structured Parzen Estimator:
Understanding Its Algorithm Components ...", arXiv:2304.11127, 2023).

Completed observations are split by the ``gamma`` quantile of ``y`` into a good set and a bad
set; each set becomes a Parzen estimator (a mixture of product Gaussian kernels truncated to
``[0, 1]``, one kernel per observation plus a wide prior kernel at the centre; a kernel's width
along each dimension is the larger gap to its neighbours, as in Optuna 5). A proposal is the
candidate, among ``n_candidates`` drawn from the good density ``l``, that maximises
``log l(x) - log g(x)`` (equivalent to maximising expected improvement).

The history is a fixed-capacity ring buffer (``capacity`` rows of ``x``, ``y``), so the state
keeps one shape for ever and ``ask``/``tell`` trace once; once more than ``capacity``
observations are told, the oldest are overwritten. ``status == COMPLETE`` rows with a
finite ``y`` enter it; with ``pruned="rank"`` so do ``PRUNED`` rows with a finite ``y`` (the
value after the last epoch they trained), ranked as Optuna's ``TPESampler`` ranks them
(:func:`split_order`); failed and infeasible trials are ignored.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtr

from metaopt._src import keys
from metaopt._src.searchers import _check_dim
from metaopt._src.types import COMPLETE, PRUNED, Searcher

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _check_int(name: str, v, lo: int) -> None:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")


def _check_float(name: str, v, lo: float, hi: float, lo_open: bool = True) -> None:
  ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
  ok = ok and (lo < v if lo_open else lo <= v) and v <= hi
  if not ok:
    raise ValueError(f"{name}={v!r}: must be a number in {'(' if lo_open else '['}{lo}, {hi}]")


# The ``step`` of a complete row: above every pruned row's epochs, so complete rows rank first.
COMPLETE_STEP = np.iinfo(np.int32).max


def history_init(capacity: int, dim: int, steps: bool = False) -> dict[str, jax.Array]:
  """An empty ring buffer of ``capacity`` observations ``(x[d], y)``; with ``steps`` also
  each row's ``step`` (:data:`COMPLETE_STEP` for a complete trial, the epochs trained for a
  pruned one)."""
  hist = {"x": jnp.zeros((capacity, dim), jnp.float32),
          "y": jnp.zeros((capacity,), jnp.float32),
          "valid": jnp.zeros((capacity,), bool), "count": jnp.zeros((), jnp.int32)}
  if steps:
    hist["step"] = jnp.zeros((capacity,), jnp.int32)
  return hist


def history_tell(hist: dict[str, jax.Array], u: jax.Array, y: jax.Array,
                 status: jax.Array, epochs: jax.Array | None = None) -> dict[str, jax.Array]:
  """Appends the ``COMPLETE`` rows with finite ``y`` of a told batch, overwriting the oldest;
  a history with ``step`` rows also keeps ``PRUNED`` rows with finite ``y``, their step the
  ``epochs`` they trained (0 each when not given).

  A batch larger than the buffer keeps its last ``capacity`` valid rows.
  """
  cap = hist["y"].shape[0]
  y = jnp.asarray(y, jnp.float32)
  status = jnp.asarray(status)
  done = status == COMPLETE
  ok = (done | (status == PRUNED) if "step" in hist else done) & jnp.isfinite(y)
  pos = jnp.cumsum(ok) - 1
  total = jnp.sum(ok, dtype=jnp.int32)
  keep = ok & (pos >= total - cap)
  slots = jnp.where(keep, (hist["count"] + pos) % cap, cap)
  out = {"x": hist["x"].at[slots].set(jnp.asarray(u, jnp.float32), mode="drop"),
         "y": hist["y"].at[slots].set(jnp.where(ok, y, 0.0), mode="drop"),
         "valid": hist["valid"].at[slots].set(True, mode="drop"),
         "count": hist["count"] + total}
  if "step" in hist:
    e = jnp.zeros(y.shape[0], jnp.int32) if epochs is None else jnp.asarray(epochs, jnp.int32)
    out["step"] = hist["step"].at[slots].set(jnp.where(done, COMPLETE_STEP, e), mode="drop")
  return out


def split_order(y: jax.Array, valid: jax.Array, step: jax.Array | None = None) -> jax.Array:
  """History rows in the order of the good/bad split (best first; invalid rows last).

  Without ``step``: by ``y``. With ``step`` (per row; :data:`COMPLETE_STEP` for complete
  rows): Optuna's ``TPESampler`` order (``_split_complete_trials`` then
  ``_split_pruned_trials``): complete rows by ``y``, then pruned rows by the step they
  reached, deeper first, and among equal steps by ``y`` (their value at that step).
  """
  key = jnp.where(valid, y, jnp.inf)
  if step is None:
    return jnp.argsort(key)
  return jnp.lexsort((key, jnp.where(valid, -step.astype(jnp.int32), 1)))


def good_rows(y: jax.Array, valid: jax.Array, n_below: jax.Array,
              step: jax.Array | None = None) -> jax.Array:
  """The good set: the first ``n_below`` valid rows of :func:`split_order` (a bool mask)."""
  cap = y.shape[0]
  order = split_order(y, valid, step)
  rank = jnp.zeros(cap, jnp.int32).at[order].set(jnp.arange(cap, dtype=jnp.int32))
  return valid & (rank < n_below)


def default_gamma(dim: int) -> float:
  """The good-set fraction of :func:`tpe`'s default rule: ``clip(0.5 / dim, 0.1, 0.25)``
  (Optuna's 0.1 from 5 dimensions on, more good points below; chosen on development cases of
  ``benchmarks/blackbox_suite.py``)."""
  return min(0.25, max(0.1, 0.5 / dim))


def default_good_weights(dim: int) -> str:
  """The good density's weighting of :func:`tpe`'s default: ``"ei"`` from 8 dimensions on,
  ``"uniform"`` (Optuna's) below."""
  return "ei" if dim >= 8 else "uniform"


def _n_below(n: jax.Array, gamma: float | None, base: float = 0.1) -> jax.Array:
  nf = n.astype(jnp.float32)
  if gamma is None:  # Optuna's default with base 0.1: min(ceil(0.1 n), 25)
    k = jnp.minimum(jnp.ceil(base * nf), 25.0)
  else:
    k = jnp.ceil(gamma * nf)
  return jnp.clip(k, 1.0, jnp.maximum(nf, 1.0)).astype(jnp.int32)


def _bandwidth(x: jax.Array, w: jax.Array, n: jax.Array, d_eff: int) -> jax.Array:
  """Per-dimension kernel widths ``[d]`` of a weighted point set (``w`` sums to 1).

  Scott's rule ``std_j * n^(-1/(d+4))`` scaled so that a set spread uniformly over ``[0, 1]``
  gets Optuna's ``0.2 n^(-1/(d+4))``, clipped to ``[1 / min(100, n + 2), 1]`` (Optuna's
  "magic clip", which keeps kernels from collapsing onto few points).
  """
  nf = jnp.maximum(n.astype(jnp.float32), 1.0)
  mean = jnp.sum(w[:, None] * x, axis=0)
  std = jnp.sqrt(jnp.sum(w[:, None] * jnp.square(x - mean), axis=0) + 1e-12)
  sigma = 0.2 * (std * math.sqrt(12.0)) * nf ** (-1.0 / (d_eff + 4))
  lo = 1.0 / jnp.minimum(100.0, nf + 2.0)
  return jnp.clip(sigma, lo, 1.0)


def _gap_bandwidth(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-point, per-dimension kernel widths ``[k, d]`` from the gaps to the neighbours.

  Optuna 5's rule: along each dimension a point's width is the larger of the gaps to its left
  and right neighbours among the set's points, with the cube's faces as outer neighbours
  except for the outermost points of a set of two or more (their inner gap), clipped to
  ``[1 / min(100, n + 2), 1]``. Rows outside ``mask`` get width 1 (they carry no weight).
  """
  cap, dim = x.shape
  n = jnp.sum(mask)
  order = jnp.argsort(jnp.where(mask[:, None], x, jnp.inf), axis=0)  # valid rows first
  srt = jnp.take_along_axis(x, order, axis=0)
  i = jnp.arange(cap)[:, None]
  left = jnp.where(i == 0, 0.0, jnp.roll(srt, 1, axis=0))
  right = jnp.where(i >= n - 1, 1.0, jnp.roll(srt, -1, axis=0))
  sig = jnp.maximum(srt - left, right - srt)
  many = n >= 2
  sig = jnp.where((i == 0) & many, srt[1] - srt[0], sig)
  last = jnp.take_along_axis(srt, jnp.full((1, dim), jnp.maximum(n - 1, 0)), axis=0)
  prev = jnp.take_along_axis(srt, jnp.full((1, dim), jnp.maximum(n - 2, 0)), axis=0)
  sig = jnp.where((i == n - 1) & many, last - prev, sig)
  sig = jnp.clip(sig, 1.0 / jnp.minimum(100.0, n + 2.0), 1.0)
  out = jnp.zeros_like(sig).at[order, jnp.arange(dim)[None, :]].set(sig)
  return jnp.where(mask[:, None], out, 1.0)


def _ramp_logw(mask: jax.Array, age: jax.Array, flat: int = 25) -> jax.Array:
  """Log weights ``[k]`` of Optuna's ``default_weights`` over the rows in ``mask`` ordered by
  ``age`` (smaller: older): the newest ``flat`` weigh 1, the older ones ramp linearly from
  ``1/n`` (oldest) towards 1."""
  n = jnp.sum(mask)
  key = jnp.where(mask, age, jnp.iinfo(jnp.int32).max)
  pos = jnp.zeros(mask.shape[0], jnp.int32).at[jnp.argsort(key)].set(
      jnp.arange(mask.shape[0], dtype=jnp.int32))
  nf = jnp.maximum(n, 1).astype(jnp.float32)
  ramp = 1.0 / nf + pos * (1.0 - 1.0 / nf) / jnp.maximum(nf - flat - 1.0, 1.0)
  w = jnp.where(pos >= n - flat, 1.0, ramp)
  return jnp.where(mask, jnp.log(w), -jnp.inf)


def _mixture(x: jax.Array, mask: jax.Array, prior_weight: float, d_eff: int,
             bandwidth: str = "gaps", logw_obs: jax.Array | None = None,
             w_obs: jax.Array | None = None):
  """A Parzen estimator: component centres ``[k+1, d]``, widths, log weights ``[k+1]``
  (observations weigh 1 each, or ``exp(logw_obs)``, or ``w_obs``; the prior weighs
  ``prior_weight``)."""
  n = jnp.sum(mask)
  dim = x.shape[1]
  if bandwidth == "gaps":
    sigma = _gap_bandwidth(x, mask)
  else:
    sigma = jnp.broadcast_to(_bandwidth(x, mask / jnp.maximum(n, 1), n, d_eff), x.shape)
  mus = jnp.concatenate([x, jnp.full((1, dim), 0.5)], axis=0)
  sigmas = jnp.concatenate([sigma, jnp.ones((1, dim))], axis=0)
  if w_obs is not None:  # all ones: exactly the equal-weight estimator below
    total = jnp.sum(jnp.where(mask, w_obs, 0.0))
    logw = jnp.concatenate([jnp.where(mask, jnp.log(w_obs), -jnp.inf),
                            jnp.zeros(1) + math.log(prior_weight)])
    logw = logw - jnp.log(total + prior_weight)
  elif logw_obs is None:
    logw = jnp.concatenate([jnp.where(mask, 0.0, -jnp.inf),
                            jnp.zeros(1) + math.log(prior_weight)])
    logw = logw - jnp.log(n + prior_weight)
  else:
    logw = jnp.concatenate([jnp.where(mask, logw_obs, -jnp.inf),
                            jnp.zeros(1) + math.log(prior_weight)])
    logw = logw - logsumexp(logw)
  return mus, sigmas, logw


def _log_kernel(z: jax.Array, mus: jax.Array, sigmas: jax.Array) -> jax.Array:
  """Per-dimension truncated-normal log densities ``[c, k, d]`` of points ``z[c, d]``."""
  a = (0.0 - mus) / sigmas
  b = (1.0 - mus) / sigmas
  t = (z[:, None, :] - mus[None]) / sigmas[None]
  log_norm = jnp.log(jnp.maximum(ndtr(b) - ndtr(a), 1e-12)) + jnp.log(sigmas)
  return -0.5 * jnp.square(t) - _LOG_SQRT_2PI - log_norm[None]


def _sample(key: jax.Array, mus, sigmas, logw, n: int, multivariate: bool) -> jax.Array:
  dim = mus.shape[1]
  kc, kz = jax.random.split(key)
  shape = (n,) if multivariate else (n, dim)
  comp = jax.random.categorical(kc, logw, shape=shape)
  if multivariate:
    m, s = mus[comp], sigmas[comp]
  else:
    m = jnp.take_along_axis(mus, comp, axis=0)
    s = jnp.take_along_axis(sigmas, comp, axis=0)
  z = jax.random.truncated_normal(kz, (0.0 - m) / s, (1.0 - m) / s, (n, dim))
  return jnp.clip(m + s * z, 0.0, 1.0)


def _log_density(z, mus, sigmas, logw, multivariate: bool) -> jax.Array:
  lk = _log_kernel(z, mus, sigmas)  # [c, k, d]
  if multivariate:
    return logsumexp(logw[None, :] + jnp.sum(lk, axis=-1), axis=1)  # [c]
  return logsumexp(logw[None, :, None] + lk, axis=1)  # [c, d]


def _point_keys(key: jax.Array, i: jax.Array) -> jax.Array:
  """(uniform draw, candidate) keys of the ``i``-th point of an ask."""
  return jax.random.split(jax.random.fold_in(key, i))


def propose(x: jax.Array, good: jax.Array, bad: jax.Array, startup: jax.Array,
            key: jax.Array, n: int, *, prior_weight: float, d_eff: int, n_candidates: int,
            multivariate: bool, constant_liar: bool, bandwidth: str = "gaps",
            age: jax.Array | None = None, w_rows: jax.Array | None = None,
            w_good: jax.Array | None = None) -> jax.Array:
  """``n`` TPE proposals ``[n, dim]`` from history rows ``x`` split into ``good`` and ``bad``
  (uniform points while ``startup``); with ``constant_liar`` each proposal joins the bad set
  for the next. With ``age`` (per row, smaller: older), the bad density down-weights its older
  observations as Optuna's ``default_weights`` does (:func:`_ramp_logw`). ``w_rows`` (per row;
  not with ``age``) weighs observations in both densities (warm-start priors,
  :func:`source_weight`). ``w_good`` (per row; not with ``w_rows``) weighs the good density's
  observations only."""
  capacity, dim = x.shape
  if age is not None and w_rows is not None:
    raise ValueError("propose: pass age or w_rows, not both")
  if w_good is not None and w_rows is not None:
    raise ValueError("propose: pass w_good or w_rows, not both")
  mus_l, sig_l, logw_l = _mixture(x, good, prior_weight, d_eff, bandwidth,
                                  w_obs=w_rows if w_good is None else w_good)
  x_bad = jnp.concatenate([x, jnp.zeros((n, dim), jnp.float32)])
  bad = jnp.concatenate([bad, jnp.zeros(n, bool)])
  if w_rows is not None:  # pending points weigh 1
    w_rows = jnp.concatenate([w_rows, jnp.ones(n)])
  if age is not None:  # pending points of this batch are the newest
    age = jnp.concatenate([jnp.asarray(age, jnp.int32),
                           capacity + jnp.arange(n, dtype=jnp.int32)])

  def one(carry, i):
    x_bad, bad = carry
    k_rand, k_cand = _point_keys(key, i)
    logw_obs = None if age is None else _ramp_logw(bad, age)
    mus_g, sig_g, logw_g = _mixture(x_bad, bad, prior_weight, d_eff, bandwidth, logw_obs,
                                    w_rows)
    cand = _sample(k_cand, mus_l, sig_l, logw_l, n_candidates, multivariate)
    score = (_log_density(cand, mus_l, sig_l, logw_l, multivariate)
             - _log_density(cand, mus_g, sig_g, logw_g, multivariate))
    if multivariate:
      best = cand[jnp.argmax(score)]
    else:
      best = jnp.take_along_axis(cand, jnp.argmax(score, axis=0)[None], axis=0)[0]
    u = jnp.where(startup, jax.random.uniform(k_rand, (dim,)), best)
    if constant_liar:
      x_bad = x_bad.at[capacity + i].set(u)
      bad = bad.at[capacity + i].set(True)
    return (x_bad, bad), u

  _, u = jax.lax.scan(one, (x_bad, bad), jnp.arange(n))
  return u


def prior_rows(state: dict[str, jax.Array]) -> jax.Array:
  """Which history rows hold warm-start priors: the first ``state["n_prior"]`` rows told (a
  ring-buffer slot holds the newest row told to it)."""
  cap = state["valid"].shape[0]
  slot = jnp.arange(cap, dtype=jnp.int32)
  told = state["count"] - 1 - (state["count"] - 1 - slot) % cap  # absolute index in the slot
  return state["valid"] & (told < state["n_prior"])


def source_weight(x: jax.Array, y: jax.Array, valid: jax.Array, src: jax.Array,
                  prior_pairs: float = 10.0, relative: bool = False) -> jax.Array:
  """The weight in ``[0, 1]`` of warm-start rows ``src`` from how well they rank this study's
  own rows (the ranking-loss weighting of RGPE, Feurer, Letham & Bakshy, "Scalable
  Meta-Learning for Bayesian Optimization", 2018).

  The sources predict each own row by Nadaraya-Watson regression over the ``src`` rows
  (Gaussian kernel, Scott's bandwidth); over the pairs of own rows, ``acc`` is the fraction the
  prediction orders as observed (ties half). ``2 acc - 1`` clipped to ``[0, 1]`` is 1 for a
  perfect ranking and 0 for one no better than chance; with ``relative`` it is divided by the
  same skill of the own rows' leave-one-out regression (capped at 1), as RGPE compares the
  sources with the target's own model. ``prior_pairs`` pseudo-pairs at 1 keep the weight near
  1 while few own rows exist.
  """
  own = valid & ~src
  pair = own[:, None] & own[None, :] & (y[:, None] < y[None, :])
  n_pairs = jnp.sum(pair).astype(jnp.float32)

  def skill(rows, exclude_self):  # 2 acc - 1 of the regression over `rows`
    n_rows = jnp.sum(rows)
    h = _bandwidth(x, rows / jnp.maximum(n_rows, 1), n_rows, x.shape[1])  # [d]
    z = x / h
    sq = jnp.sum(z * z, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    use = rows[None, :] & ~(jnp.eye(x.shape[0], dtype=bool) & exclude_self)
    k = jax.nn.softmax(jnp.where(use, -0.5 * d2, -jnp.inf), axis=1)
    pred = jnp.where(jnp.any(use, axis=1), k @ jnp.where(rows, y, 0.0), 0.0)
    conc = jnp.sum(pair & (pred[:, None] < pred[None, :]))
    tie = jnp.sum(pair & (pred[:, None] == pred[None, :]))
    return 2.0 * (conc + 0.5 * tie) / jnp.maximum(n_pairs, 1.0) - 1.0

  s_src = skill(src, False)
  if relative:  # against the own rows' leave-one-out regression, as RGPE compares models
    raw = jnp.clip(s_src / jnp.maximum(jnp.maximum(skill(own, True), s_src), 1e-6), 0.0, 1.0)
  else:
    raw = jnp.clip(s_src, 0.0, 1.0)
  return (prior_pairs + n_pairs * raw) / (prior_pairs + n_pairs)


def _ei_weights(y: jax.Array, good: jax.Array, bad: jax.Array) -> jax.Array:
  """Weights ``[k]`` of the good rows proportional to their improvement over the split value
  (the best bad ``y``), scaled to mean 1 over the good rows (the prior keeps its share) and
  floored at 0.05; 1 elsewhere."""
  n_good = jnp.maximum(jnp.sum(good), 1)
  thr = jnp.where(jnp.any(bad), jnp.min(jnp.where(bad, y, jnp.inf)),
                  jnp.max(jnp.where(good, y, -jnp.inf)))
  imp = jnp.where(good, jnp.maximum(thr - y, 0.0), 0.0)
  total = jnp.sum(imp)
  w = jnp.where(total > 0, imp * n_good / jnp.maximum(total, 1e-30), 1.0)
  return jnp.where(good, jnp.maximum(w, 0.05), 1.0)


def make_startup_ask(dim: int, n_startup: int):
  """A searcher's ``startup_ask``: the uniform points ``ask`` gives before ``n_startup``
  complete observations."""
  def startup_ask(state, key, n):
    u = jax.vmap(lambda i: jax.random.uniform(_point_keys(key, i)[0], (dim,)))(jnp.arange(n))
    return state, u, jnp.sum(state["valid"]) < n_startup
  return startup_ask


def make_startup_host(dim: int, n_startup: int):
  """:func:`make_startup_ask`'s twin on the host (``Searcher.startup_host``): the same points
  from numpy threefry (``keys.point_uniforms``), nothing compiled; None under another PRNG."""
  def startup_host(state, key, n):
    data = keys.host_data(key)
    u = None if data is None else keys.point_uniforms(data, n, dim)
    if u is None:
      return None
    return state, u, np.sum(np.asarray(state["valid"])) < n_startup
  return startup_host


def _check_tpe_args(dim, n_startup, n_candidates, capacity, gamma, bandwidth, prior_weight,
                    good_weights, pruned, prior_weighting):
  """:func:`tpe`'s arguments checked (one ValueError naming the field); returns
  ``(base, gamma, good_weights)`` with the defaults resolved."""
  _check_dim(dim)
  _check_int("n_startup", n_startup, 0)
  _check_int("n_candidates", n_candidates, 1)
  _check_int("capacity", capacity, 2)
  if isinstance(gamma, str):
    if gamma != "optuna":
      raise ValueError(f"gamma={gamma!r}: must be a number in (0, 1], None or 'optuna'")
    base, gamma = 0.1, None
  else:
    base = default_gamma(dim)
    if gamma is not None:
      _check_float("gamma", gamma, 0.0, 1.0)
  if bandwidth not in ("gaps", "scott"):
    raise ValueError(f"bandwidth={bandwidth!r}: must be 'gaps' or 'scott'")
  _check_float("prior_weight", prior_weight, 0.0, float("inf"))
  if good_weights is None:
    good_weights = default_good_weights(dim)
  elif good_weights not in ("uniform", "ei"):
    raise ValueError(f"good_weights={good_weights!r}: must be 'uniform', 'ei' or None")
  if pruned not in ("ignore", "rank"):
    raise ValueError(f"pruned={pruned!r}: must be 'ignore' or 'rank'")
  if prior_weighting not in ("ranking", "ranking_vs_own", "equal"):
    raise ValueError(f"prior_weighting={prior_weighting!r}: must be 'ranking', "
                     "'ranking_vs_own' or 'equal'")
  return base, gamma, good_weights


def tpe(dim: int, n_startup: int = 10, gamma: float | str | None = None,
        n_candidates: int = 24,
        multivariate: bool = True, constant_liar: bool = True, prior_weight: float = 1.0,
        capacity: int = 1024, bandwidth: str = "gaps",
        prior_weighting: str = "ranking", age_weights: bool = False,
        good_weights: str | None = None, pruned: str = "ignore") -> Searcher:
  """Tree-structured Parzen Estimator over ``[0, 1]^dim``.

  Until ``n_startup`` observations are complete, proposals are uniform random. A batch
  ``ask(state, key, n)`` proposes its points one after another (a ``lax.scan``); with
  ``constant_liar`` each proposed point joins the bad set before the next is chosen (it is
  treated as a worst-possible result, as Optuna does for running trials), so a batch spreads
  out instead of repeating one point. Points of earlier batches that were never told are not
  remembered (the engine tells every batch before the next ask).

  Args:
    dim: dimension of the unit cube.
    n_startup: complete observations before the model is used.
    gamma: fraction of observations in the good set, ``ceil(gamma * n)``. ``None`` (default):
      ``min(ceil(g n), 25)`` with ``g = clip(0.5 / dim, 0.1, 0.25)`` (:func:`default_gamma`):
      Optuna's rule from 5 dimensions on, a larger good set in 2-4 dimensions (chosen on
      development cases of ``benchmarks/blackbox_suite.py``: at d = 2 it beat Optuna's rule
      on 29 of 40 runs). ``"optuna"``: Optuna's ``min(ceil(0.1 n), 25)`` at every dimension.
    n_candidates: candidates drawn from the good density per proposal.
    multivariate: one joint density with product kernels (True), or independent
      one-dimensional densities, each coordinate chosen on its own (False).
    constant_liar: spread batches by adding pending points to the bad set.
    prior_weight: weight of the prior kernel (centre 0.5, width 1) relative to one observation.
    capacity: observations remembered (ring buffer).
    bandwidth: kernel widths. ``"gaps"`` (default, Optuna 5's rule): each kernel's width along
      a dimension is the larger gap to its neighbours there (see :func:`_gap_bandwidth`), so
      kernels are narrow where observations are dense. ``"scott"``: one width per dimension
      and set, Scott's rule on the set's spread (the rule before; over 30 seeds it was better
      on Branin and the mixed function, worse on Hartmann-6).

    prior_weighting: how warm-start priors weigh against this study's own rows, once the
      state carries ``n_prior`` (the first ``n_prior`` rows told are priors; a
      :class:`metaopt.Study` with ``warm_start`` adds it to a TPE by name; without it the
      searcher is plain TPE).
      ``"ranking"`` (default): by how well they rank the own rows (:func:`source_weight`),
      in the good/bad split and both densities; ``"ranking_vs_own"``: that skill relative to
      the own rows' (leave-one-out); ``"equal"``: as own rows. Chosen on development seeds
      of ``benchmarks/transfer.py --dev``.
    age_weights: weigh the bad set's observations by age as Optuna's ``default_weights`` does
      (the newest 25 weigh 1, older ones ramp down towards ``1/n``); without warm-start
      priors only.
    good_weights: how the good density weighs its observations (not with warm-start priors).
      ``"uniform"`` (Optuna's): 1 each. ``"ei"``: in proportion to the improvement over the
      split value (the best bad ``y``), mean 1, floored at 0.05, so the best points draw more
      of the candidates (:func:`_ei_weights`; Watanabe 2023's "EI" weighting). ``None``
      (default, :func:`default_good_weights`): ``"ei"`` from 8 dimensions on, ``"uniform"``
      below (chosen on development cases of ``benchmarks/blackbox_suite.py``: at d = 10 it
      lowered the regret on 24 BBOB functions; at d = 2 it raised it).
    pruned: what pruned trials (stopped early by a pruner, e.g. :func:`asha`) are to the
      model. ``"ignore"`` (default): nothing; only complete trials count, also towards
      ``n_startup`` (with ASHA, which completes few trials, TPE may stay random). ``"rank"``:
      Optuna's ``TPESampler`` rule: a pruned trial with a finite value after its last epoch
      is an observation; complete trials rank first (by value), then pruned ones by the
      epochs they trained (more first) and their last value (:func:`split_order`); the
      best ``n_below`` of that ranking, counted over complete and pruned trials, are the
      good set, and both count towards ``n_startup``. The engine tells the epochs each trial
      trained (the searcher's ``tell_epochs``); a caller of ``tell`` passes them as a fifth
      argument (without it every pruned trial counts as 0 epochs).

  Returns:
    A :class:`Searcher`; its state holds the history and never changes shape.

  Examples:
    >>> s = tpe(2, n_startup=4)
    >>> state = s.init(jax.random.key(0))
    >>> state, u = s.ask(state, jax.random.key(1), 4)
    >>> state = s.tell(state, u, jnp.sum(u, axis=1), jnp.zeros(4, jnp.int32))
    >>> state, u = s.ask(state, jax.random.key(2), 4)  # now from the Parzen estimators
    >>> u.shape
    (4, 2)
  """
  base, gamma, good_weights = _check_tpe_args(dim, n_startup, n_candidates, capacity, gamma,
                                              bandwidth, prior_weight, good_weights, pruned,
                                              prior_weighting)
  steps = pruned == "rank"
  d_eff = dim if multivariate else 1

  def init(key):
    del key
    return history_init(capacity, dim, steps)

  def ask(state, key, n):
    valid, y = state["valid"], state["y"]
    n_obs = jnp.sum(valid)
    if "n_prior" not in state or prior_weighting == "equal":  # no priors marked: plain TPE
      # Ranks of the observations (invalid rows sort last); the best n_below are "good".
      good = good_rows(y, valid, _n_below(n_obs, gamma, base), state.get("step"))
      bad = valid & ~good
      age = None
      if age_weights:  # -1 for the newest row told, -2 for the one before, ... (pending: >= 0)
        age = -1 - (state["count"] - 1 - jnp.arange(capacity, dtype=jnp.int32)) % capacity
      w_good = _ei_weights(y, good, bad) if good_weights == "ei" else None
      u = propose(state["x"], good, bad, n_obs < n_startup, key, n, prior_weight=prior_weight,
                  d_eff=d_eff, n_candidates=n_candidates, multivariate=multivariate,
                  constant_liar=constant_liar, bandwidth=bandwidth, age=age, w_good=w_good)
      return state, u
    src = prior_rows(state)
    rel = prior_weighting == "ranking_vs_own"
    w = jax.lax.cond(jnp.any(src), lambda: source_weight(state["x"], y, valid, src,
                                                         relative=rel), lambda: jnp.ones(()))
    w = jnp.maximum(w, 1e-3)
    r = jnp.where(src, w, 1.0)  # the weights of the rows: 1, or w for warm-start priors
    # Sorted by value (invalid rows last), a row is "good" while the weight before it is
    # under n_below of the total weight (with equal weights: the best n_below rows).
    order = split_order(y, valid, state.get("step"))
    before = jnp.cumsum(r[order] * valid[order]) - r[order] * valid[order]
    cum = jnp.zeros(capacity, jnp.float32).at[order].set(before)
    good = valid & (cum < _n_below(jnp.sum(jnp.where(valid, r, 0.0)), gamma, base))
    bad = valid & ~good
    u = propose(state["x"], good, bad, n_obs < n_startup, key, n, prior_weight=prior_weight,
                d_eff=d_eff, n_candidates=n_candidates, multivariate=multivariate,
                constant_liar=constant_liar, bandwidth=bandwidth, w_rows=r)
    return state, u

  startup_ask = make_startup_ask(dim, n_startup)

  def tell(state, u, y, status, epochs=None):
    out = history_tell(state, u, y, status, epochs)
    return {**out, "n_prior": state["n_prior"]} if "n_prior" in state else out

  return Searcher(init, ask, tell, startup_ask=startup_ask,
                  startup_host=make_startup_host(dim, n_startup), tell_epochs=steps)
