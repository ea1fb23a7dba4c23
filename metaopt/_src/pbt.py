"""Population-based training (Jaderberg et al. 2017) as a pure function of population state.

Every ``interval`` epochs, ``observe`` ranks the live trials by objective: each trial in the
bottom ``quantile`` *exploits* a uniformly chosen trial of the top ``quantile`` (copies its
weights, optimizer state and hyperparameters) and then *explores*: each unit-cube coordinate
is shifted by ``±perturb`` (a random sign) or, with probability ``resample_prob``, resampled
uniformly. The engine applies the copy (``copy_from``) and the new points (``u``) on device
between chunks and records every trial's parent and hyperparameter schedule per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.types import Decision, Searcher


def pbt(dim: int, interval: int = 2, quantile: float = 0.25, perturb: float = 0.05,
        resample_prob: float = 0.25, frozen: Sequence[int] = ()) -> Searcher:
  """Population-based training over ``[0, 1]^dim``.

  Args:
    dim: the space's dimension.
    interval: epochs between exploit/explore steps.
    quantile: fraction of the population that is replaced / copied from (0 < q <= 0.5).
    perturb: size of an explore step in the unit cube (0.05 changes a log-scaled learning
      rate in [1e-4, 0.3] by a factor of about 1.5).
    resample_prob: probability that a coordinate is resampled instead of perturbed.
    frozen: coordinates never explored (e.g. structural parameters).

  Examples:
    >>> s = pbt(2)
    >>> state, u = s.ask(s.init(jax.random.key(0)), jax.random.key(1), 8)
    >>> u.shape
    (8, 2)
  """
  for name, v, lo in (("dim", dim, 1), ("interval", interval, 1)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
  if not 0.0 < quantile <= 0.5:
    raise ValueError(f"quantile={quantile!r}: must be in (0, 0.5]")
  if not 0.0 <= resample_prob <= 1.0:
    raise ValueError(f"resample_prob={resample_prob!r}: must be in [0, 1]")
  if not 0.0 <= perturb <= 1.0:
    raise ValueError(f"perturb={perturb!r}: must be in [0, 1]")
  bad = [c for c in frozen if not 0 <= c < dim]
  if bad:
    raise ValueError(f"frozen={list(frozen)}: coordinates {bad} outside 0..{dim - 1}")
  explore_mask = jnp.ones(dim, bool).at[jnp.asarray(list(frozen), jnp.int32)].set(False) \
      if frozen else jnp.ones(dim, bool)

  def init(key):
    return {"key": jax.random.key_data(key), "count": jnp.zeros((), jnp.int32)}

  def ask(state, key, n):
    return {**state, "count": state["count"] + n}, jax.random.uniform(key, (n, dim))

  def tell(state, u, y, status):
    del u, y, status
    return state

  def observe(state, metrics, epoch, alive):
    key, k_pick, k_sign, k_res, k_new = jax.random.split(
        jax.random.wrap_key_data(state["key"]), 5)
    values = jnp.where(alive, metrics["objective"], jnp.inf)
    u = metrics["u"]
    n = values.shape[0]
    n_alive = jnp.sum(alive)
    m = jnp.maximum(jnp.floor(n_alive * quantile), 1).astype(jnp.int32)
    order = jnp.argsort(values, stable=True)  # best first; dead trials last
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    bottom = alive & (rank >= n_alive - m) & (n_alive >= 2)
    donor_rank = jax.random.randint(k_pick, (n,), 0, jnp.maximum(m, 1))
    donor = order[donor_rank]
    now = ((epoch + 1) % interval == 0)
    replace = bottom & now
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (n, dim)), 1.0, -1.0)
    moved = jnp.clip(u[donor] + sign * perturb, 0.0, 1.0 - 1e-7)
    resampled = jax.random.uniform(k_new, (n, dim))
    pick = jax.random.bernoulli(k_res, resample_prob, (n, dim))
    explored = jnp.where(explore_mask, jnp.where(pick, resampled, moved), u[donor])
    new_u = jnp.where(replace[:, None], explored, u)
    copy_from = jnp.where(replace, donor, -1)
    decision = Decision(jnp.ones_like(alive), {"exploited": replace}, copy_from, new_u)
    return {**state, "key": jax.random.key_data(key)}, decision

  return Searcher(init, ask, tell, observe)
