"""DARTS and GDAS/SNAS relaxations: mixing weights from architecture logits.

* DARTS: Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.
* GDAS: Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours",
  CVPR 2019 (hard Gumbel-softmax, straight-through, linear temperature annealing).
* SNAS: Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019
  (relaxed Gumbel-softmax with exponential temperature annealing).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaopt._src.nas.search import SearchSettings

Mixing = Callable[[dict, jax.Array, jax.Array], dict]


def temperature(settings: SearchSettings, step: jax.Array) -> jax.Array:
  """GDAS: linear from ``tau_max`` to ``tau_min``; SNAS: exponential; DARTS: 1."""
  s = settings
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(s.total_steps - 1, 1), 0.0, 1.0)
  if s.method == "gdas":
    return s.tau_max - (s.tau_max - s.tau_min) * frac
  if s.method == "snas":
    return s.tau_max * (s.tau_min / s.tau_max) ** frac
  return jnp.ones(())


def gumbel_softmax(logits: jax.Array, key: jax.Array, tau: jax.Array,
                   hard: bool) -> jax.Array:
  """A Gumbel-softmax sample per row; ``hard``: one-hot forward, soft gradient (ST)."""
  g = jax.random.gumbel(key, logits.shape, logits.dtype)
  soft = jax.nn.softmax((logits + g) / tau, axis=-1)
  if not hard:
    return soft
  onehot = jax.nn.one_hot(jnp.argmax(soft, -1), logits.shape[-1], dtype=logits.dtype)
  return onehot + soft - jax.lax.stop_gradient(soft)


def make_mixing(settings: SearchSettings) -> Mixing:
  """``mixing(alpha, key, step) -> {cell_type: weights[edges, ops]}`` for the method."""
  s = settings

  def mixing(alpha, key, step):
    if s.method == "darts":
      return {c: jax.nn.softmax(a, -1) for c, a in alpha.items()}
    tau = temperature(s, step)
    hard = s.method == "gdas" or s.snas_hard
    keys = jax.random.split(key, len(alpha))
    return {c: gumbel_softmax(a, k, tau, hard)
            for (c, a), k in zip(sorted(alpha.items()), keys, strict=True)}

  return mixing
