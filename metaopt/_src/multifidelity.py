"""Multi-fidelity early stopping between chunks of the population kernel.

All are :class:`Pruner` s, pure ``jnp`` functions of the population's epoch values:

* ``successive_halving`` (Jamieson & Talwalkar 2016): at rungs ``min_epochs * eta^k`` keep
  exactly the best ``ceil(alive / eta)`` trials of the population.
* ``asha`` (Li et al. 2020): asynchronous promotion; a trial continues past a rung only if
  it is in the top ``1 / eta`` of *every* trial that has reached that rung so far, in this
  round or earlier ones.
* ``hyperband`` (Li et al. 2018): successive halving whose first rung changes from round to
  round, cycling through the brackets ``s = s_max .. 0``.
* ``median_pruner`` lives in ``combinators`` (Optuna's MedianPruner rule).
* ``curve_pruner``: learning-curve extrapolation; fits ``y(t) = c - a * t^-alpha`` to a
  trial's curve so far and stops it when the extrapolated final value cannot beat the best
  final value seen (Domhan et al. 2015, with a single parametric family).

Pruned trials keep their last objective and are recorded ``pruned`` with their last rung.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.types import Pruner


def _int(name: str, v, lo: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
  return int(v)


def _eta(eta) -> float:
  if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 1:
    raise ValueError(f"eta={eta!r}: must be a number > 1")
  return float(eta)


def rungs(n_epochs: int, min_epochs: int, eta: float) -> list[int]:
  """Epoch indices (0-based, after which a decision is made) of the rungs before the end."""
  out, r = [], float(min_epochs)
  while round(r) < n_epochs:
    out.append(int(round(r)) - 1)
    r *= eta
  return sorted(set(out))


def _rung_mask(n_epochs: int, rung_epochs: list[int]) -> np.ndarray:
  mask = np.zeros(n_epochs, bool)  # numpy: building a pruner compiles nothing
  mask[np.asarray(rung_epochs, np.int64)] = True
  return mask


def _top_k_keep(values: jax.Array, alive: jax.Array, k: jax.Array) -> jax.Array:
  """True for the ``k`` best (lowest) alive finite values; ties broken by index."""
  v = jnp.where(alive & jnp.isfinite(values), values, jnp.inf)
  order = jnp.argsort(v, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(v.shape[0]))
  return (rank < k) & jnp.isfinite(v)


def successive_halving(n_epochs: int, min_epochs: int = 1, eta: float = 3.0) -> Pruner:
  """Synchronous successive halving inside one population.

  Examples:
    >>> p = successive_halving(n_epochs=9, min_epochs=1, eta=3)  # rungs after epochs 1, 3
    >>> state, keep = p.prune(p.init(), jnp.arange(9.0), jnp.asarray(0), jnp.ones(9, bool))
    >>> int(keep.sum())
    3
  """
  n_epochs, min_epochs, eta = _int("n_epochs", n_epochs, 1), _int("min_epochs", min_epochs,
                                                                    1), _eta(eta)
  is_rung = _rung_mask(n_epochs, rungs(n_epochs, min_epochs, eta))

  def init():
    return {}

  def prune(state, values, epoch, alive):
    at_rung = jnp.asarray(is_rung)[jnp.clip(epoch, 0, n_epochs - 1)]
    k = jnp.ceil(jnp.sum(alive) / eta).astype(jnp.int32)
    keep = _top_k_keep(values, alive, k) | ~alive
    return state, jnp.where(at_rung, keep, True)

  return Pruner(init, prune)


def pareto_pruner(n_epochs: int, min_epochs: int = 1, eta: float = 3.0) -> Pruner:
  """Successive halving for several objectives: at each rung the live trials are sorted into
  non-domination fronts of their objectives so far (``metrics["objectives"][n, m]``, which
  the driver supplies when a search declares ``objectives``), and whole fronts are kept,
  best first, until at least ``ceil(alive / eta)`` trials are kept. A trial non-dominated
  at its rung is never stopped.

  Examples:
    >>> p = pareto_pruner(n_epochs=9, min_epochs=1, eta=3)  # rungs after epochs 1, 3
    >>> y = jnp.asarray([[0., 3.], [1., 2.], [2., 1.], [3., 3.], [2., 2.], [4., 4.]])
    >>> _, keep = p.prune(p.init(), y, jnp.asarray(0), jnp.ones(6, bool))
    >>> keep.tolist()
    [True, True, True, False, False, False]
  """
  from metaopt._src.multiobjective import nondominated_rank

  n_epochs, min_epochs, eta = _int("n_epochs", n_epochs, 1), _int("min_epochs", min_epochs,
                                                                    1), _eta(eta)
  is_rung = _rung_mask(n_epochs, rungs(n_epochs, min_epochs, eta))

  def init():
    return {}

  def prune(state, values, epoch, alive):
    at_rung = jnp.asarray(is_rung)[jnp.clip(epoch, 0, n_epochs - 1)]
    n = values.shape[0]
    rank = nondominated_rank(values, alive)  # non-finite rows: rank n
    k = jnp.ceil(jnp.sum(alive) / eta).astype(jnp.int32)
    cum = jnp.cumsum(jnp.zeros(n + 1, jnp.int32).at[rank].add(alive.astype(jnp.int32)))
    r_keep = jnp.argmax(cum >= k)  # the first front by which k trials are covered
    keep = (alive & (rank <= r_keep) & (rank < n)) | ~alive
    return state, jnp.where(at_rung, keep, True)

  return Pruner(init, prune, uses="objectives")


def hyperband(n_epochs: int, min_epochs: int = 1, eta: float = 3.0) -> Pruner:
  """Successive halving with the first rung cycling over Hyperband's brackets per round.

  Round ``k`` runs bracket ``s = s_max - k mod (s_max + 1)``: its first rung is after
  ``n_epochs * eta^-s`` epochs (at least ``min_epochs``); bracket 0 trains every trial fully.
  """
  n_epochs, min_epochs, eta = _int("n_epochs", n_epochs, 1), _int("min_epochs", min_epochs,
                                                                    1), _eta(eta)
  s_max = int(math.floor(math.log(n_epochs / min_epochs, eta) + 1e-9))
  masks = np.stack([
      _rung_mask(n_epochs, rungs(n_epochs, max(min_epochs, round(n_epochs * eta**-s)), eta))
      for s in range(s_max, -1, -1)])

  def init():
    return {"round": jnp.full((), -1, jnp.int32)}

  def prune(state, values, epoch, alive):
    rnd = state["round"] + (epoch == 0).astype(jnp.int32)
    mask = jnp.asarray(masks)[jnp.mod(rnd, s_max + 1)]
    at_rung = mask[jnp.clip(epoch, 0, n_epochs - 1)]
    k = jnp.ceil(jnp.sum(alive) / eta).astype(jnp.int32)
    keep = _top_k_keep(values, alive, k) | ~alive
    return {"round": rnd}, jnp.where(at_rung, keep, True)

  return Pruner(init, prune)


def asha(n_epochs: int, min_epochs: int = 1, eta: float = 3.0, capacity: int = 4096) -> Pruner:
  """ASHA-style promotion: continue past a rung only in the top ``1/eta`` of all trials that
  ever reached it (history kept in a fixed-capacity buffer per rung)."""
  n_epochs, min_epochs, eta = _int("n_epochs", n_epochs, 1), _int("min_epochs", min_epochs,
                                                                    1), _eta(eta)
  capacity = _int("capacity", capacity, 1)
  is_rung = _rung_mask(n_epochs, rungs(n_epochs, min_epochs, eta))

  def init():
    return {"hist": jnp.full((n_epochs, capacity), jnp.inf), "count": jnp.zeros(n_epochs,
                                                                                jnp.int32)}

  def prune(state, values, epoch, alive):
    e = jnp.clip(epoch, 0, n_epochs - 1)
    at_rung = jnp.asarray(is_rung)[e]
    row, c = state["hist"][e], state["count"][e]
    finite = alive & jnp.isfinite(values)
    slots = (c + jnp.cumsum(finite) - 1) % capacity
    row = row.at[jnp.where(finite & at_rung, slots, capacity)].set(values, mode="drop")
    c = c + jnp.where(at_rung, jnp.sum(finite), 0)
    seen = jnp.minimum(c, capacity)
    k = jnp.maximum(jnp.floor(seen / eta), 1).astype(jnp.int32)
    threshold = jnp.sort(row)[k - 1]  # k-th best value at this rung so far
    keep = ~alive | (finite & (values <= threshold))
    new = {"hist": state["hist"].at[e].set(row), "count": state["count"].at[e].set(c)}
    return new, jnp.where(at_rung, keep, True)

  return Pruner(init, prune)


def _fit_pow3(curve: jax.Array, valid: jax.Array, steps: int = 200) -> jax.Array:
  """Fits ``c - a * t^-alpha`` (t = epoch + 1) to the valid points of a curve by least
  squares over a grid of alpha (closed-form c, a per alpha); returns the params of the best."""
  t = jnp.arange(1, curve.shape[0] + 1, dtype=jnp.float32)
  alphas = jnp.linspace(0.05, 3.0, steps)
  w = valid.astype(jnp.float32)
  y = jnp.where(valid, curve, 0.0)

  def fit(alpha):
    x = -(t ** -alpha)
    sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
    sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
    det = sw * sxx - sx * sx
    a = jnp.where(jnp.abs(det) > 1e-12, (sw * sxy - sx * sy) / det, 0.0)
    c = (sy - a * sx) / jnp.maximum(sw, 1e-12)
    err = (w * jnp.square(c + a * x - y)).sum()
    return err, c, a

  err, c, a = jax.vmap(fit)(alphas)
  i = jnp.argmin(err)
  return jnp.stack([c[i], a[i], alphas[i]])


def curve_pruner(n_epochs: int, min_points: int = 3, margin: float = 0.0,
                 capacity: int = 4096) -> Pruner:
  """Learning-curve extrapolation: stop a trial whose extrapolated final value (minimised)
  is worse than the best final value of trials completed so far plus ``margin``.

  It reads the population's ``objective_history[n, n_epochs]`` (NaN for epochs not reached),
  which the engine provides to every observer.
  """
  n_epochs = _int("n_epochs", n_epochs, 2)
  min_points = _int("min_points", min_points, 2)
  del capacity

  def init():
    return {"best_final": jnp.asarray(jnp.inf)}

  def prune(state, history, epoch, alive):
    valid = jnp.isfinite(history) & (jnp.arange(n_epochs)[None, :] <= epoch)
    params = jax.vmap(_fit_pow3)(history, valid)
    c, a, alpha = params[:, 0], params[:, 1], params[:, 2]
    final = c - a * n_epochs ** -alpha
    last_epoch = epoch >= n_epochs - 1
    finals = jnp.where(alive & jnp.isfinite(history[:, -1]), history[:, -1], jnp.inf)
    best = jnp.minimum(state["best_final"], jnp.where(last_epoch, finals.min(), jnp.inf))
    enough = epoch + 1 >= min_points
    keep = ~(alive & enough & ~last_epoch & (final > best + margin))
    return {"best_final": best}, keep

  return Pruner(init, prune, uses="objective_history")
