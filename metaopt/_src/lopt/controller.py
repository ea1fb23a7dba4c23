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
