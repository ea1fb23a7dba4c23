"""Multi-objective and constrained search helpers, pure ``jnp`` (all objectives minimised).

Non-dominated sorting and crowding distance as in NSGA-II (Deb, Pratap, Agarwal & Meyarivan,
"A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II", IEEE TEVC 2002); the constraint
handling follows Deb's feasibility rules ("An efficient constraint handling method for genetic
algorithms", CMAME 2000): every infeasible point ranks behind every feasible one, and
infeasible points rank among themselves by their total violation.

``Y[n, m]`` holds ``n`` points with ``m`` objectives. Rows with a non-finite entry, or with
``valid`` False, are never on a front, dominate nothing and get rank ``n``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.types import COMPLETE, INFEASIBLE, Searcher


def _valid_rows(y: jax.Array, valid: jax.Array | None) -> jax.Array:
  ok = jnp.all(jnp.isfinite(y), axis=-1)
  return ok if valid is None else ok & valid


def dominance_matrix(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """``D[i, j]``: point ``i`` dominates point ``j`` (no worse in all, better in one)."""
  ok = _valid_rows(y, valid)
  le = jnp.all(y[:, None, :] <= y[None, :, :], axis=-1)
  lt = jnp.any(y[:, None, :] < y[None, :, :], axis=-1)
  return le & lt & ok[:, None] & ok[None, :]


def pareto_front(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Mask ``[n]`` of the non-dominated valid rows of ``y[n, m]``.

  Examples:
    >>> y = jnp.asarray([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])
    >>> pareto_front(y).tolist()
    [True, True, False]
  """
  return _valid_rows(y, valid) & ~jnp.any(dominance_matrix(y, valid), axis=0)


