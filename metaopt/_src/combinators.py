"""Combinators: build new search programs from existing ones, the way optax chains transforms.

Every combinator takes :class:`Searcher` s and returns a :class:`Searcher`, so they nest:

    program = with_pruning(
        sequential(sobol(d), random_search(d), n_first=32),
        median_pruner(n_epochs=20))

* ``sequential(a, b, n_first)``: the first ``n_first`` trials from ``a``, the rest from ``b``
  (``b`` is told every result from the start, so it takes over with the full history).
* ``product(parts, dim)``: disjoint coordinate blocks searched jointly, one program each.
* ``alternate(a, b, idx_a, dim)``: block-coordinate search; rounds alternate between ``a``
  varying its coordinates and ``b`` varying the rest, the other block held at the incumbent.
* ``with_fallback(primary, fallback, trigger)``: ``primary`` until ``trigger`` fires on a
  batch of results, then ``fallback`` for good; the switch is kept in the state.
* ``with_pruning(searcher, pruner)``: adds between-chunk early stopping.
* ``with_monitor(searcher, stop_on)``: detects training pathologies every epoch, records them,
  and optionally stops the trials that show them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.types import COMPLETE, FAILED, Decision, Pruner, Searcher, merge_decisions


def _select(pred: jax.Array, a, b):
  return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def sequential(a: Searcher, b: Searcher, n_first: int) -> Searcher:
  """Trials ``0 .. n_first-1`` come from ``a`` and later ones from ``b``; both see all results.

  Examples:
    >>> from metaopt import sobol, random_search
    >>> s = sequential(sobol(2), random_search(2), n_first=8)
    >>> state = s.init(jax.random.key(0))
    >>> state, u = s.ask(state, jax.random.key(1), 16)  # 8 Sobol points, then 8 random
  """
  if isinstance(n_first, bool) or not isinstance(n_first, (int, np.integer)) or n_first < 0:
    raise ValueError(f"n_first={n_first!r}: must be an integer >= 0")

  def init(key):
    ka, kb = jax.random.split(key)
    return {"a": a.init(ka), "b": b.init(kb), "count": jnp.zeros((), jnp.int32)}

  def ask(state, key, n):
    ka, kb = jax.random.split(key)
    sa, ua = a.ask(state["a"], ka, n)
    sb, ub = b.ask(state["b"], kb, n)
    from_a = (state["count"] + jnp.arange(n)) < n_first
    u = jnp.where(from_a[:, None], ua, ub)
    return {"a": sa, "b": sb, "count": state["count"] + n}, u

  def tell(state, u, y, status):
    return {**state, "a": a.tell(state["a"], u, y, status), "b": b.tell(state["b"], u, y, status)}

  return Searcher(init, ask, tell)


def _check_blocks(blocks: Sequence[Sequence[int]], dim: int) -> list[np.ndarray]:
  flat = [i for blk in blocks for i in blk]
  if sorted(flat) != list(range(dim)):
    raise ValueError(f"blocks={[list(b) for b in blocks]}: must partition coordinates "
                     f"0..{dim - 1} exactly once")
  return [np.asarray(b, np.int32) for b in blocks]


def product(parts: Sequence[tuple[Searcher, Sequence[int]]], dim: int) -> Searcher:
  """Searches disjoint coordinate blocks jointly: ``parts = [(searcher, coords), ...]``.

  Each searcher sees only its own coordinates, and is told every result.
  """
  blocks = _check_blocks([c for _, c in parts], dim)
  progs = [p for p, _ in parts]

  def init(key):
    keys = jax.random.split(key, len(progs))
    return tuple(p.init(k) for p, k in zip(progs, keys, strict=True))

  def ask(state, key, n):
    keys = jax.random.split(key, len(progs))
    u = jnp.zeros((n, dim))
    new = []
    for p, s, k, blk in zip(progs, state, keys, blocks, strict=True):
      s, ub = p.ask(s, k, n)
      u = u.at[:, blk].set(ub)
      new.append(s)
    return tuple(new), u

  def tell(state, u, y, status):
    return tuple(p.tell(s, u[:, blk], y, status)
                 for p, s, blk in zip(progs, state, blocks, strict=True))

  return Searcher(init, ask, tell)


def alternate(a: Searcher, b: Searcher, idx_a: Sequence[int], dim: int,
              period: int = 1) -> Searcher:
  """Block-coordinate search over two disjoint coordinate blocks.

  For ``period`` rounds ``a`` proposes its coordinates ``idx_a`` while the other block is
  held at the incumbent (best complete trial so far), then ``b`` proposes the rest with
  ``idx_a`` held, and so on. Until a trial completes, both blocks are proposed jointly.
  """
  idx_b = [i for i in range(dim) if i not in set(idx_a)]
  blk_a, blk_b = _check_blocks([idx_a, idx_b], dim)
  if period < 1:
    raise ValueError(f"period={period}: must be >= 1")

  def init(key):
    ka, kb = jax.random.split(key)
    return {"a": a.init(ka), "b": b.init(kb), "round": jnp.zeros((), jnp.int32),
            "best_u": jnp.full((dim,), 0.5), "best_y": jnp.asarray(jnp.inf)}

  def ask(state, key, n):
    ka, kb = jax.random.split(key)
    sa, ua = a.ask(state["a"], ka, n)
    sb, ub = b.ask(state["b"], kb, n)
    have = jnp.isfinite(state["best_y"])
    turn_a = (state["round"] // period) % 2 == 0
    inc = jnp.broadcast_to(state["best_u"], (n, dim))
    joint = inc.at[:, blk_a].set(ua).at[:, blk_b].set(ub)
    only_a = inc.at[:, blk_a].set(ua)
    only_b = inc.at[:, blk_b].set(ub)
    u = jnp.where(have, jnp.where(turn_a, only_a, only_b), joint)
    return {**state, "a": sa, "b": sb, "round": state["round"] + 1}, u

  def tell(state, u, y, status):
    yy = jnp.where(status == COMPLETE, y, jnp.inf)
    i = jnp.argmin(yy)
    better = yy[i] < state["best_y"]
    return {**state,
            "a": a.tell(state["a"], u[:, blk_a], y, status),
            "b": b.tell(state["b"], u[:, blk_b], y, status),
            "best_u": jnp.where(better, u[i], state["best_u"]),
            "best_y": jnp.where(better, yy[i], state["best_y"])}

  return Searcher(init, ask, tell)


def failure_rate_trigger(threshold: float = 0.5) -> Callable:
  """A ``with_fallback`` trigger: fires when a batch's failed fraction reaches ``threshold``."""

  def trigger(u, y, status):
    del u, y
    return jnp.mean(status == FAILED) >= threshold

  return trigger


