"""Input features of learned optimizers, normalised as in the literature.

Metz et al. (2022), "Practical tradeoffs between memory, compute, and performance in learned
optimizers" and VeLO (Metz et al. 2022): per-tensor second-moment normalisation of each
per-parameter feature, and training progress as ``tanh(step / s)`` over log-spaced
timescales ``s`` (no need to know the horizon).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TIMESCALES: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def second_moment_normalize(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """``x / sqrt(mean(x^2) + eps)`` over the whole tensor (the last axis stacks features)."""
  axes = tuple(range(x.ndim - 1))
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + eps)


def time_features(count: jax.Array, timescales: tuple[float, ...] = TIMESCALES
                  ) -> jax.Array:
  """``tanh(count / s)`` for each timescale ``s``: shape ``(len(timescales),)``."""
  t = jnp.asarray(count, jnp.float32)
  return jnp.tanh(t / jnp.asarray(timescales, jnp.float32))


def safe_log(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return jnp.log(jnp.maximum(x, eps))
