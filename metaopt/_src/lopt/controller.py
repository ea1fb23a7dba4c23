"""A hyperparameter-controller learned optimizer over a standard optax base optimizer.

In the spirit of Almeida et al. (2021), "A generalizable approach to learning optimizers"
and Xu et al. (2017), "Learning an adaptive learning rate schedule": a small MLP reads
training statistics (the log gradient norm against its fast and slow moving averages, the
log parameter norm, training progress ``tanh(t / s)``) and outputs, every step, the learning
rate, momentum and weight decay of an ``optax.inject_hyperparams`` base optimizer
(``adamw``: ``b1``; ``sgd``: heavy-ball momentum with decoupled weight decay)::

    lr = exp(log_lr + o0), momentum = sigmoid(logit_momentum + o1),
    weight_decay = exp(log_weight_decay + o2),   o = max_log_change * tanh(MLP(features))

The MLP's last layer starts at zero, so an untrained controller is the base optimizer with
constant ``init_*`` hyperparameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt._src.lopt import features
from metaopt._src.lopt.base import LearnedOptimizer

PyTree = Any
BASES: tuple[str, ...] = ("adamw", "sgd")


class ControllerState(NamedTuple):
  """State of :func:`hparam_controller`: statistics, last hyperparameters, base state."""

  count: jax.Array
  ema_fast: jax.Array
  ema_slow: jax.Array
  hparams: dict[str, jax.Array]
  base: Any


class _Net(nn.Module):
  hidden_sizes: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for h in self.hidden_sizes:
      x = nn.tanh(nn.Dense(h)(x))
    return nn.Dense(3, kernel_init=nn.initializers.zeros)(x)


def _sgdw(learning_rate, momentum, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))


def _base(name: str) -> tuple[optax.GradientTransformation, str]:
  if name == "adamw":
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=1e-3, b1=0.9, weight_decay=0.0), "b1"
  return optax.inject_hyperparams(_sgdw)(learning_rate=1e-3, momentum=0.9,
                                         weight_decay=0.0), "momentum"


def hparam_controller(base: str = "adamw", hidden_sizes: Sequence[int] = (16,),
                      init_lr: float = 1e-3, init_momentum: float = 0.9,
                      init_weight_decay: float = 1e-4, max_log_change: float = 3.0,
                      fast_decay: float = 0.9, slow_decay: float = 0.99) -> LearnedOptimizer:
  """A learned controller of ``base``'s learning rate, momentum and weight decay.

  Args:
    base: the optax base optimizer, one of ``BASES``.
    hidden_sizes: hidden layers of the controller MLP.
    init_lr: learning rate of the untrained controller.
    init_momentum: momentum (``b1`` for adamw) of the untrained controller.
    init_weight_decay: decoupled weight decay of the untrained controller.
    max_log_change: bound on the per-step change of each hyperparameter in log / logit space.
    fast_decay: decay of the fast moving average of the log gradient norm.
    slow_decay: decay of the slow moving average.

  Returns:
    A :class:`LearnedOptimizer`.

  Examples:
    >>> lopt = hparam_controller("sgd")
    >>> opt = lopt.as_optax(lopt.init(jax.random.key(0)))
    >>> state = opt.init({"w": jnp.ones(3)})
  """
  if base not in BASES:
    raise ValueError(f"base={base!r}: allowed values are {', '.join(BASES)}")
  for field, v in (("init_lr", init_lr), ("init_weight_decay", init_weight_decay)):
    if v <= 0:
      raise ValueError(f"{field}={v}: must be > 0")
  if not 0.0 < init_momentum < 1.0:
    raise ValueError(f"init_momentum={init_momentum}: must be in (0, 1)")
  net = _Net(tuple(int(h) for h in hidden_sizes))
  n_features = 4 + len(features.TIMESCALES)
  base_opt, momentum_name = _base(base)
  config = {"base": base, "hidden_sizes": list(net.hidden_sizes), "init_lr": float(init_lr),
            "init_momentum": float(init_momentum),
            "init_weight_decay": float(init_weight_decay),
            "max_log_change": float(max_log_change), "fast_decay": float(fast_decay),
            "slow_decay": float(slow_decay)}

  def init(key: jax.Array) -> PyTree:
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return {"net": net.init(key, jnp.zeros((1, n_features)))["params"],
            "log_lr": f32(np.log(init_lr)),
            "logit_momentum": f32(np.log(init_momentum / (1.0 - init_momentum))),
            "log_weight_decay": f32(np.log(init_weight_decay))}

  def as_optax(theta: PyTree) -> optax.GradientTransformation:
    def init_fn(params: PyTree) -> ControllerState:
      z = jnp.zeros((), jnp.float32)
      hp = {"learning_rate": z, "momentum": z, "weight_decay": z}
      return ControllerState(jnp.zeros((), jnp.int32), z, z, hp, base_opt.init(params))

    def update_fn(grads: PyTree, state: ControllerState, params: PyTree | None = None):
      if params is None:
        raise ValueError("hparam_controller needs params: call update(grads, state, params)")
      log_gn = features.safe_log(optax.global_norm(grads))
      log_pn = features.safe_log(optax.global_norm(params))
      first = state.count == 0
      fast = jnp.where(first, log_gn, fast_decay * state.ema_fast + (1 - fast_decay) * log_gn)
      slow = jnp.where(first, log_gn, slow_decay * state.ema_slow + (1 - slow_decay) * log_gn)
      fast, slow = fast.astype(state.ema_fast.dtype), slow.astype(state.ema_slow.dtype)
      x = jnp.concatenate([jnp.stack([log_gn - slow, fast - slow, 0.1 * log_gn,
                                      0.1 * log_pn]),
                           features.time_features(state.count).astype(log_gn.dtype)])
      out = max_log_change * jnp.tanh(net.apply({"params": theta["net"]}, x[None])[0])
      hp = {"learning_rate": jnp.exp(theta["log_lr"] + out[0]),
            "momentum": jax.nn.sigmoid(theta["logit_momentum"] + out[1]),
            "weight_decay": jnp.exp(theta["log_weight_decay"] + out[2])}
      old = state.base.hyperparams
      base_state = state.base._replace(hyperparams={
          **old, "learning_rate": hp["learning_rate"].astype(old["learning_rate"].dtype),
          momentum_name: hp["momentum"].astype(old[momentum_name].dtype),
          "weight_decay": hp["weight_decay"].astype(old["weight_decay"].dtype)})
      updates, base_state = base_opt.update(grads, base_state, params)
      hp = {k: v.astype(jnp.float32) for k, v in hp.items()}
      return updates, ControllerState(state.count + 1, fast, slow, hp, base_state)

    return optax.GradientTransformation(init_fn, update_fn)

  return LearnedOptimizer(init, as_optax, "hparam_controller", config)


# --------------------------------------------------------------------- Adam controller
class AdamControllerState(NamedTuple):
  """State of :func:`adam_controller`: statistics, the last multiplier, Adam's state."""

  count: jax.Array
  ema_fast: jax.Array
  ema_slow: jax.Array
  multiplier: jax.Array
  adam: Any


