"""Constraints on trials, checked before anything trains (Optuna-style: feasible iff <= 0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from metaopt.spaces import Space
from metaopt.tasks import Task


def param_counter(task: Task, space: Space | None = None) -> Callable[[dict[str, Any]], int]:
  """``params -> number of live weights`` of the model a trial with those params trains
  (masked units are not counted)."""
  space = task.space if space is None else space
  inits: dict[tuple, Any] = {}

  def count(params: dict[str, Any]) -> int:
    h = space.decode(space.encode(params))
    structure = {**task.defaults, **{n: params[n] for n in space.structural if n in params}}
    k = tuple(sorted(structure.items()))
    if k not in inits:
      inits[k] = jax.jit(task.build(structure).init)
    state = inits[k](jax.random.key(0), h)
    tree = state["live"] if state.get("live") is not None else state["params"]
    if state.get("live") is not None:
      return int(sum(np.sum(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)))
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))

  return count


def max_params(task: Task, budget: int, space: Space | None = None
               ) -> Callable[[dict[str, Any]], float]:
  """A constraint: the trial's model has at most ``budget`` live weights."""
  if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
    raise ValueError(f"budget={budget!r}: must be an integer >= 1 (number of weights)")
  count = param_counter(task, space)
  return lambda params: float(count(params) - budget)
