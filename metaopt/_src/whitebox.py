"""Runs a white-box (gradient-based HPO) config and records it in the trial store.

Each member of the population is a trial; each outer step is recorded as one "epoch" of
its history (validation and training loss, hypergradient norm, the hyperparameters in
effect and the pathology flags). When the diagnostics say a member's hypergradients cannot
be trusted, the store gets a ``fallback`` event naming the step and the reason.

Fallback (config field ``fallback``, default ``"tpe"``; ``"none"`` turns it off): when any
member's hypergradients could not be trusted, the program hands its space (the tuned
hyperparameters, one bounded coordinate each) and its history (every member's outer steps,
told to the searcher as observations) to a black-box searcher, which goes on for
``fallback_trials`` more trials on the same objective (validation loss after the same inner
training, a population evaluated in one ``jit(vmap)``). Those trials are recorded in the
same study from round 1 on, and a ``switch`` event records when and why. With
``fallback="repair"`` the black-box stage is the repair loop: it repairs the best white-box
point with generic actions on the space (x10 / x3 / /3 / /10 on log-scale hyperparameters,
:func:`metaopt.repair.space_actions`), top-k at a time, priorities learnt online, and TPE
fills slots no untried action is left for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from metaopt._src.provenance import code_version, hardware
from metaopt._src.store import Store
from metaopt._src.types import Result


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  if hasattr(tree, "_asdict"):
    return _flat(tree._asdict(), prefix)
  return {prefix[:-1]: tree}


_REQUIRED = ("name", "problem_name", "method", "population", "seed", "inner_steps",
             "outer_steps", "tune")


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
  """Checks a ``program = "whitebox"`` (gradient HPO) config; returns it as a dict."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  missing = [f for f in _REQUIRED if f not in cfg]
  if missing:
    raise ValueError(f"config: missing field(s) {missing} of a white-box config "
                     f"(fields: {', '.join(_REQUIRED)})")
  fallback = cfg.get("fallback", "tpe")
  if fallback not in ("none", "repair"):
    from metaopt._src.registry import SEARCHERS
    if fallback not in SEARCHERS:
      raise ValueError(f"config field 'fallback' must be 'none', 'repair' or one of "
                       f"{', '.join(SEARCHERS)}; got {fallback!r}")
  for f in ("population", "inner_steps", "outer_steps"):
    v = cfg[f]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"config field {f!r}={v!r}: must be an int >= 1")
  # the problem, bijectors and estimator as run_whitebox builds them (no compile): a bad
  # method, tune name or estimator option fails here, before the study is created
  from metaopt import hypergrad
  try:
    hypergrad.build(cfg)
  except ValueError as e:
    raise ValueError(f"config: {e}") from None
  except TypeError as e:  # an estimator / online option the method does not take
    raise ValueError(f"config field 'estimator' (or 'online'): {e}") from None
  return cfg


def run_config(config: Mapping[str, Any], store: Store, progress: bool = True) -> Result:
  """Runs a white-box config into ``store``; the :class:`Result`'s ``info`` is the
  hypergradient run's summary (and its fallback's)."""
  del progress  # one compiled outer step per recorded epoch
  cfg = validate(config)
  info = run_whitebox(cfg, store)
  rec = store.load_study(cfg["name"])
  return Result(rec.name, "minimize", store.trials(rec.id), None, "whitebox", info)