def with_fallback(primary: Searcher, fallback: Searcher,
                  trigger: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]) -> Searcher:
  """Runs ``primary`` until ``trigger(u, y, status)`` is true for a told batch, then
  ``fallback`` for the rest of the search. ``fallback`` is told every result from the start,
  so it inherits the full history; ``state["switched"]`` and ``state["switch_round"]`` record
  the switch.
  """

  def init(key):
    kp, kf = jax.random.split(key)
    return {"primary": primary.init(kp), "fallback": fallback.init(kf),
            "switched": jnp.zeros((), bool), "round": jnp.zeros((), jnp.int32),
            "switch_round": jnp.full((), -1, jnp.int32)}

  def ask(state, key, n):
    kp, kf = jax.random.split(key)
    sp, up = primary.ask(state["primary"], kp, n)
    sf, uf = fallback.ask(state["fallback"], kf, n)
    u = jnp.where(state["switched"], uf, up)
    sp = _select(state["switched"], state["primary"], sp)
    return {**state, "primary": sp, "fallback": sf}, u

  def tell(state, u, y, status):
    fire = jnp.asarray(trigger(u, y, status), bool) & ~state["switched"]
    return {**state,
            "primary": primary.tell(state["primary"], u, y, status),
            "fallback": fallback.tell(state["fallback"], u, y, status),
            "switched": state["switched"] | fire,
            "switch_round": jnp.where(fire, state["round"], state["switch_round"]),
            "round": state["round"] + 1}

  return Searcher(init, ask, tell)


def _chain_observe(searcher: Searcher, key: str, own: Callable) -> Callable:
  """An ``observe`` that runs ``searcher``'s own observer (if any), then ``own``."""

  def observe(state, metrics, epoch, alive):
    first = Decision(jnp.ones_like(alive), {})
    inner = state["search"]
    if searcher.observe is not None:
      inner, first = searcher.observe(inner, metrics, epoch, alive)
    sub, keep2, cond2 = own(state[key], metrics, epoch, alive & first.keep)
    return {**state, "search": inner, key: sub}, merge_decisions(first, Decision(keep2, cond2))

  return observe


