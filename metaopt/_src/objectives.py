"""Several objectives in the search loop: which names a study may declare, their values per
trial (recorded in the store and told to the searcher as ``y[n, m]``, each minimised), and
their running values between epochs (``metrics['objectives']`` for multi-objective pruners).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src.types import COMPLETE, FAILED, STATUS_NAMES, Searcher

OBJECTIVES = {
    "flops": "training FLOPs of the trial, summed over its epochs",
    "device_seconds": "device-seconds of the trial, summed over its epochs",
    "live_weights": "live (unmasked) weights of the trial's model",
    "<metric>": "any recorded epoch metric at the trial's last epoch, e.g. valid_accuracy; a "
                "bare task metric name such as accuracy means valid_<name>",
}


def check_objectives(objectives, program: Searcher, dim: int,
                     task: Any = None) -> list[tuple[str, str]] | None:
  """Validated ``[(name, direction), ...]``; checks (by tracing, nothing compiles) that
  ``program.tell`` takes ``y[n, m]``, and that ``live_weights`` has a task to count them."""
  if objectives is None:
    return None
  ok = isinstance(objectives, (list, tuple)) and len(objectives) >= 1 and all(
      isinstance(o, (list, tuple)) and len(o) == 2 and isinstance(o[0], str) and o[0]
      for o in objectives)
  if not ok:
    raise ValueError(f"objectives={objectives!r}: must be a non-empty list of (name, "
                     "direction) pairs, e.g. [('valid_accuracy', 'maximize'), ('flops', "
                     "'minimize')]")
  out = [(str(n), str(d)) for n, d in objectives]
  for n, d in out:
    if d not in ("maximize", "minimize"):
      raise ValueError(f"objectives: direction {d!r} of {n!r}: allowed values are "
                       "'maximize', 'minimize'")
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f"objectives: names {names} repeat")
  if "live_weights" in names and task is None:
    raise ValueError("objectives: 'live_weights' counts a task model's weights; this "
                     "evaluator has no task (use a tasks.Task or another objective)")
  m, n = len(out), len(out) + 2
  try:
    state = jax.eval_shape(lambda: program.init(jax.random.key(0)))  # traced: no compile
    jax.eval_shape(program.tell, state, jax.ShapeDtypeStruct((n, dim), jnp.float32),
                   jax.ShapeDtypeStruct((n, m), jnp.float32),
                   jax.ShapeDtypeStruct((n,), jnp.int32))
  except Exception as e:  # noqa: BLE001 - any failure means the searcher is single-objective
    raise ValueError(f"objectives: the searcher cannot be told {m} objectives per trial "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); use one built "
                     f"for them with n_objectives={m} (nsga2, motpe, parego) or random / "
                     "sobol / halton") from None
  return out


def _metric(m: Mapping[str, Any], name: str, keys: Mapping[str, str] | None):
  if keys and name in keys:
    return m.get(keys[name])
  return m.get(name, m.get(f"valid_{name}"))


def objective_values(store: Any, study_id: int, rnd: int, objectives, task: Any, space: Any,
                     keys: Mapping[str, str] | None = None) -> dict[int, list[float | None]]:
  """``{trial number: [value per objective]}`` of one round's trials (None: not recorded).
  ``keys`` maps an objective name to the epoch metric that holds it (overriding the built-in
  meanings of ``flops``, ``device_seconds`` and ``live_weights``)."""
  from metaopt._src.constraints import param_counter
  from metaopt._src.report import trial_compute
  counter = None
  out = {}
  for t in store.trials(study_id):
    if t.round != rnd:
      continue
    comp = trial_compute(t)
    last = t.metrics[-1] if t.metrics else {}
    vals: list[float | None] = []
    for name, _ in objectives:
      if keys and name in keys:
        v = last.get(keys[name])
      elif name in ("flops", "device_seconds"):
        v = comp[name] if t.metrics else None
      elif name == "live_weights":
        if counter is None:
          counter = param_counter(task, space)
        v = float(counter(t.params)) if t.status != "infeasible" else None
      else:
        v = _metric(last, name, None)
      v = None if v is None or not np.isfinite(float(v)) else float(v)
      vals.append(v)
    out[t.number] = vals
  return out


def vector_y(rows, vals, objectives, status: np.ndarray, reasons: list,
             hint: Callable[[list[str]], str] | None = None):
  """``(y[n, m], status, reasons)`` to tell: each objective minimised; a complete trial
  missing a value is marked failed (its y stays NaN; ``hint(missing)`` ends its reason)."""
  sign = np.asarray([-1.0 if d == "maximize" else 1.0 for _, d in objectives], np.float32)
  y = np.full((len(rows), len(objectives)), np.nan, np.float32)
  status, reasons = status.copy(), list(reasons)
  for i, x in enumerate(rows):
    v = vals.get(x["number"])
    if status[i] != COMPLETE:
      continue
    if v is None or any(a is None for a in v):
      missing = [n for (n, _), a in zip(objectives, v or [None] * len(objectives), strict=True)
                 if a is None]
      status[i] = FAILED
      reasons[i] = f"objective(s) {missing} not recorded" + (hint(missing) if hint else "")
      continue
    y[i] = sign * np.asarray(v, np.float32)
  return y, status, reasons


def vector_outcomes(store: Any, study_id: int, rnd: int, rows: list[dict[str, Any]], results,
                    objectives, task: Any, space: Any, keys: Mapping[str, str] | None = None):
  """A finished round's ``(results, y[n, m])``: every objective value recorded in the store,
  and complete trials that miss one turned ``failed`` (with the reason)."""
  vals = objective_values(store, study_id, rnd, objectives, task, space, keys)
  status = np.asarray([STATUS_NAMES.index(s) for _, s, _, _ in results], np.int32)
  recorded = functools.cache(lambda: _recorded_metrics(store, study_id, rnd))  # read if needed
  y, status, reasons = vector_y(rows, vals, objectives, status, [r[3] for r in results],
                                hint=lambda missing: _recorded_hint(missing, recorded()))
  store.record_values({x["id"]: vals[x["number"]] for x in rows if x["number"] in vals})
  results = [(tid, STATUS_NAMES[s], obj, why)
             for (tid, _, obj, _), s, why in zip(results, status, reasons, strict=True)]
  return results, y


def _recorded_metrics(store: Any, study_id: int, rnd: int) -> list[str]:
  """The scalar epoch metrics the round's trials recorded (names an objective may take)."""
  names: set[str] = set()
  for t in store.trials(study_id):
    if t.round == rnd and t.metrics:
      names.update(k for k, v in t.metrics[-1].items()
                   if isinstance(v, (int, float, np.number)) and k != "epoch")
  return sorted(names)


