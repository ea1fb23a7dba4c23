"""Retrain the best configurations from scratch and evaluate them on the test split, once.

The top ``k`` complete trials of a study are retrained with ``seeds`` fresh seeds each, all
in population kernels, for the study's number of epochs; each model is then evaluated on
the test split (which no search ever sees) and the result is recorded as a study event.

With ``ensemble=True`` the retrained models' predicted class probabilities on the test split
are averaged and the ensemble's accuracy is reported next to the individual models'. The
probabilities come from the task's ``predict`` when its trial functions have one, otherwise
from its ``evaluate`` loss (softmax cross-entropy) on each example and each class,
``p_c(x) = exp(-loss(x, c))``; that they reproduce each model's own test accuracy is checked.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import population as pop
from metaopt._src import streaming
from metaopt._src.evaluators import group
from metaopt._src.loop import trial_seed
from metaopt._src.programs import made_by_search_call
from metaopt._src.store import Store, _clean
from metaopt.spaces import Space
from metaopt.tasks import Task


def _class_probs(fns, n_classes: int):
  """``(state, x, h) -> [n, n_classes]`` predicted probabilities of one model."""
  predict = getattr(fns, "predict", None)
  if predict is not None:
    return lambda state, x, h: jax.nn.softmax(predict(state, x, h), axis=-1)
  classes = jnp.arange(n_classes)

  def probs(state, x, h):
    def nll(xi, c):
      return fns.evaluate(state, xi[None], c[None], h)["loss"]
    p = jnp.exp(-jax.vmap(lambda xi: jax.vmap(lambda c: nll(xi, c))(classes))(x))
    return p / jnp.sum(p, axis=-1, keepdims=True)

  return probs


def _population_eval(fns):
  """``(states, h, x, y) -> metrics[n]`` of a population on one batch, compiled."""
  return jax.jit(lambda s, h, x, y: jax.vmap(fns.evaluate, in_axes=(0, None, None, 0))(
      s, x, y, h))


def evaluate_top(store: Store, study: str | None, task: Task, space: Space, *, k: int = 3,
                 seeds: int = 3, epochs: int | None = None, batch_size: int | None = None,
                 ensemble: bool = False, eval_batch: int = 1024) -> dict[str, Any]:
  """Retrains the top-``k`` configurations with ``seeds`` seeds and tests them once; with
  ``ensemble`` also the average of all ``k * seeds`` models' predicted probabilities.

  Retraining streams the train split when the search would (:func:`streaming.should_stream`),
  and the test split is evaluated in batches of ``eval_batch`` rows, so memory holds a batch,
  not the split (metrics are row-weighted means of the batches')."""
  for name, v in (("k", k), ("seeds", seeds), ("eval_batch", eval_batch)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name}={v!r}: must be an integer >= 1")
  rec = store.load_study(study)
  cfg = rec.config
  epochs = int(epochs or cfg["epochs"])
  batch_size = int(batch_size or cfg["batch_size"])
  done = [t for t in store.trials(rec.id, with_metrics=False)
          if t.status == "complete" and t.objective is not None]
  if not done:
    raise ValueError(f"study {rec.name!r} has no complete trial to evaluate")
  top = sorted(done, key=lambda t: -t.objective if rec.direction == "maximize"
               else t.objective)[:k]
  runs = [(t, s) for t in top for s in range(seeds)]
  u = np.asarray([t.u for t, _ in runs], np.float32)
  h = space.decode(jnp.asarray(u))
  params = space.to_python_batch(h)
  groups, structures = group(space, params, task)
  stream = streaming.should_stream(task.data)
  data = streaming.shape_only(task.data) if stream else pop.data_arrays(task.data)
  y_dtype = np.int32 if task.data.num_classes is not None else np.float32
  keys = jax.vmap(jax.random.key)(jnp.asarray(
      [trial_seed(rec.seed + 10_000 + s, t.number) for t, s in runs], jnp.uint32))
  test: list[dict[str, Any] | None] = [None] * len(runs)
  if ensemble:
    if task.objective != "accuracy":
      raise ValueError(f"ensemble: needs a classification task (objective 'accuracy'); "
                       f"{task.name!r} optimizes {task.objective!r}")
    n_classes = task.data.num_classes or int(
        max(np.max(task.data.train.y), np.max(task.data.test.y))) + 1
    probs: list[np.ndarray | None] = [None] * len(runs)
  for g, idx in groups.items():
    fns = task.build(structures[g])
    kern = (streaming.make_streaming_kernel(fns, task.data, batch_size) if stream
            else pop.make_kernel(fns, len(task.data.train), batch_size))
    hg = {k: v[idx] for k, v in h.items()}
    states = kern.init(keys[idx], hg)
    alive = jnp.ones(len(idx), bool)
    for e in range(epochs):
      states, _ = kern.chunk(states, hg, alive, jax.random.fold_in(jax.random.key(rec.seed), e),
                             data)
    metrics = streaming.evaluate_batched(_population_eval(fns), states, hg, task.data.test,
                                         eval_batch, y_dtype)
    for j, i in enumerate(idx):
      test[i] = {m: float(v[j]) for m, v in metrics.items()}
    if ensemble:  # [models, test rows, classes]: one row of probabilities per example
      pf = jax.jit(jax.vmap(_class_probs(fns, n_classes), in_axes=(0, None, 0)))
      p = np.concatenate([np.asarray(pf(states, jnp.asarray(x), hg)) for x, _ in
                          streaming.batches(task.data.test, eval_batch, y_dtype)], axis=1)
      for j, i in enumerate(idx):
        probs[i] = p[j]
  obj = task.objective
  out = {"study": rec.name, "k": k, "seeds": seeds, "epochs": epochs, "configs": []}
  for t in top:
    scores = [test[i][obj] for i, (tt, _) in enumerate(runs) if tt is t]
    out["configs"].append({"number": t.number, "params": t.params, "valid": t.objective,
                           f"test_{obj}": float(np.mean(scores)),
                           f"test_{obj}_std": float(np.std(scores)), "per_seed": scores})
  if ensemble:
    y = np.asarray(task.data.test.y)
    member_acc = [float(np.mean(np.argmax(p, -1) == y)) for p in probs]
    for (t, _), a, i in zip(runs, member_acc, range(len(runs)), strict=True):
      if abs(a - test[i]["accuracy"]) > 1e-6:
        raise ValueError(f"ensemble: probabilities of trial {t.number}'s model give accuracy "
                         f"{a:.4f} but the task measured {test[i]['accuracy']:.4f}; the "
                         "task's loss is not softmax cross-entropy")
    avg = np.mean(np.stack(probs), axis=0)
    out["ensemble"] = {
        "members": [{"number": t.number, "seed": s, f"test_{obj}": a}
                    for (t, s), a in zip(runs, member_acc, strict=True)],
        "test_accuracy": float(np.mean(np.argmax(avg, -1) == y)),
        "test_nll": float(-np.mean(np.log(np.maximum(avg[np.arange(len(y)), y], 1e-12)))),
        "best_individual_test_accuracy": max(member_acc),
        "mean_individual_test_accuracy": float(np.mean(member_acc)),
    }
    store.log_event(rec.id, "ensemble", json.dumps(_clean(out["ensemble"]), sort_keys=True))
  store.log_event(rec.id, "evaluate", json.dumps(_clean(out), sort_keys=True))
  return out


def evaluate_study(store: Store, study: str | None = None, *, k: int = 3, seeds: int = 3,
                   ensemble: bool = False, eval_batch: int = 1024) -> dict[str, Any]:
  """:func:`evaluate_top` for a stored black-box study, its task and space rebuilt from the
  study's config."""
  from metaopt._src import config as config_lib

  rec = store.load_study(study)
  if rec.config.get("kind") == "study":
    raise ValueError(f"study {rec.name!r} was made in Python by metaopt.create_study with a "
                     "Python objective; there is no task to retrain (its trials are in `report`)")
  program = rec.config.get("program", "search")
  if program != "search":
    note = {"nas": "; a NAS run already retrained its derived cell and tested it once",
            "whitebox": "; a white-box run's trials are hypergradient trajectories"}
    raise ValueError(f"study {rec.name!r} ran program {program!r}: `evaluate` retrains the "
                     "best trials of a black-box search (program 'search')"
                     f"{note.get(program, '')}; `report` shows what it recorded")
  if made_by_search_call(rec.config):
    raise ValueError(f"study {rec.name!r} was run in Python by metaopt.search, and no config "
                     "names its task; retrain and test its best trials in Python with "
                     f"metaopt.evaluate_top(store, {rec.name!r}, task, space)")
  _, task, space, _ = config_lib.build({**rec.config, "store": store.url})
  return evaluate_top(store, rec.name, task, space, k=k, seeds=seeds, ensemble=ensemble,
                      eval_batch=eval_batch)
