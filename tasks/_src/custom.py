"""Bring your own model: a :class:`Task` from any Flax module, loss, optax optimizer and data.

``from_flax`` builds what the population engine trains from the pieces a JAX user already has:

* a Flax module called as ``module.apply(params, x)`` (a plain ``__call__(x)``; a
  ``__call__(x, train)`` gets ``train=True``, a ``dropout`` rng per step and its mutable
  collections such as ``batch_stats`` updated in training, ``train=False`` in evaluation), or
  a function
  ``structure -> module`` when hyperparameters shape the model (``Int(..., structural=True)``
  and structural ``Choice`` values arrive as Python values, one compiled kernel per setting);
* a loss ``(predictions, y) -> scalar`` (default: softmax cross-entropy for integer labels,
  mean squared error otherwise);
* an optimizer: a function ``h -> optax.GradientTransformation`` (``h`` holds the trial's
  hyperparameters as traced arrays, so new values never recompile, plus the structural ones as
  Python values), the name of an optax optimizer (``"lion"``: every argument of
  ``optax.lion`` that the space or ``defaults`` names is injected with
  ``optax.inject_hyperparams``), or a fixed ``GradientTransformation``;
* data: numpy arrays (``(x, y)``, split 60/20/20 by a fixed permutation, or a dict of
  ``train`` / ``valid`` / ``test`` pairs), a dataset name (the bundled ones, or
  ``"tfds:<name>"`` with ``data_dir``), a dict of random-access data sources (anything with
  ``__len__`` and ``__getitem__`` returning ``{x_key: ..., y_key: ...}`` or ``(x, y)``, such
  as ``tfds.data_source`` or a grain source), or a :class:`Dataset`. Arrays and sources are
  identified by a sha256 checksum of their contents, recorded as the study's data version.

The engine holds each split in device memory; sources are read once, whole.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.spaces import Choice, Space
from metaopt.tasks._src import base
from metaopt.tasks._src.base import H, Task, TrialFns
from metaopt.tasks._src.data import DATASETS, PROCEDURAL, Dataset, Split, _checksum, load_dataset

_SPLITS = ("train", "valid", "test")


def _split(x: Any, y: Any, what: str) -> Split:
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim < 1 or len(x) != len(y) or len(x) == 0:
    raise ValueError(f"data.{what}: x and y must be non-empty arrays of the same length, got "
                     f"shapes {x.shape} and {y.shape}")
  x = (x / 255.0).astype(np.float32) if x.dtype == np.uint8 else x.astype(np.float32)
  y = y.astype(np.int32) if y.dtype.kind in "iub" else y.astype(np.float32)
  for a in (x, y):
    a.setflags(write=False)
  return Split(x, y)


def _check_splits(splits: Sequence[Split]) -> None:
  """One ``ValueError`` naming the split and the rule: the same shape per example in every
  split, finite inputs, integer labels in every split or in none, integer labels 1-D and
  non-negative (a column ``y[:, None]`` failed in the loss with a shape error)."""
  names = _SPLITS[:len(splits)]
  shapes = {w: s.x.shape[1:] for w, s in zip(names, splits, strict=True)}
  if len(set(shapes.values())) > 1:
    raise ValueError("data: x must have the same shape per example in every split; got "
                     + ", ".join(f"{w} {v}" for w, v in shapes.items()))
  kinds = {w: s.y.dtype == np.int32 for w, s in zip(names, splits, strict=True)}
  if len(set(kinds.values())) > 1:
    raise ValueError("data: y must be integer class labels in every split or float targets "
                     "in every split; got " + ", ".join(
                         f"{w} {'integer' if k else 'float'}" for w, k in kinds.items()))
  for w, s in zip(names, splits, strict=True):
    if not np.all(np.isfinite(s.x)):
      raise ValueError(f"data.{w}: x has non-finite values")
    if kinds[w] and s.y.ndim != 1:
      raise ValueError(f"data.{w}: integer class labels must be a 1-D array, got shape "
                       f"{s.y.shape} (use y.ravel(), or float targets for regression)")
    if kinds[w] and s.y.min() < 0:
      raise ValueError(f"data.{w}: class labels must be >= 0, got {int(s.y.min())}")


def _from_splits(splits: Sequence[Split], name: str, note: str) -> Dataset:
  _check_splits(splits)
  classification = splits[0].y.dtype == np.int32
  n_classes = int(max(int(s.y.max()) for s in splits)) + 1 if classification else None
  checksum = _checksum(splits)
  return Dataset(name, "", note, checksum, n_classes, *splits)


def dataset_from_arrays(train: tuple[Any, Any], valid: tuple[Any, Any] | None = None,
                        test: tuple[Any, Any] | None = None, name: str = "arrays") -> Dataset:
  """A :class:`Dataset` from ``(x, y)`` arrays. Given ``train`` only, it is split 60/20/20
  by a fixed permutation (``default_rng(0)``); without ``test``, the valid split is also the
  test split (noted in the data version). Integer ``y`` means classification, uint8 ``x`` is
  scaled to [0, 1]."""
  if valid is None:
    if test is not None:
      raise ValueError("data: give valid as well as test, or train alone (split 60/20/20)")
    x, y = np.asarray(train[0]), np.asarray(train[1])
    if len(x) != len(y) or len(x) < 5:
      raise ValueError(f"data: x and y need the same length >= 5, got {len(x)} and {len(y)}")
    perm = np.random.default_rng(0).permutation(len(x))
    a, b = len(x) * 3 // 5, len(x) * 3 // 5 + len(x) // 5
    parts = [perm[:a], perm[a:b], perm[b:]]
    splits = [_split(x[p], y[p], s) for p, s in zip(parts, _SPLITS, strict=True)]
    return _from_splits(splits, name, "arrays, split 60/20/20")
  splits = [_split(*train, "train"), _split(*valid, "valid")]
  splits.append(_split(*test, "test") if test is not None else splits[1])
  return _from_splits(splits, name, "arrays" if test is not None else "arrays, test = valid")


def _read_source(src: Any, x_key: str, y_key: str, what: str) -> Split:
  if not hasattr(src, "__len__") or not hasattr(src, "__getitem__"):
    raise ValueError(f"data.{what}: a data source needs __len__ and __getitem__, got "
                     f"{type(src).__name__}")
  n = len(src)
  recs = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else \
      [src[i] for i in range(n)]
  if recs and isinstance(recs[0], Mapping):
    missing = [k for k in (x_key, y_key) if k not in recs[0]]
    if missing:
      raise ValueError(f"data.{what}: records have keys {sorted(recs[0])}, not {missing}; "
                       "pass x_key= / y_key=")
    xs, ys = [r[x_key] for r in recs], [r[y_key] for r in recs]
  else:
    xs, ys = [r[0] for r in recs], [r[1] for r in recs]
  return _split(np.stack([np.asarray(x) for x in xs]), np.asarray(ys), what)


def dataset_from_sources(sources: Mapping[str, Any], x_key: str = "image",
                         y_key: str = "label", name: str = "source") -> Dataset:
  """A :class:`Dataset` read whole from random-access sources ``{"train": ..., "valid": ...,
  "test": ...}`` (``test`` optional: then the valid split is also the test split)."""
  missing = [s for s in ("train", "valid") if s not in sources]
  unknown = sorted(set(sources) - set(_SPLITS))
  if missing or unknown:
    raise ValueError(f"data: sources need keys 'train' and 'valid' (and optionally 'test'); "
                     f"missing {missing}, unknown {unknown}")
  splits = [_read_source(sources[s], x_key, y_key, s) for s in ("train", "valid")]
  splits.append(_read_source(sources["test"], x_key, y_key, "test") if "test" in sources
                else splits[1])
  return _from_splits(splits, name, "sources" if "test" in sources else "sources, test = valid")


def _is_source(v: Any) -> bool:
  return hasattr(v, "__len__") and hasattr(v, "__getitem__") and not isinstance(
      v, (tuple, list, np.ndarray))


def as_dataset(data: Any, data_dir: str | None = None, x_key: str = "image",
               y_key: str = "label") -> Dataset:
  """``data`` in any of the forms :func:`from_flax` takes, as a :class:`Dataset`."""
  if isinstance(data, Dataset):
    return data
  if isinstance(data, str):
    return load_dataset(data, data_dir)
  if isinstance(data, tuple) and len(data) == 2:
    return dataset_from_arrays(data)
  if isinstance(data, Mapping):
    if any(_is_source(v) for v in data.values()):
      return dataset_from_sources(data, x_key, y_key)
    unknown = sorted(set(data) - set(_SPLITS))
    if unknown or "train" not in data:
      raise ValueError(f"data: a dict of arrays needs 'train' (and 'valid', 'test') (x, y) "
                       f"pairs; got keys {sorted(data)}")
    return dataset_from_arrays(data["train"], data.get("valid"), data.get("test"))
  raise ValueError(f"data: {type(data).__name__} is not a data form; allowed: (x, y) arrays, "
                   "a dict of splits (arrays or data sources), a Dataset, or a dataset name "
                   f"({', '.join(DATASETS + PROCEDURAL)}, or 'tfds:<name>')")


def _refresh(opt_state: Any, h: Mapping[str, Any]) -> Any:
  """An ``inject_hyperparams`` state with its hyperparameters read from ``h`` again (so
  values changed mid-training, e.g. by PBT, take effect)."""
  hp = getattr(opt_state, "hyperparams", None)
  if not isinstance(hp, Mapping):
    return opt_state
  new = {k: jnp.asarray(h[k], jnp.asarray(v).dtype) if k in h and not isinstance(h[k], str)
         else v for k, v in hp.items()}
  return opt_state._replace(hyperparams=new)


def _optimizer(optimizer: Any) -> Callable[[Mapping[str, Any]], optax.GradientTransformation]:
  """``h -> GradientTransformation`` from a factory, an optax name or a fixed transform."""
  if isinstance(optimizer, optax.GradientTransformation):
    return lambda h: optimizer
  if isinstance(optimizer, str):
    fn = getattr(optax, optimizer, None)
    if not callable(fn) or optimizer.startswith("_"):
      raise ValueError(f"optimizer={optimizer!r} is not an optax optimizer; give an optax "
                       "name such as 'adamw', 'lion', 'sgd', or a function h -> "
                       "optax.GradientTransformation")
    names = list(inspect.signature(fn).parameters)

    def make(h):
      kw = {k: jnp.asarray(h[k], jnp.float32) for k in names if k in h
            and not isinstance(h[k], (str, bool))}
      return optax.inject_hyperparams(fn)(**kw)
    return make
  if callable(optimizer):
    return optimizer
  raise ValueError(f"optimizer: expected a function h -> optax.GradientTransformation, an "
                   f"optax name or a GradientTransformation, got {type(optimizer).__name__}")


def _named_optimizer_reads(optimizer: Any, space: Space,
                           defaults: Mapping[str, Any]) -> frozenset[str] | None:
  """For an optax optimizer given by name: one ``ValueError`` when a required argument
  (``learning_rate``) is in neither the space nor ``defaults``; else what the task reads
  (the optimizer's arguments and the structural parameters the model is built from), so a
  search over a parameter nothing reads fails before compiling (``check_reads``)."""
  if not isinstance(optimizer, str):
    return None
  params = inspect.signature(getattr(optax, optimizer)).parameters
  missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and k not in space.params and k not in defaults]
  if missing:
    raise ValueError(f"optimizer={optimizer!r} needs {missing}: name them in the space or "
                     f"in defaults=; the space has {list(space.names)}, optax.{optimizer} "
                     f"takes {list(params)}")
  return frozenset(params) | frozenset(n for n, p in space.params.items() if p.structural)


def _takes_train(module: nn.Module) -> bool:
  """Whether the module's ``__call__`` has a ``train`` argument (dropout, batch norm)."""
  try:
    return "train" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


def flax_trial_fns(module: nn.Module, example_x: Any, loss: Callable, metrics: Callable,
                   make_opt: Callable, structure: Mapping[str, Any],
                   defaults: Mapping[str, Any]) -> TrialFns:
  """:class:`TrialFns` of a module with a plain ``__call__(x)``, or ``__call__(x, train)``:
  then training passes ``train=True`` with a ``dropout`` rng per step and updates mutable
  collections such as ``batch_stats``; evaluation passes ``train=False``."""
  train_kw = _takes_train(module)
  mode = (lambda train: {"train": train}) if train_kw else (lambda train: {})

  def opt_for(h: H) -> optax.GradientTransformation:
    return make_opt({**defaults, **h, **structure})

  def init(key: jax.Array, h: H) -> Any:
    k_params, k_drop = jax.random.split(key)
    variables = module.init({"params": k_params, "dropout": k_drop}, example_x, **mode(False))
    state = {"params": variables, "opt_state": opt_for(h).init(variables["params"]),
             "step": jnp.zeros((), jnp.int32)}
    if train_kw:  # raw key data: the engine gathers and checkpoints plain arrays
      state["rng"] = jax.random.key_data(k_drop)
    return state

  def train_step(state: Any, batch: tuple[jax.Array, jax.Array], h: H):
    x, y = batch
    extra = {k: v for k, v in state["params"].items() if k != "params"}
    rngs = {"dropout": jax.random.fold_in(jax.random.wrap_key_data(state["rng"]),
                                          state["step"])} if train_kw else None

    def objective(p):
      out = module.apply({"params": p, **extra}, x, rngs=rngs, mutable=list(extra) or False,
                         **mode(True))
      pred, new_extra = out if extra else (out, {})
      return loss(pred, y), new_extra

    (value, new_extra), grads = jax.value_and_grad(objective, has_aux=True)(
        state["params"]["params"])
    opt_state = _refresh(state["opt_state"], {**defaults, **h})
    updates, opt_state = opt_for(h).update(grads, opt_state, state["params"]["params"])
    params = optax.apply_updates(state["params"]["params"], updates)
    new = {**state, "params": {"params": params, **extra, **new_extra}, "opt_state": opt_state,
           "step": state["step"] + 1}
    return new, base.telemetry(value, params, grads, None)

  def evaluate(state: Any, x: jax.Array, y: jax.Array, h: H) -> dict:
    pred = module.apply(state["params"], x, **mode(False))
    return {**metrics(pred, y), "loss": loss(pred, y)}

  return TrialFns(init, train_step, evaluate)


def _fallback_h(space: Space, defaults: Mapping[str, Any]) -> dict[str, Any]:
  h = {k: v for k, v in defaults.items() if not isinstance(v, str)}
  for n, p in space.params.items():
    if not p.structural:
      h[n] = jnp.asarray(p.fallback())  # a Choice's fallback is its index
  return h


def from_flax(model: nn.Module | Callable[[Mapping[str, Any]], nn.Module], data: Any,
              space: Space, *, optimizer: Any = "adamw", loss: Callable | None = None,
              metrics: Callable | None = None, objective: str | None = None,
              direction: str | None = None, name: str = "custom",
              defaults: Mapping[str, Any] | None = None, data_dir: str | None = None,
              x_key: str = "image", y_key: str = "label", family: str = "mlp") -> Task:
  """A :class:`Task` from a Flax model, data, a search space and an optax optimizer.

  Args:
    model: a Flax module (``__call__(x)``), or ``structure -> module`` for structural
      hyperparameters (see module doc).
    data: arrays, a dict of splits, data sources, a dataset name or a :class:`Dataset`.
    space: the hyperparameters searched; the optimizer factory reads them from ``h``.
    optimizer: ``h -> optax.GradientTransformation``, an optax name, or a transform.
    loss: ``(predictions, y) -> scalar``; default by the labels' type.
    metrics: ``(predictions, y) -> dict``; default accuracy (integer labels) or mse and r2.
    objective: the metric searched on the valid split; default accuracy / mse.
    direction: ``"maximize"`` or ``"minimize"``; default by the objective.
    name: the task's name in reports.
    defaults: values of hyperparameters the space leaves out (e.g. ``{"learning_rate":
      1e-3}``), seen by the optimizer factory.
    data_dir, x_key, y_key: for TFDS names and data sources.
    family: architecture family read by the monitor (``mlp``, ``cnn``, ``linear``).

  Raises:
    ValueError: before anything compiles, for a bad data form, optimizer, or an objective
      that is not among the task's metrics (the message lists them).

  Examples:
    >>> import flax.linen as nn, numpy as np, optax
    >>> from metaopt.spaces import Float, Space
    >>> x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    >>> task = from_flax(nn.Dense(2), (x, (x[:, 0] > 0).astype(np.int32)),
    ...                  Space({"learning_rate": Float(1e-3, 1e-1, log=True)}),
    ...                  optimizer=lambda h: optax.lion(h["learning_rate"]))
    >>> task.objective, task.direction
    ('accuracy', 'maximize')
  """
  if not isinstance(space, Space):
    raise ValueError(f"space: expected a spaces.Space, got {type(space).__name__}")
  if isinstance(model, type) or not (isinstance(model, nn.Module) or callable(model)):
    raise ValueError("model: pass a Flax module instance, or a function structure -> module")
  ds = as_dataset(data, data_dir, x_key, y_key)
  classify = ds.num_classes is not None
  default_loss = loss is None
  loss = loss or (base.softmax_xent if classify else base.mse)
  metrics = metrics or (base.classification_metrics if classify else base.regression_metrics)
  objective = objective or ("accuracy" if classify else "mse")
  if direction is None:
    direction = "maximize" if objective in ("accuracy", "r2") else "minimize"
  if direction not in ("maximize", "minimize"):
    raise ValueError(f"direction={direction!r}: allowed values are 'maximize', 'minimize'")
  make_opt = _optimizer(optimizer)
  defaults = dict(defaults or {})
  reads = _named_optimizer_reads(optimizer, space, defaults)
  example = np.zeros((2, *ds.input_shape), np.float32)
  structure = {n: p.to_python(p.fallback()) if isinstance(p, Choice) else p.fallback()
               for n, p in space.params.items() if p.structural}  # a Choice's is its index

  def module_of(structure: Mapping[str, Any]) -> nn.Module:
    module = model if isinstance(model, nn.Module) else model(dict(structure))
    if not isinstance(module, nn.Module):
      raise ValueError(f"model({dict(structure)}) returned {type(module).__name__}, not a "
                       "Flax module")
    return module

  def build(structure: Mapping[str, Any]) -> TrialFns:
    return flax_trial_fns(module_of(structure), example, loss, metrics, make_opt, structure,
                          defaults)

  state = _check(build({**defaults, **structure}), _fallback_h(space, defaults), ds, objective)
  if classify and default_loss:
    _check_classes(module_of({**defaults, **structure}), state["params"], example,
                   ds.num_classes)
  task = Task(name, ds, space, build, objective, direction, defaults, family, reads=reads)
  base.check_reads(task, space.names)  # e.g. momentum searched for optimizer='adam'
  return task


def _check_classes(module: nn.Module, variables: Any, example: np.ndarray,
                   num_classes: int) -> None:
  """A classifier's outputs must have a logit per class: with fewer, the default
  cross-entropy of a label past the last logit is NaN and every trial failed as "non-finite
  loss" (the model applied abstractly to ``variables``, the abstract ones :func:`_check`
  traced: nothing compiles, and its init is not traced again)."""
  mode = {"train": False} if _takes_train(module) else {}
  out = jax.eval_shape(lambda v: module.apply(v, example, **mode), variables)
  shape = getattr(out, "shape", None)
  if shape is not None and len(shape) == 2 and shape[-1] < num_classes:
    raise ValueError(f"model: outputs {shape[-1]} logits per example, but the labels are "
                     f"integers in [0, {num_classes}) ({num_classes} classes); give the last "
                     f"layer {num_classes} outputs (e.g. nn.Dense({num_classes})), or pass "
                     "float targets for regression")


_CONCRETE = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
             jax.errors.TracerArrayConversionError)


