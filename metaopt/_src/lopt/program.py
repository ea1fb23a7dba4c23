"""``run_config``: the ``program = "lopt"`` configs of ``run.py`` (meta-train or apply).

``mode = "meta_train"`` meta-trains a learned optimizer on task families and records one
trial per run in the store (one history row every ``log_every`` outer steps: meta-loss per
family, meta-gradient norm, seconds); the whole meta-training state is checkpointed with
orbax in ``checkpoint_dir`` every ``checkpoint_every`` steps, and restarting the same config
resumes it exactly (the study and trial are reused). The meta-parameters are saved to
``output``.

``mode = "apply"`` loads the meta-parameters at ``meta_params`` as an optax transform and
trains one task of ``family`` (trial 0: the learned optimizer; trial 1: Adam at
``baseline_lr``), recording both learning curves.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from metaopt._src.lopt.apply import fit
from metaopt._src.lopt.estimators import ESTIMATORS
from metaopt._src.lopt.export import LOPTS, load_meta_params, make_lopt, save
from metaopt._src.lopt.problem import META_LOSSES, make_problem
from metaopt._src.lopt.train import meta_train, meta_trainer
from metaopt._src.provenance import code_version, hardware
from metaopt._src.store import Store
from metaopt._src.types import Result

MODES: tuple[str, ...] = ("meta_train", "apply")
_POSITIVE_INT = ("num_tasks", "horizon", "unroll_length", "outer_steps", "checkpoint_every",
                 "log_every", "num_steps", "eval_every")
_POSITIVE_FLOAT = ("sigma", "meta_lr", "clip", "baseline_lr")


def _families() -> tuple[str, ...]:
  from metaopt.tasks import FAMILIES
  return FAMILIES


def _allowed(field: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"config field {field!r}={value!r}: allowed values are "
                     f"{', '.join(allowed)}")


def validate(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Checks a lopt config; raises one ``ValueError`` naming the field and allowed values."""
  cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  for f in ("name", "seed", "mode"):
    if f not in cfg:
      raise ValueError(f"config field {f!r} is missing")
  _allowed("mode", cfg["mode"], MODES)
  for f in _POSITIVE_INT:
    if f in cfg and (not isinstance(cfg[f], int) or cfg[f] < 1):
      raise ValueError(f"config field {f!r}={cfg[f]!r}: must be an integer >= 1")
  for f in _POSITIVE_FLOAT:
    if f in cfg and not (isinstance(cfg[f], int | float) and cfg[f] > 0):
      raise ValueError(f"config field {f!r}={cfg[f]!r}: must be a number > 0")
  if cfg["mode"] == "meta_train":
    _allowed("lopt_name", cfg.get("lopt_name"), tuple(LOPTS))
    _allowed("estimator", cfg.get("estimator"), ESTIMATORS)
    _allowed("meta_loss", cfg.get("meta_loss"), META_LOSSES)
    fams = cfg.get("families")
    if isinstance(fams, str) or not fams:
      raise ValueError(f"config field 'families'={fams!r}: a non-empty tuple of names from "
                       f"{', '.join(_families())}")
    for f in fams:
      _allowed("families", f, _families())
    for f in ("horizon", "unroll_length", "outer_steps", "output"):
      if f not in cfg:
        raise ValueError(f"config field {f!r} is missing")
    if cfg["horizon"] % cfg["unroll_length"]:
      raise ValueError(f"config fields 'horizon'={cfg['horizon']} and 'unroll_length'="
                       f"{cfg['unroll_length']}: unroll_length must divide horizon")
    try:
      make_lopt(cfg["lopt_name"], **dict(cfg.get("lopt") or {}))
    except TypeError as e:
      raise ValueError(f"config field 'lopt': {e}") from None
  else:
    _allowed("family", cfg.get("family"), _families())
    path = cfg.get("meta_params")
    if not path or not os.path.isdir(path):
      raise ValueError(f"config field 'meta_params'={path!r}: no saved learned optimizer "
                       "there; run configs/lopt_meta_train.py first (it writes its "
                       "'output' directory) or point meta_params at one")
    if cfg["num_steps"] % cfg["eval_every"]:
      raise ValueError(f"config fields 'num_steps'={cfg['num_steps']} and 'eval_every'="
                       f"{cfg['eval_every']}: eval_every must divide num_steps")
  return cfg


def _study(store: Store, cfg: dict[str, Any], data_version: dict[str, Any], resume: bool):
  if resume and cfg["name"] in store.study_names():
    return store.load_study(cfg["name"]), True
  return store.create_study(cfg["name"], direction="minimize", config=cfg, seed=cfg["seed"],
                            code_version=code_version(), data_version=data_version,
                            hardware=hardware()), False


