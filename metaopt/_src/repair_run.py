"""Runs a repair config (``program = "repair"``): the repair loop from a starting config."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from metaopt._src.store import Store
from metaopt._src.types import Result

_FIELDS = ("name", "program", "task_name", "start", "searcher", "n_trials", "population",
           "epochs", "target", "seed", "table", "ucb")
_FILL = ("random", "tpe", "sobol")


def validate(cfg: Any) -> dict[str, Any]:
  """Checks a ``program = "repair"`` config; returns it as a dict (one ``ValueError``)."""
  cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  unknown = sorted(set(cfg) - set(_FIELDS) - {"store", "batch_size"})
  if unknown:
    raise ValueError(f"config: unknown field(s) {unknown}; allowed: {', '.join(_FIELDS)}")
  if cfg.get("searcher", "random") not in _FILL:
    raise ValueError(f"config field 'searcher' must be one of {', '.join(_FILL)}; "
                     f"got {cfg.get('searcher')!r}")
  return cfg


def lineage(trials: list, direction: str, space_names: list[str],
            defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """Per round after the first: the best model it repaired and the changes each trial made
  (a parameter an action activates at its default, or deactivates, is not a change)."""
  defaults = defaults or {}

  def changed(k, child, parent):
    if k not in child.params:
      return False
    if k not in parent.params:
      v, d = child.params[k], defaults.get(k)
      if isinstance(v, float) and isinstance(d, (int, float)) and not isinstance(d, bool):
        return not math.isclose(v, d, rel_tol=1e-5)  # decoded in float32
      return k not in defaults or v != d
    return child.params[k] != parent.params[k]

  better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
  best = None
  out = []
  for r in sorted({t.round for t in trials}):
    rows = [t for t in trials if t.round == r]
    if best is not None:
      changes = []
      for t in rows:
        diff = {k: t.params.get(k) for k in space_names if changed(k, t, best)}
        changes.append({"trial": t.number, "changes": diff, "objective": t.objective,
                        "status": t.status})
      out.append({"round": r, "parent": best.number, "trials": changes})
    for t in rows:
      if t.status == "complete" and t.objective is not None and math.isfinite(t.objective) \
          and (best is None or better(t.objective, best.objective)):
        best = t
  return out


def trials_to_target(trials: list, target: float, direction: str) -> int | None:
  """How many trials ran (whole rounds) before one reached ``target``; None if none did."""
  hit = [t for t in trials if t.status == "complete" and t.objective is not None
         and (t.objective >= target if direction == "maximize" else t.objective <= target)]
  if not hit:
    return None
  first_round = min(t.round for t in hit)
  return sum(t.round <= first_round for t in trials)


def run_config(cfg: Mapping[str, Any], store: Store, progress: bool = True) -> Result:
  """Repairs ``cfg.start`` on ``cfg.task_name`` until ``cfg.target`` or ``cfg.n_trials``."""
  from metaopt._src.driver import search
  from metaopt._src.monitor import architecture_family
  from metaopt._src.registry import make_searcher
  from metaopt._src.repair import (
    load_table,
    repair,
    repair_space,
    table_applies,
    trial_conditions,
  )
  from metaopt.tasks import get_task

  cfg = validate(cfg)
  task = get_task(cfg["task_name"])
  space = repair_space(task=task)  # only what the task reads
  fill = make_searcher(cfg.get("searcher", "random"), space.dim)
  start = dict(cfg.get("start") or {})
  try:
    space.encode(start)
    for k, v in start.items():
      space.params[k].from_python(v)
  except ValueError as e:
    raise ValueError(f"config field 'start': {e}") from None
  table = load_table(cfg.get("table") or None)  # empty: the shipped table
  family = architecture_family(task, start)
  program = repair(fill, space, start=start, table=table, population=int(cfg["population"]),
                   ucb=float(cfg.get("ucb", 0.05)), family=family)
  res = search(program, task, space=space, n_trials=int(cfg["n_trials"]),
               population=int(cfg["population"]), epochs=int(cfg["epochs"]),
               batch_size=int(cfg.get("batch_size", 32)), seed=int(cfg["seed"]), store=store,
               study=cfg["name"], config=cfg, progress=progress,
               target=cfg.get("target"))
  rec = store.load_study(cfg["name"])
  steps = lineage(res.trials, task.direction, space.names,
                  {n: p.default for n, p in space.params.items()
                   if getattr(p, "default", None) is not None})
  for s in steps:
    parent = next(t for t in res.trials if t.number == s["parent"])
    store.log_event(rec.id, "repair", f"round {s['round']}: repaired trial #{s['parent']} "
                    f"(conditions: {', '.join(trial_conditions(parent.metrics)) or 'none'}) "
                    f"with {[t['changes'] for t in s['trials']]}")
  out: dict[str, Any] = {}
  out["start_conditions"] = trial_conditions(res.trials[0].metrics) if res.trials else []
  out["family"] = family
  out["table_used"] = table_applies(table, family)  # else: random actions, learnt online
  out["target"] = cfg.get("target")
  if cfg.get("target") is not None:
    out["trials_to_target"] = trials_to_target(res.trials, cfg["target"], task.direction)
  out["repairs"] = steps
  out["store"] = store.url
  return dataclasses.replace(res, program="repair", info=out)
