"""Shared types of metaopt: the search-program protocols, trial statuses and ``Result``.

A black-box search program is a :class:`Searcher`: a NamedTuple of pure functions over a
pytree state, in the style of ``optax.GradientTransformation``::

    state = searcher.init(key)
    state, u = searcher.ask(state, key, n)        # u: [n, d] points in the unit cube
    state = searcher.tell(state, u, y, status)    # y: [n] objectives, *minimised*

``n`` is static; everything else is traced, so ``ask``/``tell`` run under ``jit`` and
inside ``lax.scan``. Searchers minimise; the driver negates objectives a task maximises.
Only trials with ``status == COMPLETE`` carry a meaningful ``y``.

A searcher may carry an ``observe`` function that the population engine calls between
chunks (epochs) with the population's epoch metrics; pruners (``with_pruning``) and monitors
(``with_monitor``) are observers::

    state, keep, info = searcher.observe(state, metrics, epoch, alive)

``metrics`` maps names to arrays of shape ``[n]`` (``objective`` is the minimised valid
objective, ``objective_delta`` its change since the previous epoch, plus the trial telemetry);
``keep[n]`` is False for trials to stop now, and ``info`` maps condition names to ``[n]``
boolean arrays that are recorded with the epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any

COMPLETE, FAILED, PRUNED, INFEASIBLE, RUNNING = 0, 1, 2, 3, 4
STATUS_NAMES = ("complete", "failed", "pruned", "infeasible", "running")


class Searcher(NamedTuple):
  """A black-box search program over ``[0, 1]^dim``.

  ``startup_ask`` is optional: ``(state, key, n) -> (state, u, ok)``, a cheap-to-compile
  ``ask`` for searchers whose first proposals ignore their model (random or Sobol points
  before ``n_startup`` observations). When ``ok`` is true, ``(state, u)`` is exactly what
  ``ask(state, key, n)`` returns, so the engine can skip compiling ``ask`` until the model
  is used.
  """

  init: Callable[[jax.Array], PyTree]
  ask: Callable[[PyTree, jax.Array, int], tuple[PyTree, jax.Array]]
  tell: Callable[[PyTree, jax.Array, jax.Array, jax.Array], PyTree]
  observe: Callable[..., tuple[PyTree, jax.Array, dict]] | None = None
  startup_ask: Callable[[PyTree, jax.Array, int], tuple[PyTree, jax.Array, jax.Array]] | None \
      = None


class Pruner(NamedTuple):
  """Early stopping between chunks; ``prune(state, values, epoch, alive) -> (state, keep)``.

  ``values`` is the population metric named by ``uses``: by default ``objective[n]``, the
  current objective values (minimised) after ``epoch``; ``objective_history[n, epochs]`` for
  pruners that look at whole curves. ``alive[n]`` marks trials still training. ``keep`` is
  False for trials to stop now.
  """

  init: Callable[[], PyTree]
  prune: Callable[[PyTree, jax.Array, jax.Array, jax.Array], tuple[PyTree, jax.Array]]
  uses: str = "objective"


@dataclasses.dataclass
class Trial:
  """One recorded trial."""

  number: int
  params: dict[str, Any]
  status: str
  objective: float | None
  seed: int
  round: int = 0
  metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  failure_reason: str | None = None
  checkpoint_path: str | None = None
  u: list[float] | None = None
  duration_s: float | None = None

  @property
  def value(self) -> float | None:
    """The objective (Optuna's name for it)."""
    return self.objective


@dataclasses.dataclass
class Result:
  """What every search program returns: its trials, the best one, and its own state."""

  study: str
  direction: str
  trials: list[Trial]
  state: PyTree = None

  @property
  def best(self) -> Trial | None:
    done = [t for t in self.trials if t.status == "complete" and t.objective is not None]
    if not done:
      return None
    pick = max if self.direction == "maximize" else min
    return pick(done, key=lambda t: t.objective)

  def count(self, status: str) -> int:
    return sum(t.status == status for t in self.trials)

  def summary(self) -> dict[str, Any]:
    """The JSON report: counts and the best trial."""
    b = self.best
    return {
        "study": self.study,
        "direction": self.direction,
        "n_trials": len(self.trials),
        "n_complete": self.count("complete"),
        "n_failed": self.count("failed"),
        "n_pruned": self.count("pruned"),
        "n_running": self.count("running"),
        "best": None if b is None else {"number": b.number, "params": b.params,
                                        "objective": b.objective, "seed": b.seed},
    }