def _member_starts(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Each population member's starting hyperparameters (the config's ``init`` spread by
  ``init_spread``; member 0 starts at ``init`` itself), as plain Python values."""
  from metaopt import hypergrad

  _, theta0, spec = hypergrad.build(cfg)
  h0 = hypergrad.to_hparams(theta0, spec)
  # the shortest decimal of the float32 (0.01, not 0.009999999776482582)
  clean = lambda a: float(str(np.float32(a))) if np.ndim(a) == 0 else [clean(x) for x in a]
  return [{k: clean(np.asarray(v)[i]) for k, v in sorted(h0.items())}
          for i in range(int(cfg["population"]))]


def run_whitebox(config: Mapping[str, Any], store: Store) -> dict[str, Any]:
  """Runs ``metaopt.hypergrad.run_config(config)`` recording every outer step in ``store``."""
  from metaopt import hypergrad

  cfg = validate(config)
  n = int(cfg["population"])
  rec = store.create_study(cfg["name"], direction="minimize", config=cfg, seed=cfg["seed"],
                           code_version=code_version(),
                           data_version={"problem": cfg["problem_name"],
                                         **dict(cfg.get("problem", {}))},
                           hardware=hardware())
  ids = store.start_round(rec.id, 0, [
      {"number": i, "params": {"init": start, "member": i}, "seed": int(cfg["seed"])}
      for i, start in enumerate(_member_starts(cfg))], b"")
  fallback_reported: set[int] = set()
  last: dict[int, float] = {}

  def on_step(step: int, tel: dict) -> None:
    flat = _flat({k: v for k, v in tel.items() if k in ("val_loss", "train_loss",
                                                         "hypergrad_norm", "hparams",
                                                         "applied", "pathologies")})
    rows = []
    for i in range(n):
      rows.append({k: np.asarray(v)[i] for k, v in flat.items() if np.ndim(v) >= 1})
      last[i] = float(np.asarray(tel["val_loss"])[i])
      fb = flat.get("pathologies.fallback")
      if fb is not None and bool(np.asarray(fb)[i]) and i not in fallback_reported:
        fallback_reported.add(i)
        why = [k.split(".")[-1] for k, v in flat.items()
               if k.startswith("pathologies.") and k != "pathologies.fallback"
               and np.ndim(v) >= 1 and bool(np.asarray(v)[i])]
        store.log_event(rec.id, "fallback", f"member {i} at outer step {step}: "
                        f"hypergradient untrustworthy ({', '.join(why) or 'unknown'})")
    store.record_epoch(ids, step, rows)

  history: list[tuple[dict, np.ndarray]] = []
  record_step = on_step

  def on_step(step: int, tel: dict) -> None:  # noqa: F811 - also keeps the history
    history.append(({k: np.asarray(v) for k, v in tel["hparams"].items()},
                    np.asarray(tel["val_loss"], np.float64)))
    record_step(step, tel)

  fallback = cfg.get("fallback", "tpe")
  summary = hypergrad.run_config(cfg, on_step=on_step)
  results = []
  for i, tid in enumerate(ids):
    v = last.get(i)
    ok = v is not None and math.isfinite(v)
    results.append((tid, "complete" if ok else "failed", v if ok else None,
                    None if ok else "non-finite validation loss"))
  store.end_round(rec.id, 0, results, b"", duration_s=summary.get("seconds"))
  if fallback_reported and fallback != "none":
    store.log_event(rec.id, "switch", f"white-box -> {fallback}: hypergradients of members "
                    f"{sorted(fallback_reported)} untrustworthy; black-box search goes on "
                    f"from {sum(len(v) for _, v in history)} white-box observations")
    summary["fallback"] = blackbox_fallback(cfg, store, rec.id, history, fallback)
  summary["store"] = store.url
  summary["fallback_members"] = sorted(fallback_reported)
  return summary


def fallback_space(cfg: Mapping[str, Any]):
  """One bounded coordinate per tuned hyperparameter (a whole per-layer or per-feature leaf
  shares one value): log-scale ``[v/100, 100 v]`` around the start ``v`` for ``log``
  bijectors, ``[1e-3, 0.999]`` for ``logit``, ``[v - 1, v + 1]`` otherwise; the config's
  ``fallback_bounds`` ({name: [lo, hi, log]}) overrides."""
  from metaopt import hypergrad
  from metaopt.spaces import Float, Space

  problem = hypergrad.get_problem(cfg["problem_name"], **dict(cfg.get("problem", {})))
  init = dict(cfg.get("init", {}))
  bounds = dict(cfg.get("fallback_bounds", {}))
  params = {}
  for name in cfg["tune"]:
    if name in bounds:
      lo, hi, log = bounds[name]
      params[name] = Float(float(lo), float(hi), log=bool(log))
      continue
    v = float(init.get(name, np.mean(np.asarray(problem.hparams[name]))))
    kind = problem.spec[name] if isinstance(problem.spec[name], str) else problem.spec[name].name
    if kind == "log":
      params[name] = Float(v / 100.0, v * 100.0, log=True)
    elif kind == "logit":
      params[name] = Float(1e-3, 0.999)
    else:
      params[name] = Float(v - 1.0, v + 1.0)
  return Space(params)


def blackbox_fallback(cfg: Mapping[str, Any], store: Store, study_id: int,
                      history: list[tuple[dict, np.ndarray]], searcher_name: str
                      ) -> dict[str, Any]:
  """Runs the black-box stage of a white-box program through the search loop (rounds 1..
  of the same study, the white-box history told first); returns its summary."""
  import tempfile

  import jax
  import jax.numpy as jnp

  from metaopt import hypergrad
  from metaopt._src import loop
  from metaopt._src.evaluators import JaxEvaluator
  from metaopt._src.registry import make_searcher

  problem = hypergrad.get_problem(cfg["problem_name"], **dict(cfg.get("problem", {})))
  space = fallback_space(cfg)
  names = list(space.names)
  steps = int(cfg["inner_steps"])
  inner = hypergrad.optax_inner_loop(problem.train_loss, problem.optimizer)

  def objective(h, key):
    full = {**problem.hparams}
    for n in names:
      full[n] = jnp.broadcast_to(h[n], jnp.shape(problem.hparams[n])).astype(
          jnp.result_type(problem.hparams[n]))
    k_init, k_data = jax.random.split(key)
    state, _ = hypergrad.run_inner(inner, full, problem.init_params(k_init),
                                   problem.sample(k_data, steps))
    return {"val_loss": problem.val_loss(inner.params(state), full)}

  pop = int(cfg.get("fallback_population", cfg["population"]))
  if searcher_name == "repair":  # repair the best white-box point, TPE fills spare slots
    from metaopt._src.repair import repair, space_actions
    # no training telemetry here for its monitor: it repairs from the objectives alone
    searcher = repair(make_searcher("tpe", space.dim), space, actions=space_actions(space),
                      table=None, population=pop)._replace(observe=None)
  else:
    searcher = make_searcher(searcher_name, space.dim)
  ev = JaxEvaluator(objective, objective="val_loss", space=space)
  env = loop.RoundEnv(ev, loop.searcher_fns(searcher, space), space, store, 1, 1.0)
  key = jax.random.key(int(cfg["seed"]) + 7)
  # the white-box history: every member at every outer step is one observation
  u_hist, y_hist = [], []
  for hp, val in history:
    for i in range(val.shape[0]):
      point = {n: float(np.mean(hp[n][i])) for n in names}
      point = {n: min(max(v, space.params[n].lo), space.params[n].hi) for n, v in point.items()}
      u_hist.append(space.encode(point))
      y_hist.append(val[i])
  state = loop.warm_start(env, searcher.init(key), np.asarray(u_hist), np.asarray(y_hist), pop)
  n_total, first = int(cfg.get("fallback_trials", 16)), int(cfg["population"])
  ckpt_root = tempfile.mkdtemp(prefix="metaopt-fallback-")
  best: dict[str, Any] | None = None
  number, rnd = first, 1
  while number - first < n_total:
    n = min(pop, n_total - (number - first))
    plan = loop.RoundPlan(study_id, rnd, list(range(number, number + n)),
                          jax.random.fold_in(key, rnd), jax.random.fold_in(key, 10_000 + rnd),
                          f"{ckpt_root}/round_{rnd:05d}", int(cfg["seed"]),
                          label=lambda p: {**p, "stage": searcher_name})
    state, results, batch = loop.one_round(env, state, plan)
    b = loop.best_of(results, "minimize")
    if b is not None and (best is None or b[1] < best["val_loss"]):
      best = {"number": number + b[0], "val_loss": b[1], "params": batch.params[b[0]]}
    number, rnd = number + n, rnd + 1
  return {"searcher": searcher_name, "trials": n_total, "observations": len(u_hist),
          "space": names, "best": best}