class _Head(nn.Module):
  hidden_sizes: Sequence[int]
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for h in self.hidden_sizes:
      x = nn.tanh(nn.Dense(h)(x))
    return nn.Dense(self.outputs, kernel_init=nn.initializers.zeros)(x)


ADAM_CONTROLLER_FEATURES: tuple[str, ...] = (
    "log_grad_norm - slow_ema", "fast_ema - slow_ema", "cos(grad, momentum)",
    "t / num_steps", "1 - t / num_steps", *(f"tanh(t / {s:g})" for s in features.TIMESCALES))
# ``inputs="progress"``: the MLP sees only the fraction of training done, so the multiplier
# is a learned learning-rate schedule in ``t / num_steps`` (the same at every horizon).
ADAM_CONTROLLER_INPUTS: tuple[str, ...] = ("all", "progress")
PROGRESS_FEATURES: tuple[str, ...] = ("t / num_steps", "1 - t / num_steps")


def adam_controller(learning_rate: float = 1e-3, hidden_sizes: Sequence[int] = (16,),
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    max_log_change: float = 3.0, num_steps: int | None = None,
                    fast_decay: float = 0.9, slow_decay: float = 0.99,
                    inputs: str = "all",
                    max_log_increase: float | None = None) -> LearnedOptimizer:
  """Adam at ``learning_rate`` times a learned per-step multiplier of its update.

  A small MLP reads global training statistics (:data:`ADAM_CONTROLLER_FEATURES`: the log
  gradient norm against its fast and slow moving averages, the cosine between the gradient
  and Adam's first moment, training progress ``t / num_steps`` when ``num_steps`` is given
  and ``tanh(t / s)``) and outputs ``o``; the step is ``exp(max_log_change * tanh(o))`` times
  Adam's. With ``inputs="progress"`` the MLP reads only ``t / num_steps``
  (:data:`PROGRESS_FEATURES`): the multiplier is then a learned learning-rate schedule over
  the fraction of training, horizon-free. The MLP's last layer starts at zero, so an
  untrained controller *is*
  ``optax.adam(learning_rate, b1, b2, eps)`` (bit for bit): meta-training can only move it
  away from Adam where that lowers the meta-loss. Use it on top of a tuned Adam learning rate.

  Args:
    learning_rate: Adam's learning rate (the base the multiplier scales).
    hidden_sizes: hidden layers of the controller MLP.
    b1, b2, eps: Adam's settings.
    max_log_change: bound on ``|log multiplier|`` (on its decrease when
      ``max_log_increase`` is given).
    num_steps: length of the run (progress features ``t / num_steps``); ``None``: zero.
    fast_decay, slow_decay: decays of the moving averages of the log gradient norm.
    inputs: ``"all"`` (:data:`ADAM_CONTROLLER_FEATURES`) or ``"progress"``
      (:data:`PROGRESS_FEATURES` only, needs ``num_steps``), one of
      :data:`ADAM_CONTROLLER_INPUTS`.
    max_log_increase: bound on the increase of the log multiplier (``None``:
      ``max_log_change``); e.g. ``log(2)`` never more than doubles Adam's step.

  Returns:
    A :class:`LearnedOptimizer`.

  Examples:
    >>> lopt = adam_controller(3e-3, num_steps=200)
    >>> opt = lopt.as_optax(lopt.init(jax.random.key(0)))  # == optax.adam(3e-3) untrained
  """
  if not learning_rate > 0:
    raise ValueError(f"learning_rate={learning_rate}: must be > 0")
  if num_steps is not None and num_steps < 1:
    raise ValueError(f"num_steps={num_steps}: must be >= 1 or None")
  if not max_log_change > 0:
    raise ValueError(f"max_log_change={max_log_change}: must be > 0")
  if inputs not in ADAM_CONTROLLER_INPUTS:
    raise ValueError(f"inputs={inputs!r}: allowed values are "
                     f"{', '.join(ADAM_CONTROLLER_INPUTS)}")
  if inputs == "progress" and num_steps is None:
    raise ValueError("inputs='progress' needs num_steps (the schedule is over t / num_steps)")
  if max_log_increase is not None and not max_log_increase > 0:
    raise ValueError(f"max_log_increase={max_log_increase}: must be > 0 or None")
  up = float(max_log_change if max_log_increase is None else max_log_increase)
  net = _Head(tuple(int(h) for h in hidden_sizes), 1)
  progress_only = inputs == "progress"
  n_features = len(PROGRESS_FEATURES if progress_only else ADAM_CONTROLLER_FEATURES)
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  config = {"learning_rate": float(learning_rate), "hidden_sizes": list(net.hidden_sizes),
            "b1": float(b1), "b2": float(b2), "eps": float(eps),
            "max_log_change": float(max_log_change),
            "num_steps": None if num_steps is None else int(num_steps),
            "fast_decay": float(fast_decay), "slow_decay": float(slow_decay),
            "inputs": inputs,
            "max_log_increase": None if max_log_increase is None else float(max_log_increase)}

  def init(key: jax.Array) -> PyTree:
    return {"net": net.init(key, jnp.zeros((1, n_features)))["params"]}

  def as_optax(theta: PyTree) -> optax.GradientTransformation:
    def init_fn(params: PyTree) -> AdamControllerState:
      dt = jnp.result_type(*jax.tree.leaves(params), jnp.float32)  # float64 under x64
      z = jnp.zeros((), dt)
      return AdamControllerState(jnp.zeros((), jnp.int32), z, z, jnp.ones((), dt),
                                 adam.init(params))

    def update_fn(grads: PyTree, state: AdamControllerState, params: PyTree | None = None):
      del params
      direction, adam_state = adam.update(grads, state.adam)
      gn = optax.global_norm(grads)
      log_gn = features.safe_log(gn)
      dt = log_gn.dtype
      first = state.count == 0
      fast = jnp.where(first, log_gn, fast_decay * state.ema_fast + (1 - fast_decay) * log_gn)
      slow = jnp.where(first, log_gn, slow_decay * state.ema_slow + (1 - slow_decay) * log_gn)
      mu = adam_state.mu
      dot = sum(jnp.vdot(g, m) for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mu),
                                                strict=True))
      cos = dot / jnp.maximum(gn * optax.global_norm(mu), 1e-12)
      t = state.count.astype(dt)
      frac = t / num_steps if num_steps is not None else jnp.zeros((), dt)
      if progress_only:
        x = jnp.stack([frac, 1.0 - frac])
      else:
        x = jnp.concatenate([jnp.stack([log_gn - slow, fast - slow, cos.astype(dt), frac,
                                        1.0 - frac]),
                             features.time_features(state.count).astype(dt)])
      o = jnp.tanh(net.apply({"params": theta["net"]}, x[None])[0, 0])
      mult = jnp.exp(jnp.where(o > 0, up, max_log_change) * o)
      step = -learning_rate * mult
      updates = jax.tree.map(lambda u: u * step.astype(u.dtype), direction)
      cast = lambda v, ref: v.astype(ref.dtype)
      fast, slow = cast(fast, state.ema_fast), cast(slow, state.ema_slow)
      mult = cast(mult, state.multiplier)
      return updates, AdamControllerState(state.count + 1, fast, slow, mult, adam_state)

    return optax.GradientTransformation(init_fn, update_fn)

  return LearnedOptimizer(init, as_optax, "adam_controller", config)
