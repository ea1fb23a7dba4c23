"""The task protocol: what a trial trains, as pure functions of a hyperparameter dict ``h``.

A :class:`Task` bundles its data, a default search space and ``build(structure)``, which
returns :class:`TrialFns` for one setting of the structural (shape-changing) parameters:

* ``init(key, h) -> train_state``
* ``train_step(train_state, batch, h) -> (train_state, telemetry)``
* ``evaluate(train_state, x, y, h) -> metrics``

``h`` maps names to scalar arrays (one trial); the population engine vmaps these functions
over trials. Optimizers come from ``optax.inject_hyperparams`` so learning rate, momentum and
weight decay are traced values: new values never recompile, and they can be differentiated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metaopt.spaces import Space
from metaopt.tasks._src.data import Dataset

PyTree = Any
H = Mapping[str, jax.Array]


class TrialFns(NamedTuple):
  """Pure functions for one structural group of trials."""

  init: Callable[[jax.Array, H], PyTree]
  train_step: Callable[[PyTree, tuple[jax.Array, jax.Array], H], tuple[PyTree, dict]]
  evaluate: Callable[[PyTree, jax.Array, jax.Array, H], dict]


@dataclasses.dataclass(frozen=True)
class Task:
  """A trainable problem: data, default space, objective and a builder of trial functions.

  Attributes:
    name: registry name.
    data: the train / valid / test splits (see ``metaopt.tasks.load_dataset``).
    space: default hyperparameter search space.
    build: ``structure -> TrialFns``; ``structure`` holds Python values of the space's
      structural parameters (empty when there are none).
    objective: key of ``evaluate``'s metrics that the search optimizes on the valid split.
    direction: ``"maximize"`` or ``"minimize"``.
    defaults: values for hyperparameters the space leaves out.
    family: architecture family ("mlp", "cnn", "linear"), read by the monitor.
    switches: hyperparameters whose value selects a branch of the computation (read through
      :func:`activation`'s ``lax.switch``). Searched as a non-structural ``Choice``, they stay
      one traced kernel, or the engine compiles one kernel per value when that pays (see
      ``metaopt.TaskEvaluator``'s ``group_switches``).
    reads: every hyperparameter and structural parameter the task's functions read (under
      some structure); a search over a space with any other parameter fails before
      compiling (:func:`check_reads`). ``None``: not declared, not checked.
  """

  name: str
  data: Dataset
  space: Space
  build: Callable[[Mapping[str, Any]], TrialFns]
  objective: str
  direction: str
  defaults: Mapping[str, float] = dataclasses.field(default_factory=dict)
  family: str = "mlp"
  switches: tuple[str, ...] = ("activation",)
  reads: frozenset[str] | None = None


# what the search engine itself reads from a trial's parameters (any task)
ENGINE_READS: frozenset[str] = frozenset({"batch_size", "schedule_steps"})


def check_reads(task: Task, names: Any) -> None:
  """Raises ``ValueError`` naming the parameters of ``names`` (a space's) that ``task``
  never reads: searching them would train identical models."""
  if task.reads is None:
    return
  unread = [n for n in names if n not in task.reads and n not in ENGINE_READS]
  if unread:
    raise ValueError(
        f"space: parameter(s) {unread} are not read by task {task.name!r} (every value would "
        f"train the same model); it reads: {', '.join(sorted(task.reads | ENGINE_READS))}")


# ------------------------------------------------------------------------- activations
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "gelu", "silu", "sigmoid", "elu")
_ACT_FNS = (nn.relu, jnp.tanh, nn.gelu, nn.silu, nn.sigmoid, nn.elu)


_BRANCHES = threading.local()  # .n: see activation_branches


def activation(index: jax.Array | int, x: jax.Array) -> jax.Array:
  """Applies ``ACTIVATIONS[index]``; ``index`` may be a traced (even vmapped) integer.

  A vmapped index evaluates every branch and selects (the cost of searching activations in
  one kernel); a Python int calls the one activation directly. A traced index switches over
  all of ``ACTIVATIONS``, or over the first ``n`` inside :func:`activation_branches`.
  """
  if isinstance(index, int):
    return _ACT_FNS[index](x)
  n = getattr(_BRANCHES, "n", None) or len(_ACT_FNS)
  return jax.lax.switch(jnp.asarray(index, jnp.int32), _ACT_FNS[:n], x)


@contextlib.contextmanager
def activation_branches(n: int | None):
  """Within (on this thread), a traced :func:`activation` index switches over
  ``ACTIVATIONS[:n]`` only (``None``: all): what tracing needs when the index is known to be
  below ``n`` (a searched ``Choice`` of the first ``n`` activations), for a smaller program
  that computes the same values."""
  if n is not None and not 1 <= n <= len(_ACT_FNS):
    raise ValueError(f"n={n!r}: must be None or in [1, {len(_ACT_FNS)}]")
  before = getattr(_BRANCHES, "n", None)
  _BRANCHES.n = n
  try:
    yield
  finally:
    _BRANCHES.n = before


def with_activation_branches(fns: TrialFns, n: int | None) -> TrialFns:
  """``fns`` traced within :func:`activation_branches` ``(n)`` (``None``: ``fns`` itself)."""
  if n is None:
    return fns

  def within(f: Callable) -> Callable:
    @functools.wraps(f)  # keeps the name JAX reports for its compiles
    def g(*args: Any) -> Any:
      with activation_branches(n):
        return f(*args)
    return g
  return TrialFns(within(fns.init), within(fns.train_step), within(fns.evaluate))


# ------------------------------------------------------------------------- telemetry
def _kernels(tree: PyTree) -> list[jax.Array]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [v for path, v in leaves if getattr(path[-1], "key", None) == "kernel"]


def _sums(*xs: jax.Array) -> tuple[jax.Array, ...]:
  """The sums of same-shaped arrays, in one (variadic) reduction; no gradient flows through
  them (JAX cannot differentiate a variadic reduce, and health signals need none)."""
  xs = tuple(jax.lax.stop_gradient(x) for x in xs)
  zeros = tuple(jnp.zeros((), x.dtype) for x in xs)
  add = lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True))
  return tuple(jax.lax.reduce(xs, zeros, add, tuple(range(xs[0].ndim))))


def telemetry(loss: jax.Array, params: PyTree, grads: PyTree, live: PyTree | None) -> dict:
  """Per-step health signals computed inside the kernel.

  Returns ``layer_grad_norms`` (one per kernel, in layer order), first/last layer norms,
  the fraction of exactly-zero gradients among live kernel entries (dying ReLU), and
  non-finite flags for loss, gradients and weights.
  """
  # One reduction per parameter leaf (a train step's cost on small models is its number of
  # XLA ops): the kernel's squared norm, zero and live counts, and ``sum(x * 0)`` of the
  # gradient and the weight, which is NaN exactly when the leaf holds a NaN or an infinity.
  gl = jax.tree_util.tree_flatten_with_path(grads)[0]
  pl = jax.tree_util.tree_leaves(params)
  ll = jax.tree_util.tree_leaves(live) if live is not None else [None] * len(gl)
  is_k = [getattr(path[-1], "key", None) == "kernel" for path, _ in gl]
  if not any(is_k):  # modules without "kernel" leaves: every leaf counts as one
    is_k = [True] * len(gl)
  sq, zeros, total, nan_g, nan_p = [], 0.0, 0.0, 0.0, 0.0
  for (_, g), p, m, k in zip(gl, pl, ll, is_k, strict=True):
    z = jnp.zeros((), g.dtype)
    if k:  # norms and counts in float32 whatever the parameters' dtype (as jnp.sum does)
      m = jnp.ones(g.shape, jnp.float32) if m is None else m.astype(jnp.float32)
      g32 = g.astype(jnp.float32)
      s2, nz, nl, ng, np_ = _sums(jnp.square(g32), (g32 == 0) * m, m, g * z, p * z)
      sq.append(s2)
      zeros, total = zeros + nz, total + nl
    else:
      ng, np_ = _sums(g * z, p * z)
    nan_g, nan_p = nan_g + ng, nan_p + np_
  norms = jnp.sqrt(jnp.stack(sq))
  return {
      "loss": loss,
      "layer_grad_norms": norms,
      "grad_norm_first": norms[0],
      "grad_norm_last": norms[-1],
      "zero_grad_frac": zeros / jnp.maximum(total, 1.0),
      "nonfinite_loss": ~jnp.isfinite(loss),
      "nonfinite_grads": ~jnp.isfinite(nan_g),
      "nonfinite_params": ~jnp.isfinite(nan_p),
  }


# ------------------------------------------------------------------------- optimizers
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")


def check_optimizer(name: str) -> None:
  """Raises ``ValueError`` naming the allowed optimizers when ``name`` is not one of them
  (a check that runs no JAX operation: building the optimizer would compile one)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer {name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")


def make_optimizer(name: str, h: H, defaults: Mapping[str, float]) -> optax.GradientTransformation:
  """An optax optimizer whose hyperparameters are injected (traced) from ``h``."""
  check_optimizer(name)
  get = lambda k: jnp.asarray(h[k] if k in h else defaults.get(k, _OPT_DEFAULTS[k]), jnp.float32)
  if name == "adamw":
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=get("learning_rate"), weight_decay=get("weight_decay"),
        b1=get("b1"))
  if name == "sgd":
    # Decoupled weight decay before the momentum trace, as in optax.sgd + add_decayed_weights.
    def sgdw(learning_rate, momentum, weight_decay):
      return optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.sgd(learning_rate, momentum=momentum))
    return optax.inject_hyperparams(sgdw)(
        learning_rate=get("learning_rate"), momentum=get("momentum"),
        weight_decay=get("weight_decay"))
  raise AssertionError(name)  # unreachable: check_optimizer


_OPT_DEFAULTS = {"learning_rate": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "b1": 0.9}


def with_hyperparams(opt_state: Any, h: H, defaults: Mapping[str, float]) -> Any:
  """``opt_state`` of an ``inject_hyperparams`` optimizer with its hyperparameters read from
  ``h`` (or ``defaults``) again.

  ``inject_hyperparams`` keeps the values it was initialised with; a train step refreshes
  them so that hyperparameters changed mid-training (PBT explore, schedules, hypergradient
  steps) take effect.
  """
  old = opt_state.hyperparams
  new = {k: jnp.asarray(h[k] if k in h else defaults.get(k, _OPT_DEFAULTS.get(k, v)),
                        jnp.asarray(v).dtype) for k, v in old.items()}
  return opt_state._replace(hyperparams=new)


SCHEDULES: tuple[str, ...] = ("constant", "cosine", "warmup_cosine")


def lr_factor(step: jax.Array, h: H) -> jax.Array:
  """Learning-rate multiplier at ``step`` from ``h``'s ``lr_schedule`` (index into
  ``SCHEDULES``, default constant), ``schedule_steps`` (the horizon; the search engine sets
  it to the steps a trial trains, 500 when absent) and ``lr_end`` (final multiplier, default
  0.01). Warm-up takes the first 5% of the schedule."""
  if "lr_schedule" not in h:
    return jnp.ones((), jnp.float32)
  kind = jnp.asarray(h["lr_schedule"], jnp.int32)
  total = jnp.maximum(jnp.asarray(h.get("schedule_steps", 500), jnp.float32), 1.0)
  end = jnp.asarray(h.get("lr_end", 0.01), jnp.float32)
  t = jnp.clip(step.astype(jnp.float32) / total, 0.0, 1.0)
  cosine = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  warm = jnp.clip(t / 0.05, 0.0, 1.0)
  return jnp.select([kind == 1, kind == 2], [cosine, warm * cosine], jnp.ones_like(t))


def finetune_stage(step: jax.Array, h: H) -> jax.Array:
  """Which stage of multi-step training ``step`` is in (DREAM's multi-step fine-tuning).

  ``h["finetune_steps"]`` (1: off, 2 or 3 stages) splits the ``schedule_steps`` horizon:
  each stage after the first takes ``finetune_fraction`` (default 0.2) of it, at the end.
  Stage ``k`` trains at ``finetune_lr ** k`` (default 0.1) times the learning rate and, with
  ``finetune_freeze`` (0: no, 1: body), updates only the output layer.
  """
  if "finetune_steps" not in h:
    return jnp.zeros((), jnp.int32)
  n = jnp.clip(jnp.asarray(h["finetune_steps"], jnp.int32), 1, 3)
  frac = jnp.asarray(h.get("finetune_fraction", 0.2), jnp.float32)
  total = jnp.maximum(jnp.asarray(h.get("schedule_steps", 500), jnp.float32), 1.0)
  t = step.astype(jnp.float32) / total
  # stage k (1 <= k < n) starts at 1 - (n - k) * frac of the horizon
  starts = [1.0 - (n - k).astype(jnp.float32) * frac for k in (1, 2)]
  return sum(((k < n) & (t >= s0)).astype(jnp.int32) for k, s0 in zip((1, 2), starts,
                                                                       strict=True))


def finetune_factor(step: jax.Array, h: H) -> tuple[jax.Array, jax.Array]:
  """``(lr multiplier, body frozen)`` of multi-step training at ``step`` (see
  :func:`finetune_stage`)."""
  stage = finetune_stage(step, h)
  lr = jnp.power(jnp.asarray(h.get("finetune_lr", 0.1), jnp.float32),
                 stage.astype(jnp.float32))
  frozen = (jnp.asarray(h.get("finetune_freeze", 0), jnp.int32) == 1) & (stage > 0)
  return lr, frozen


def output_layer_mask(params: PyTree) -> PyTree:
  """1.0 on the parameters of the output layer (the module holding the last kernel in
  layer order), 0.0 elsewhere."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  kernels = [path[:-1] for path, _ in leaves if getattr(path[-1], "key", None) == "kernel"]
  head = kernels[-1] if kernels else None
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(head is not None and path[:-1] == head, jnp.float32)
                for path, _ in leaves])


def clip_gradients(grads: PyTree, h: H) -> PyTree:
  """``grads`` clipped to global norm ``h["clip_norm"]`` when ``h`` has it (else unchanged)."""
  if "clip_norm" not in h:
    return grads
  norm = optax.global_norm(grads)
  limit = jnp.asarray(h["clip_norm"], jnp.float32)
  scale = jnp.where(norm > limit, limit / jnp.maximum(norm, 1e-30), 1.0)
  return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads)


# ------------------------------------------------------------------------- supervised builder
# what :func:`supervised` reads (``momentum`` with SGD, ``b1`` with AdamW; structural:
# ``optimizer``), beside what the model and ``init_transform`` read
SUPERVISED_READS: frozenset[str] = frozenset({
    "optimizer", "learning_rate", "weight_decay", "momentum", "b1", "lr_schedule", "lr_end",
    "schedule_steps", "clip_norm", "finetune_steps", "finetune_fraction", "finetune_lr",
    "finetune_freeze"})


def supervised(
    model: nn.Module,
    example_x: jax.Array,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    metrics_fn: Callable[[jax.Array, jax.Array], dict],
    optimizer: str,
    defaults: Mapping[str, float],
    init_transform: Callable[[PyTree, H], tuple[PyTree, PyTree | None]] | None = None,
    penalty: Callable[[PyTree, H], jax.Array] | None = None,
) -> TrialFns:
  """TrialFns for a Flax model ``model.apply(params, x, h) -> predictions``.

  Args:
    model: Flax module called as ``model(x, h)``.
    example_x: one batch, only its shape is used for initialisation.
    loss_fn: ``(predictions, y) -> scalar``; the L2 term comes from the optimizer.
    metrics_fn: ``(predictions, y) -> dict`` evaluated on a split.
    optimizer: one of ``OPTIMIZERS``; hyperparameters are read from ``h`` or ``defaults``.
    defaults: fallback hyperparameter values.
    init_transform: ``(params, h) -> (params, live_mask)`` applied after ``model.init``,
      e.g. to zero masked units; ``live_mask`` marks the parameters that exist.
    penalty: ``(params, h) -> scalar`` added to the training loss (e.g. an L2 term).
  """
  check_optimizer(optimizer)  # before anything is traced or compiled

  def init(key: jax.Array, h: H) -> PyTree:
    params = model.init(key, example_x, h)
    live = None
    if init_transform is not None:
      params, live = init_transform(params, h)
    opt = make_optimizer(optimizer, h, defaults)
    return {"params": params, "opt_state": opt.init(params), "live": live,
            "step": jnp.zeros((), jnp.int32)}

  def train_step(state: PyTree, batch: tuple[jax.Array, jax.Array], h: H):
    x, y = batch
    opt = make_optimizer(optimizer, h, defaults)

    def objective(p):
      data_loss = loss_fn(model.apply(p, x, h), y)
      total = data_loss if penalty is None else data_loss + penalty(p, h)
      return total, data_loss

    (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    if state["live"] is not None:
      grads = jax.tree_util.tree_map(lambda g, m: g * m, grads, state["live"])
    opt_state = with_hyperparams(state["opt_state"], h, defaults)
    clipped = clip_gradients(grads, h)
    updates, opt_state = opt.update(clipped, opt_state, state["params"])
    ft_lr, frozen = finetune_factor(state["step"], h)
    scale = lr_factor(state["step"], h) * ft_lr
    head = output_layer_mask(updates)
    updates = jax.tree_util.tree_map(
        lambda u, m: u * scale * jnp.where(frozen, m, 1.0).astype(u.dtype), updates, head)
    params = optax.apply_updates(state["params"], updates)
    tel = telemetry(loss, params, grads, state["live"])
    new = {"params": params, "opt_state": opt_state, "live": state["live"],
           "step": state["step"] + 1}
    return new, tel

  def evaluate(state: PyTree, x: jax.Array, y: jax.Array, h: H) -> dict:
    pred = model.apply(state["params"], x, h)
    out = metrics_fn(pred, y)
    out["loss"] = loss_fn(pred, y)
    return out

  return TrialFns(init, train_step, evaluate)


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict:
  return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def mse(pred: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(pred.reshape(y.shape) - y))


def regression_metrics(pred: jax.Array, y: jax.Array) -> dict:
  err = jnp.mean(jnp.square(pred.reshape(y.shape) - y))
  return {"mse": err, "r2": 1.0 - err / jnp.maximum(jnp.var(y), 1e-12)}
