"""Shared types of metaopt: the search-program protocols, trial statuses and ``Result``.

A black-box search program is a :class:`Searcher`: a NamedTuple of pure functions over a
pytree state, in the style of ``optax.GradientTransformation``::

    state = searcher.init(key)
    state, u = searcher.ask(state, key, n)        # u: [n, d] points in the unit cube
    state = searcher.tell(state, u, y, status)    # y: [n] objectives, *minimised*

``n`` is static; everything else is traced, so ``ask``/``tell`` run under ``jit`` and
inside ``lax.scan``. Searchers minimise; the driver negates objectives a task maximises.
Only trials with ``status == COMPLETE`` carry a meaningful ``y``.

A searcher may carry an ``observe`` function that the search loop calls between chunks
(epochs) with the population's epoch metrics; pruners (``with_pruning``), monitors
(``with_monitor``) and PBT are observers::

    state, decision = searcher.observe(state, metrics, epoch, alive)

``metrics`` maps names to arrays of shape ``[n]`` (``objective`` is the minimised valid
objective, ``objective_delta`` its change since the previous epoch, plus the trial telemetry);
``decision`` is a :class:`Decision`: ``keep[n]`` is False for trials to stop now,
``conditions`` maps condition names to ``[n]`` booleans recorded with the epoch, and PBT sets
``copy_from`` (exploit) and ``u`` (explore).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any

COMPLETE, FAILED, PRUNED, INFEASIBLE, RUNNING = 0, 1, 2, 3, 4
STATUS_NAMES = ("complete", "failed", "pruned", "infeasible", "running")


class Decision(NamedTuple):
  """What an observer (pruner, monitor, PBT) decides after an epoch, for ``n`` trials.

  Attributes:
    keep: ``[n]`` False for trials to stop now.
    conditions: name -> ``[n]`` booleans, recorded with each trial's epoch (e.g. the
      monitor's ``vanishing``, PBT's ``exploited``).
    copy_from: ``[n]`` PBT exploit: trial ``i`` continues from trial ``copy_from[i]``'s
      weights and optimizer state (``-1``: its own); None when nothing is copied.
    u: ``[n, d]`` PBT explore: the points trials continue with; None to keep theirs.
  """

  keep: jax.Array
  conditions: dict[str, jax.Array] | None = None
  copy_from: jax.Array | None = None
  u: jax.Array | None = None


def merge_decisions(a: Decision, b: Decision) -> Decision:
  """Both observers' decisions: a trial stops if either stops it; ``b``'s PBT wins."""
  return Decision(a.keep & b.keep, {**(a.conditions or {}), **(b.conditions or {})},
                  b.copy_from if b.copy_from is not None else a.copy_from,
                  b.u if b.u is not None else a.u)


class Searcher(NamedTuple):
  """A black-box search program over ``[0, 1]^dim``.

  ``startup_ask`` is optional: ``(state, key, n) -> (state, u, ok)``, a cheap-to-compile
  ``ask`` for searchers whose first proposals ignore their model (random or Sobol points
  before ``n_startup`` observations). When ``ok`` is true, ``(state, u)`` is exactly what
  ``ask(state, key, n)`` returns, so the engine can skip compiling ``ask`` until the model
  is used.

  ``ask_static`` is optional: ``(state) -> int``, a host function of a concrete state giving
  ``ask`` a fourth, static argument, ``ask(state, key, n, ask_static(state))``, for searchers
  whose ``ask`` holds code paths selected by the state (GP-BO: one per bucket of observation
  counts). With it, ``ask`` compiles only the path this state takes (the same proposals, bit
  for bit); without it (``ask(state, key, n)``, e.g. inside a user's ``jit``) every path.

  ``startup_host`` is optional: ``startup_ask``'s twin on the host, ``(state, key, n) ->
  (state, u, ok)`` of concrete values (numpy), the same values bit for bit, or None where it
  cannot make them (e.g. another PRNG implementation); the engine calls it instead of
  compiling ``startup_ask``.

  ``tell_epochs``: when True, the engine calls ``tell(state, u, y, status, epochs)`` with
  ``epochs[n]`` (int32) the epochs each trial trained (a pruned trial's ``y`` is its value
  after its last one; 0 where the engine does not know, e.g. :meth:`Study.tell`). Searchers
  that rank pruned trials by how far they got (``tpe(pruned="rank")``) set it.
  """

  init: Callable[[jax.Array], PyTree]
  ask: Callable[[PyTree, jax.Array, int], tuple[PyTree, jax.Array]]
  tell: Callable[[PyTree, jax.Array, jax.Array, jax.Array], PyTree]
  observe: Callable[..., tuple[PyTree, Decision]] | None = None
  startup_ask: Callable[[PyTree, jax.Array, int], tuple[PyTree, jax.Array, jax.Array]] | None \
      = None
  ask_static: Callable[[PyTree], int] | None = None
  startup_host: Callable[[PyTree, jax.Array, int], tuple[PyTree, Any, Any] | None] | None = None
  tell_epochs: bool = False


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
  values: list[float | None] | None = None  # one per declared objective (several objectives)

  @property
  def value(self) -> float | None:
    """The objective (Optuna's name for it)."""
    return self.objective


@dataclasses.dataclass
class Result:
  """What every program returns: its trials, the best one, and its own state.

  Attributes:
    study: the study's name in the store.
    direction: ``"minimize"`` or ``"maximize"``.
    trials: every recorded trial.
    state: the program's final state (a searcher's state, for resumption), or None.
    program: which program made it (``"search"``, ``"whitebox"``, ``"nas"``, ``"lopt"``,
      ``"repair"``).
    info: the program's own summary (e.g. NAS: the genotype and test accuracy); it is part
      of :meth:`summary`, and ``result["key"]`` reads a summary field.
    objectives: several objectives ``[(name, direction), ...]`` (None: one). Such a study
      also gives its Pareto front (:meth:`pareto_front`) and the front's hypervolume
      (:meth:`hypervolume`).
  """

  study: str
  direction: str
  trials: list[Trial]
  state: PyTree = None
  program: str = "search"
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  objectives: list[tuple[str, str]] | None = None

  def _front_data(self):
    import numpy as np
    done = [t for t in self.trials if t.status == "complete" and t.values is not None
            and len(t.values) == len(self.objectives or ())
            and all(v is not None for v in t.values)]
    sign = np.asarray([-1.0 if d == "maximize" else 1.0 for _, d in self.objectives or ()])
    y = np.asarray([t.values for t in done], np.float64).reshape(len(done), len(sign)) * sign
    return done, y, sign

  def pareto_front(self) -> list[Trial]:
    """The complete trials no other complete trial dominates on all objectives."""
    import numpy as np
    if not self.objectives:
      raise ValueError("pareto_front: this study has a single objective; declare "
                       "objectives=[(name, direction), ...] to search several")
    done, y, _ = self._front_data()
    if not done:
      return []
    le = np.all(y[:, None, :] <= y[None, :, :], axis=-1)
    lt = np.any(y[:, None, :] < y[None, :, :], axis=-1)
    dominated = np.any(le & lt, axis=0)
    return [t for t, d in zip(done, dominated, strict=True) if not d]

  def reference_point(self) -> list[float]:
    """Default hypervolume reference: per objective the worst complete value, moved out by
    10% of the observed range (in each objective's own direction)."""
    import numpy as np
    _, y, sign = self._front_data()
    if y.shape[0] == 0:
      return []
    lo, hi = y.min(axis=0), y.max(axis=0)
    ref = hi + 0.1 * np.maximum(hi - lo, 1e-12 * np.maximum(np.abs(hi), 1.0))
    return (ref * sign).tolist()

  def hypervolume(self, ref: list[float] | None = None) -> float:
    """Hypervolume of the complete trials' objective values, bounded by ``ref`` (given in the
    objectives' own units and directions; default :meth:`reference_point`)."""
    import numpy as np

    from metaopt._src.multiobjective import hypervolume
    if not self.objectives:
      raise ValueError("hypervolume: this study has a single objective")
    _, y, sign = self._front_data()
    if y.shape[0] == 0:
      return 0.0
    ref = self.reference_point() if ref is None else ref
    if len(ref) != len(sign):
      raise ValueError(f"hypervolume: ref has {len(ref)} values; the study has "
                       f"{len(sign)} objectives")
    return hypervolume(y, np.asarray(ref, np.float64) * sign)

  @property
  def best(self) -> Trial | None:
    done = [t for t in self.trials if t.status == "complete" and t.objective is not None]
    if not done:
      return None
    pick = max if self.direction == "maximize" else min
    return pick(done, key=lambda t: t.objective)

  def count(self, status: str) -> int:
    """How many trials have ``status`` (``complete``, ``failed``, ``pruned``, ...)."""
    return sum(t.status == status for t in self.trials)

  def summary(self) -> dict[str, Any]:
    """The JSON report: counts, the best trial and the program's own summary."""
    b = self.best
    out = {
        "study": self.study,
        "direction": self.direction,
        "n_trials": len(self.trials),
        "n_complete": self.count("complete"),
        "n_failed": self.count("failed"),
        "n_pruned": self.count("pruned"),
        "n_running": self.count("running"),
        "best": None if b is None else {"number": b.number, "params": b.params,
                                        "objective": b.objective, "seed": b.seed},
        **(self._multi_summary() if self.objectives else {}),
    }
    if self.program != "search":
      out["program"] = self.program
    return {**out, **self.info}

  def __getitem__(self, key: str) -> Any:
    return self.summary()[key]

  def _multi_summary(self) -> dict[str, Any]:
    ref = self.reference_point()
    return {
        "objectives": [{"name": n, "direction": d} for n, d in self.objectives],
        "objectives_front": [{"number": t.number, "params": t.params, "values": t.values}
                             for t in sorted(self.pareto_front(), key=lambda t: t.values)],
        "hypervolume": self.hypervolume(ref) if ref else 0.0,
        "reference_point": ref,
    }