def _concrete_hint(e: Exception) -> str:
  """What to do when the optimizer or model needs a hyperparameter as a Python value (e.g.
  ``optax.warmup_cosine_decay_schedule(0.0, h["learning_rate"], ...)`` compares its peak with
  0.0 in Python): JAX names the value's source as ``h['name']``."""
  names = list(dict.fromkeys(re.findall(r"h\['([^']+)'\]", str(e))))
  which = f"hyperparameter {', '.join(map(repr, names))}" if names else "a hyperparameter"
  return (f"task: the optimizer or model uses {which} as a Python value "
          f"({type(e).__name__}), but searched hyperparameters reach them as traced arrays "
          "(new values never recompile): use it in array arithmetic, e.g. scale a fixed "
          "schedule, lambda t: h['learning_rate'] * optax.warmup_cosine_decay_schedule(0.0, "
          "1.0, 10, 1000)(t), or declare it structural=True in the space (a Python value, "
          "one kernel per value)")


def _check(fns: TrialFns, h: dict[str, Any], ds: Dataset, objective: str) -> Any:
  """Traces one trial abstractly (nothing compiles) so a bad optimizer or metric name fails
  here with one ``ValueError``; returns the trial's abstract initial state."""
  try:
    state = jax.eval_shape(fns.init, jax.random.key(0), h)
    x, y = ds.train.x[:2], ds.train.y[:2]
    jax.eval_shape(fns.train_step, state, (x, y), h)
    names = jax.eval_shape(fns.evaluate, state, x, y, h)
  except ValueError:
    raise
  except _CONCRETE as e:  # a hyperparameter used as a Python value
    raise ValueError(_concrete_hint(e)) from None
  except Exception as e:  # noqa: BLE001 - user code fails in many ways
    raise ValueError(f"task: one trial does not trace with the space's default values "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
  if objective not in names:
    raise ValueError(f"objective={objective!r} is not a metric of this task; its metrics: "
                     f"{sorted(names)}")
  return state


def import_task(path: str, **kwargs: Any) -> Task:
  """The task at ``"module:attr"``: a :class:`Task`, or a factory called with ``kwargs``
  (the config's ``task`` options). The current directory is importable."""
  mod, _, attr = path.partition(":")
  if not mod or not attr:
    raise ValueError(f"task {path!r}: an import path must look like 'my_module:my_task'")
  if os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  try:
    obj = getattr(importlib.import_module(mod), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"task {path!r}: cannot import {attr!r} from {mod!r} ({e})") from None
  if isinstance(obj, Task):
    if kwargs:
      raise ValueError(f"task {path!r} is a Task, not a factory: it takes no options "
                       f"{sorted(kwargs)}")
    return obj
  task = obj(**kwargs) if callable(obj) else obj
  if not isinstance(task, Task):
    raise ValueError(f"task {path!r}: expected a tasks.Task or a function returning one, got "
                     f"{type(task).__name__}")
  return task

