"""A per-parameter MLP learned optimizer with an Adam nominal term.

Andrychowicz et al. (2016), "Learning to learn by gradient descent by gradient descent";
Metz et al. (2022), "Practical tradeoffs between memory, compute, and performance in learned
optimizers" (the small per-parameter MLP of learned_optimization); Harrison, Metz &
Sohl-Dickstein (2022), "A closer look at learned optimization: stability, robustness, and
inductive biases" (a nominal Adam term keeps the learned optimizer stable).

For every parameter entry an MLP shared across all entries reads the normalised features
``g, p, m_i (momenta at several timescales), g / sqrt(v), m_i / sqrt(v)`` and the training
progress ``tanh(t / s)``, and outputs a direction ``d`` and a log-magnitude ``a``::

    update = -exp(log_lr) * (adam_direction + d) * exp(clip(a))

The MLP's last layer starts near zero, so an untrained optimizer is Adam with learning rate
``init_lr``; meta-training learns the learning rate and the correction.
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


class MLPLOptState(NamedTuple):
  """Accumulators of :func:`mlp_lopt`."""

  count: jax.Array
  mu: tuple[PyTree, ...]
  nu: PyTree


class _Net(nn.Module):
  hidden_sizes: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for h in self.hidden_sizes:
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(2, kernel_init=nn.initializers.normal(1e-3))(x)


def mlp_lopt(hidden_sizes: Sequence[int] = (32, 32),
             momentum_decays: Sequence[float] = (0.5, 0.9, 0.99), rms_decay: float = 0.999,
             init_lr: float = 1e-3, max_log_magnitude: float = 4.0,
             eps: float = 1e-8) -> LearnedOptimizer:
  """A per-parameter MLP optimizer (direction and magnitude) on normalised features.

  Args:
    hidden_sizes: hidden layers of the per-parameter MLP.
    momentum_decays: EMA decays of the gradient momenta fed as features; the one closest to
      0.9 is Adam's first moment in the nominal term.
    rms_decay: EMA decay of the squared gradient (Adam's ``b2``).
    init_lr: the learning rate of the untrained optimizer (a meta-parameter, ``log_lr``).
    max_log_magnitude: the log-magnitude output is clipped to ``[-m, m]``.
    eps: added to ``sqrt(v)``.

  Returns:
    A :class:`LearnedOptimizer`.

  Examples:
    >>> lopt = mlp_lopt()
    >>> theta = lopt.init(jax.random.key(0))
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), lopt.as_optax(theta))
    >>> state = opt.init({"w": jnp.ones(3)})
  """
  decays = tuple(float(d) for d in momentum_decays)
  if not decays or not all(0.0 <= d < 1.0 for d in decays):
    raise ValueError(f"momentum_decays={momentum_decays}: need one or more values in [0, 1)")
  if not 0.0 < rms_decay < 1.0:
    raise ValueError(f"rms_decay={rms_decay}: must be in (0, 1)")
  if init_lr <= 0:
    raise ValueError(f"init_lr={init_lr}: must be > 0")
  b1_index = int(np.argmin([abs(d - 0.9) for d in decays]))
  b1 = decays[b1_index]
  net = _Net(tuple(int(h) for h in hidden_sizes))
  n_features = 3 + 2 * len(decays) + len(features.TIMESCALES)
  config = {"hidden_sizes": list(net.hidden_sizes), "momentum_decays": list(decays),
            "rms_decay": float(rms_decay), "init_lr": float(init_lr),
            "max_log_magnitude": float(max_log_magnitude), "eps": float(eps)}

  def init(key: jax.Array) -> PyTree:
    return {"net": net.init(key, jnp.zeros((1, n_features)))["params"],
            "log_lr": jnp.asarray(np.log(init_lr), jnp.float32)}

  def as_optax(theta: PyTree) -> optax.GradientTransformation:
    def init_fn(params: PyTree) -> MLPLOptState:
      zeros = lambda: jax.tree.map(jnp.zeros_like, params)
      return MLPLOptState(jnp.zeros((), jnp.int32), tuple(zeros() for _ in decays), zeros())

    def leaf_update(g, p, v, t, tfeat, *mus):
      r = jax.lax.rsqrt(v + eps ** 2)
      per = jnp.stack([g, p, g * r, *mus, *(m * r for m in mus)], axis=-1)
      per = features.second_moment_normalize(per.reshape(-1, per.shape[-1]))
      x = jnp.concatenate([per, jnp.broadcast_to(tfeat, (per.shape[0], tfeat.shape[0]))], -1)
      out = net.apply({"params": theta["net"]}, x.astype(g.dtype))
      direction = out[:, 0].reshape(g.shape)
      magnitude = jnp.clip(out[:, 1], -max_log_magnitude, max_log_magnitude).reshape(g.shape)
      m_hat = mus[b1_index] / (1.0 - b1 ** t)
      v_hat = v / (1.0 - rms_decay ** t)
      adam = m_hat / (jnp.sqrt(v_hat) + eps)
      return -jnp.exp(theta["log_lr"]) * (adam + direction) * jnp.exp(magnitude)

    def update_fn(grads: PyTree, state: MLPLOptState, params: PyTree | None = None):
      if params is None:
        raise ValueError("mlp_lopt needs params: call update(grads, state, params)")
      count = state.count + 1
      mu = tuple(jax.tree.map(lambda m, g, d=d: d * m + (1.0 - d) * g, ms, grads)
                 for d, ms in zip(decays, state.mu, strict=True))
      nu = jax.tree.map(lambda v, g: rms_decay * v + (1.0 - rms_decay) * jnp.square(g),
                        state.nu, grads)
      t = count.astype(jnp.float32)
      tfeat = features.time_features(count)
      updates = jax.tree.map(lambda g, p, v, *ms: leaf_update(g, p, v, t, tfeat, *ms),
                             grads, params, nu, *mu)
      return updates, MLPLOptState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)

  return LearnedOptimizer(init, as_optax, "mlp", config)