def _recorded_hint(missing: list[str], recorded: list[str]) -> str:
  """The end of a "not recorded" reason: the nearest recorded metric to each missing
  objective, and the metric names that were recorded."""
  import difflib

  if not recorded:
    return ""
  near = [c for n in missing for c in difflib.get_close_matches(n, recorded, 1)]
  hint = f" (did you mean {', '.join(repr(c) for c in near)}?)" if near else ""
  return f"{hint}; recorded metrics: {', '.join(recorded)}"


class RunningObjectives:
  """Each trial's declared objectives after every epoch (minimised; ``inf`` while unknown):
  FLOPs and device-seconds summed so far, live weights, or the epoch's metric."""

  def __init__(self, objectives, params, task: Any, space: Any,
               keys: Mapping[str, str] | None = None):
    self.objectives, self.keys = objectives, dict(keys or {})
    self.sign = np.asarray([-1.0 if d == "maximize" else 1.0 for _, d in objectives])
    self.cum = {"flops": np.zeros(len(params)), "device_seconds": np.zeros(len(params))}
    self.live = None
    if any(n == "live_weights" and n not in self.keys for n, _ in objectives):
      from metaopt._src.constraints import param_counter
      count = param_counter(task, space)
      self.live = np.asarray([float(count(p)) for p in params])

  def update(self, metrics, alive: np.ndarray) -> np.ndarray:
    n = len(metrics)
    y = np.full((n, len(self.objectives)), np.inf)
    for i, m in enumerate(metrics):
      if m is None:
        continue
      self.cum["flops"][i] += float(m.get("flops") or 0.0)
      self.cum["device_seconds"][i] += float(m.get("device_s") or 0.0)
      if not alive[i]:
        continue
      for j, (name, _) in enumerate(self.objectives):
        if name in self.keys:
          v = m.get(self.keys[name])
        elif name in self.cum:
          v = self.cum[name][i]
        elif name == "live_weights":
          v = self.live[i]
        else:
          v = _metric(m, name, None)
        v = np.inf if v is None or not np.isfinite(float(v)) else self.sign[j] * float(v)
        y[i, j] = v
    return y