def _meta_train(cfg: dict[str, Any], store: Store, progress: bool) -> dict[str, Any]:
  from metaopt.tasks import get_family

  lopt = make_lopt(cfg["lopt_name"], **dict(cfg.get("lopt") or {}))
  problems = [make_problem(get_family(f), lopt, cfg["horizon"], cfg["unroll_length"],
                           cfg["meta_loss"], remat=bool(cfg.get("remat", True)))
              for f in cfg["families"]]
  trainer = meta_trainer(lopt, problems, cfg["estimator"], num_tasks=cfg["num_tasks"],
                         sigma=cfg.get("sigma", 0.01), meta_lr=cfg.get("meta_lr", 1e-3),
                         clip=cfg.get("clip", 1.0))
  rec, existed = _study(store, cfg, {"families": list(cfg["families"])}, resume=True)
  ids = [t["id"] for t in store.round_trials(rec.id, 0)] if existed else []
  if not ids:
    ids = store.start_round(rec.id, 0, [{"number": 0, "seed": cfg["seed"], "params": {
        "lopt_name": cfg["lopt_name"], "lopt": dict(cfg.get("lopt") or {}),
        "estimator": cfg["estimator"], "meta_loss": cfg["meta_loss"]}}], b"",
        checkpoint_path=os.path.abspath(cfg["output"]))
  t0 = time.perf_counter()

  def record(step: int, row: dict[str, float]) -> None:
    store.record_epoch(ids, step, [row])

  starts: list[int] = []
  state, history = meta_train(
      trainer, jax.random.PRNGKey(cfg["seed"]), cfg["outer_steps"],
      checkpoint_dir=cfg.get("checkpoint_dir") or None,
      checkpoint_every=cfg.get("checkpoint_every", 50), log_every=cfg.get("log_every", 1),
      callback=record, progress=progress, on_start=starts.append)
  path = save(cfg["output"], lopt, state.theta, {"config_name": cfg["name"],
                                                 "outer_steps": int(state.step)})
  trial = store.trials(rec.id)[0]
  last = trial.metrics[-1]["meta_loss"] if trial.metrics else None
  ok = last is not None and math.isfinite(last)
  store.end_round(rec.id, 0, [(ids[0], "complete" if ok else "failed", last if ok else None,
                               None if ok else "non-finite meta-loss")], b"",
                  duration_s=time.perf_counter() - t0)
  return {"mode": "meta_train", "study": rec.name, "store": store.url, "meta_params": path,
          "outer_steps": int(state.step), "resumed": existed, "final_meta_loss": last,
          "steps_this_run": int(state.step) - starts[0], "logged_rows": len(history),
          "seconds": time.perf_counter() - t0}


def _apply(cfg: dict[str, Any], store: Store, progress: bool) -> dict[str, Any]:
  del progress  # one compiled training run per trial
  from metaopt.tasks import get_family

  lopt, theta, extra = load_meta_params(cfg["meta_params"])
  family = get_family(cfg["family"])
  rec, _ = _study(store, cfg, {"family": cfg["family"]}, resume=False)
  key = jax.random.PRNGKey(cfg["seed"])
  runs = {"learned": lopt.as_optax(theta), "adam": optax.adam(cfg.get("baseline_lr", 1e-3))}
  ids = store.start_round(rec.id, 0, [
      {"number": 0, "seed": cfg["seed"], "params": {"optimizer": "learned",
                                                    "meta_params": cfg["meta_params"]}},
      {"number": 1, "seed": cfg["seed"], "params": {"optimizer": "adam",
                                                    "learning_rate": cfg.get(
                                                        "baseline_lr", 1e-3)}}], b"")
  t0 = time.perf_counter()
  curves = {k: jax.device_get(jax.jit(fit, static_argnums=(0, 1, 3, 4))(
      family, opt, key, cfg["num_steps"], cfg["eval_every"])) for k, opt in runs.items()}
  for i, step in enumerate(np.asarray(curves["learned"]["step"])):
    store.record_epoch(ids, int(step), [
        {k: float(v[i]) for k, v in c.items() if k != "step"} for c in curves.values()])
  results = []
  for tid, c in zip(ids, curves.values(), strict=True):
    v = float(c["valid_loss"][-1])
    ok = math.isfinite(v)
    results.append((tid, "complete" if ok else "failed", v if ok else None,
                    None if ok else "non-finite validation loss"))
  store.end_round(rec.id, 0, results, b"", duration_s=time.perf_counter() - t0)
  out = {"mode": "apply", "study": rec.name, "store": store.url, "family": cfg["family"],
         "lopt": lopt.name, "meta_trained_by": extra}
  for k, c in curves.items():
    out[k] = {"final_train_loss": float(c["train_eval"][-1]),
              "final_valid_loss": float(c["valid_loss"][-1])}
  return out


def run_config(cfg: Mapping[str, Any], store: Store, progress: bool = True) -> Result:
  """Runs a ``program = "lopt"`` config (``mode`` "meta_train" or "apply") into ``store``;
  the :class:`Result` holds its trials and, as ``info``, the run's summary."""
  cfg = validate(cfg)
  run = _meta_train if cfg["mode"] == "meta_train" else _apply
  info = run(cfg, store, progress)
  rec = store.load_study(cfg["name"])
  return Result(rec.name, rec.direction, store.trials(rec.id), None, "lopt", info)