def _wrap(searcher: Searcher, key: str, init_own: Callable, own: Callable) -> Searcher:
  def init(k):
    return {"search": searcher.init(k), key: init_own()}

  def ask(state, k, n):
    s, u = searcher.ask(state["search"], k, n)
    return {**state, "search": s}, u

  def tell(state, u, y, status, *epochs):  # epochs: with searcher.tell_epochs
    return {**state, "search": searcher.tell(state["search"], u, y, status, *epochs)}

  startup_ask = None
  if searcher.startup_ask is not None:
    def startup_ask(state, k, n):
      s, u, ok = searcher.startup_ask(state["search"], k, n)
      return {**state, "search": s}, u, ok

  startup_host = None
  if searcher.startup_host is not None:
    def startup_host(state, k, n):
      out = searcher.startup_host(state["search"], k, n)
      return None if out is None else ({**state, "search": out[0]}, out[1], out[2])

  return Searcher(init, ask, tell, _chain_observe(searcher, key, own), startup_ask,
                  startup_host=startup_host, tell_epochs=searcher.tell_epochs)


def with_pruning(searcher: Searcher, pruner: Pruner) -> Searcher:
  """Adds ``pruner`` to ``searcher``: the engine consults it between training chunks."""

  def own(p, metrics, epoch, alive):
    if pruner.uses not in metrics:
      need = ("several objectives: pass search(..., objectives=[(name, direction), ...])"
              if pruner.uses == "objectives" else f"the epoch metric {pruner.uses!r}")
      raise ValueError(f"pruner: it ranks trials by {need}; the search supplies "
                       f"{sorted(metrics)}")
    p, keep = pruner.prune(p, metrics[pruner.uses], epoch, alive)
    return p, keep, {}

  return _wrap(searcher, "pruner", pruner.init, own)


def with_monitor(searcher: Searcher, stop_on: Sequence[str] = (),
                 thresholds: Mapping[str, float] | None = None) -> Searcher:
  """Adds a training monitor: per epoch it detects the conditions of
  :func:`metaopt.detect_conditions` for every trial and records them with the epoch; trials
  showing a condition named in ``stop_on`` are stopped (recorded with that condition).
  """
  from metaopt._src.monitor import CONDITIONS, detect_conditions

  bad = sorted(set(stop_on) - set(CONDITIONS))
  if bad:
    raise ValueError(f"stop_on={list(stop_on)}: unknown condition(s) {bad}; allowed: "
                     f"{', '.join(CONDITIONS)}")
  stop_on = tuple(stop_on)

  def own(s, metrics, epoch, alive):
    del epoch
    cond = detect_conditions(metrics, thresholds)
    keep = jnp.ones_like(alive)
    for c in stop_on:
      keep = keep & ~cond[c]
    # trials that failed in this epoch still get their conditions recorded (the why)
    seen = alive | jnp.asarray(metrics["nonfinite_loss"], bool) \
        | jnp.asarray(metrics["nonfinite_params"], bool)
    return s, keep, {c: v & seen for c, v in cond.items()}

  return _wrap(searcher, "monitor", lambda: {}, own)


def median_pruner(n_epochs: int, warmup_epochs: int = 1, capacity: int = 4096,
                  min_trials: int = 4) -> Pruner:
  """Stops a trial whose value after an epoch is worse than the median of all trials that
  reached that epoch (earlier rounds and the current population), as Optuna's MedianPruner.

  Args:
    n_epochs: the most epochs a trial trains (sizes the history).
    warmup_epochs: epochs before any pruning.
    capacity: trials remembered per epoch.
    min_trials: fewest values at an epoch before it prunes.
  """
  for name, v, lo in (("n_epochs", n_epochs, 1), ("warmup_epochs", warmup_epochs, 0),
                      ("capacity", capacity, 1), ("min_trials", min_trials, 1)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")

  def init():
    return {"hist": jnp.full((n_epochs, capacity), jnp.nan), "count": jnp.zeros(n_epochs,
                                                                               jnp.int32)}

  def prune(state, values, epoch, alive):
    e = jnp.clip(epoch, 0, n_epochs - 1)
    row, c = state["hist"][e], state["count"][e]
    slots = (c + jnp.cumsum(alive) - 1) % capacity
    vals = jnp.where(alive & jnp.isfinite(values), values, jnp.nan)
    row = row.at[jnp.where(alive, slots, capacity)].set(vals, mode="drop")
    c = c + jnp.sum(alive)
    med = jnp.nanmedian(row)
    enough = jnp.sum(jnp.isfinite(row)) >= min_trials
    worse = (values > med) | ~jnp.isfinite(values)
    keep = ~(alive & worse & enough & (epoch >= warmup_epochs))
    return {"hist": state["hist"].at[e].set(row), "count": state["count"].at[e].set(c)}, keep

  return Pruner(init, prune)