def nondominated_rank(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Front index ``[n]`` of every row (0 = Pareto front); invalid rows get ``n``.

  Peels fronts in a ``lax.while_loop`` over the ``O(n^2 m)`` dominance matrix.

  Examples:
    >>> y = jnp.asarray([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    >>> nondominated_rank(y).tolist()
    [0, 0, 1, 2]
  """
  n = y.shape[0]
  dom = dominance_matrix(y, valid)
  remaining = _valid_rows(y, valid)
  rank = jnp.full((n,), n, jnp.int32)

  def cond(carry):
    return jnp.any(carry[0])

  def body(carry):
    remaining, rank, r = carry
    front = remaining & ~jnp.any(dom & remaining[:, None], axis=0)
    return remaining & ~front, jnp.where(front, r, rank), r + 1

  _, rank, _ = jax.lax.while_loop(cond, body, (remaining, rank, jnp.zeros((), jnp.int32)))
  return rank


def crowding_distance(y: jax.Array, rank: jax.Array) -> jax.Array:
  """NSGA-II crowding distance ``[n]`` within each front (``inf`` at a front's extremes).

  Each objective's gap between a point's neighbours on its front is divided by that front's
  range of the objective; the gaps are summed over objectives.
  """
  n, m = y.shape
  yf = jnp.where(jnp.isfinite(y), y, 0.0)
  dist = jnp.zeros((n,), jnp.float32)
  for j in range(m):  # m is small and static
    order = jnp.lexsort((yf[:, j], rank))
    ys, rs = yf[order, j], rank[order]
    lo = jax.ops.segment_min(yf[:, j], rank, num_segments=n + 1)
    hi = jax.ops.segment_max(yf[:, j], rank, num_segments=n + 1)
    span = jnp.maximum((hi - lo)[rs], 1e-12)
    prev_same = jnp.concatenate([jnp.zeros(1, bool), rs[1:] == rs[:-1]])
    next_same = jnp.concatenate([rs[:-1] == rs[1:], jnp.zeros(1, bool)])
    gap = (jnp.concatenate([ys[1:], ys[-1:]]) - jnp.concatenate([ys[:1], ys[:-1]])) / span
    d_sorted = jnp.where(prev_same & next_same, gap, jnp.inf)
    dist = dist + jnp.zeros((n,), jnp.float32).at[order].set(d_sorted)
  return dist


def hypervolume_2d(y: jax.Array, ref: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Area dominated by the rows of ``y[n, 2]`` and bounded by the reference point ``ref[2]``."""
  ok = pareto_front(y, valid) & jnp.all(y < ref, axis=-1)
  y0 = jnp.where(ok, y[:, 0], ref[0])
  y1 = jnp.where(ok, y[:, 1], ref[1])
  order = jnp.argsort(y0)
  y0, y1 = y0[order], y1[order]
  # On a front sorted by the first objective the second decreases: sum the rectangles.
  prev1 = jnp.concatenate([ref[1:2], jax.lax.cummin(y1)[:-1]])
  return jnp.sum((ref[0] - y0) * jnp.maximum(prev1 - y1, 0.0))


def hypervolume_contributions_2d(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Exclusive hypervolume contribution ``[n]`` of each row of ``y[n, 2]`` to its own front.

  Within every non-domination front the points are sorted by the first objective; a point's
  contribution is the rectangle between its neighbours on that front (``inf`` at a front's
  two ends). Rows of later fronts are measured against their own front, not the first.
  """
  n = y.shape[0]
  rank = nondominated_rank(y, valid)
  yf = jnp.where(jnp.isfinite(y), y, 0.0)
  order = jnp.lexsort((yf[:, 1], yf[:, 0], rank))
  y0, y1, rs = yf[order, 0], yf[order, 1], rank[order]
  prev_same = jnp.concatenate([jnp.zeros(1, bool), rs[1:] == rs[:-1]])
  next_same = jnp.concatenate([rs[:-1] == rs[1:], jnp.zeros(1, bool)])
  nxt0 = jnp.concatenate([y0[1:], y0[-1:]])
  prv1 = jnp.concatenate([y1[:1], y1[:-1]])
  c = jnp.where(prev_same & next_same, (nxt0 - y0) * (prv1 - y1), jnp.inf)
  c = jnp.where(rs >= n, 0.0, c)
  return jnp.zeros((n,), jnp.float32).at[order].set(c.astype(jnp.float32))


def _nondominated_np(p: np.ndarray) -> np.ndarray:
  le = np.all(p[:, None, :] <= p[None, :, :], axis=-1)
  lt = np.any(p[:, None, :] < p[None, :, :], axis=-1)
  return p[~np.any(le & lt, axis=0)]


def _hv_slices(p: np.ndarray, ref: np.ndarray) -> float:
  """Exact hypervolume of points ``p`` (all strictly better than ``ref``) by slicing."""
  if p.shape[0] == 0:
    return 0.0
  if p.shape[1] == 1:
    return float(ref[0] - p[:, 0].min())
  if p.shape[1] == 2:
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    best1, area = ref[1], 0.0
    for a, b in p:
      if b < best1:
        area += (ref[0] - a) * (best1 - b)
        best1 = b
    return float(area)
  p = p[np.argsort(p[:, -1])]
  vol = 0.0
  for i in range(p.shape[0]):
    top = p[i + 1, -1] if i + 1 < p.shape[0] else ref[-1]
    if top > p[i, -1]:
      vol += _hv_slices(_nondominated_np(p[: i + 1, :-1]), ref[:-1]) * (top - p[i, -1])
  return float(vol)


def hypervolume(y: Any, ref: Any, valid: Any = None) -> float:
  """Exact hypervolume (minimisation) of the rows of ``y[n, m]`` bounded by ``ref[m]``.

  Host-side (numpy) and exact for any ``m`` (hypervolume by slicing objectives, While et al.,
  IEEE TEVC 2006); cost grows quickly with ``m``, so meant for reports and benchmarks of
  a few hundred points. Rows with a non-finite entry or ``valid`` False count for nothing.

  Examples:
    >>> hypervolume([[1.0, 2.0], [2.0, 1.0]], [3.0, 3.0])
    3.0
  """
  y = np.asarray(y, np.float64)
  ref = np.asarray(ref, np.float64)
  if y.ndim != 2 or ref.shape != (y.shape[1],):
    raise ValueError(f"hypervolume: y must be (n, m) and ref (m,), got {y.shape} and "
                     f"{ref.shape}")
  ok = np.all(np.isfinite(y), axis=1) & np.all(y < ref, axis=1)
  if valid is not None:
    ok &= np.asarray(valid, bool)
  p = y[ok]
  if p.shape[0] == 0:
    return 0.0
  return _hv_slices(_nondominated_np(p), ref)


def with_constraints(searcher: Searcher, constraint_fn: Callable[[jax.Array], jax.Array],
                     penalty: float = 0.1, n_objectives: int = 1) -> Searcher:
  """Adds known constraints ``constraint_fn(u[n, d]) -> c[n, k]`` (feasible iff all ``c <= 0``).

  The inner searcher is told a penalised objective for infeasible points, so its model learns
  to avoid them (Deb's feasibility rules in one number): with ``lo, hi`` the best and worst
  feasible complete objectives seen so far (all complete ones while none is feasible),
  an infeasible point gets ``hi + (hi - lo) * (penalty + sum(max(c, 0)))``. Trials whose
  status is ``INFEASIBLE`` (a constraint the evaluation itself found broken) are told the
  same with a violation of 1 and status ``COMPLETE``; other statuses pass through.

  Args:
    searcher: the searcher to wrap.
    constraint_fn: jittable map from points ``[n, d]`` to violations ``[n]`` or ``[n, k]``.
    penalty: margin, in units of the observed range, between infeasible and feasible points.
    n_objectives: with ``m > 1`` the wrapped searcher is multi-objective and ``y`` is
      ``[n, m]``: every objective of an infeasible point is penalised as above, with
      ``lo, hi`` taken per objective, so infeasible points are dominated by every feasible
      one and rank among themselves by their violation.

  Returns:
    A :class:`Searcher`; ``state["inner"]`` is the wrapped searcher's state.
  """
  if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or penalty < 0:
    raise ValueError(f"penalty={penalty!r}: must be a number >= 0")
  if isinstance(n_objectives, bool) or not isinstance(n_objectives, int) or n_objectives < 1:
    raise ValueError(f"n_objectives={n_objectives!r}: must be an integer >= 1")
  vec = n_objectives > 1
  shape = (n_objectives,) if vec else ()

  def init(key):
    inf = jnp.full(shape, jnp.inf, jnp.float32)
    return {"inner": searcher.init(key), "lo": inf, "hi": -inf, "any_lo": inf, "any_hi": -inf}

  def ask(state, key, n):
    inner, u = searcher.ask(state["inner"], key, n)
    return {**state, "inner": inner}, u

  def tell(state, u, y, status):
    c = jnp.asarray(constraint_fn(u), jnp.float32)
    c = c.reshape(c.shape[0], -1)
    viol = jnp.sum(jnp.maximum(c, 0.0), axis=-1)
    y = jnp.asarray(y, jnp.float32)
    if vec:
      from metaopt._src.mosearch import check_vector_tell
      y = check_vector_tell(y, status, n_objectives, u.shape[0])
      done = (status == COMPLETE) & jnp.all(jnp.isfinite(y), axis=-1)
    else:
      done = (status == COMPLETE) & jnp.isfinite(y)
    feas = done & (viol <= 0)
    col = (lambda a: a[:, None]) if vec else (lambda a: a)
    lo = jnp.minimum(state["lo"], jnp.min(jnp.where(col(feas), y, jnp.inf), axis=0))
    hi = jnp.maximum(state["hi"], jnp.max(jnp.where(col(feas), y, -jnp.inf), axis=0))
    any_lo = jnp.minimum(state["any_lo"], jnp.min(jnp.where(col(done), y, jnp.inf), axis=0))
    any_hi = jnp.maximum(state["any_hi"], jnp.max(jnp.where(col(done), y, -jnp.inf), axis=0))
    have = jnp.isfinite(hi)
    ref_lo = jnp.where(have, lo, jnp.where(jnp.isfinite(any_hi), any_lo, 0.0))
    ref_hi = jnp.where(have, hi, jnp.where(jnp.isfinite(any_hi), any_hi, 1.0))
    span = jnp.maximum(ref_hi - ref_lo, 1e-6 * jnp.maximum(jnp.abs(ref_hi), 1.0))
    infeasible_status = status == INFEASIBLE
    viol = jnp.where(infeasible_status, jnp.maximum(viol, 1.0), viol)
    bad = (done & (viol > 0)) | infeasible_status
    y_told = jnp.where(col(bad), ref_hi + span * (penalty + col(viol)), y)
    status_told = jnp.where(infeasible_status, COMPLETE, status)
    inner = searcher.tell(state["inner"], u, y_told, status_told)
    return {"inner": inner, "lo": lo, "hi": hi, "any_lo": any_lo, "any_hi": any_hi}

  return Searcher(init, ask, tell)
