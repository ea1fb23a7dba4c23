"""A search's PRNG keys made on the host: ``jax.random.key``, ``split`` and ``fold_in`` of the
default threefry-2x32 implementation, bit for bit, computed with numpy.

The driver needs a handful of keys per round (the search's two root keys, one per round, one
per epoch, one per trial); each is one threefry hash of a few words. Made by JAX they cost an
XLA program each (compiled once per process, 0.05-0.2 s of CPU apiece on a 2-core CPU), which
a cold search pays before its first result; here they cost microseconds and compile nothing.
The keys are wrapped as JAX key arrays (``jax.random.wrap_key_data``), so every consumer gets
what it got before. Under another ``jax_default_prng_impl`` JAX makes them, as before.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The Threefry-2x32 hash (20 rounds) of the counter words ``(x1, x2)`` under ``key``
  (two uint32 words), as JAX's ``threefry2x32_p`` computes it."""
  k1, k2 = (np.uint32(k) for k in key)
  ks = (k1, k2, np.uint32(k1 ^ k2 ^ _PARITY))
  with np.errstate(over="ignore"):
    x = [np.asarray(x1, np.uint32) + ks[0], np.asarray(x2, np.uint32) + ks[1]]
    for i in range(5):
      for r in _ROTATIONS[i % 2]:
        x[0] = x[0] + x[1]
        x[1] = (x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))
        x[1] = x[0] ^ x[1]
      x[0] = x[0] + ks[(i + 1) % 3]
      x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x[0], x[1]


def on_host() -> bool:
  """Whether keys are made here: JAX's default PRNG is threefry-2x32."""
  return jax.config.jax_default_prng_impl == "threefry2x32"


def seed_data(seed: int) -> np.ndarray:
  """The words of ``jax.random.key(seed)`` for an int32 ``seed``: ``[0, seed mod 2**32]``."""
  return np.asarray([0, int(seed) % 2**32], np.uint32)


def split2(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The words of ``jax.random.split(key)`` (two keys; JAX's partitionable split: the hash of
  the counters ``(0, i)``)."""
  if not jax.config.jax_threefry_partitionable:
    y = np.concatenate(threefry2x32(data, np.uint32([0, 1]), np.uint32([2, 3])))
    return y[0:2], y[2:4]
  y1, y2 = threefry2x32(data, np.zeros(2, np.uint32), np.arange(2, dtype=np.uint32))
  return np.asarray([y1[0], y2[0]]), np.asarray([y1[1], y2[1]])


def fold_in_data(data: np.ndarray, value: int) -> np.ndarray:
  """The words of ``jax.random.fold_in(key, value)`` for ``0 <= value < 2**32``: the hash of
  the counter words ``(0, value)``."""
  y1, y2 = threefry2x32(data, np.zeros(1, np.uint32), np.asarray([value], np.uint32))
  return np.asarray([y1[0], y2[0]])


def wrap(data: np.ndarray) -> jax.Array:
  """Key words (last axis 2) as a JAX threefry key array (nothing compiled)."""
  return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl="threefry2x32")


def trial_keys_data(seeds: np.ndarray) -> np.ndarray:
  """The words of ``vmap(jax.random.key)(seeds)`` for uint32 ``seeds``: ``[0, seed]`` each."""
  seeds = np.asarray(seeds, np.uint32)
  return np.stack([np.zeros_like(seeds), seeds], axis=-1)


def uniform_data(data: np.ndarray, dim: int) -> np.ndarray | None:
  """``jax.random.uniform(key, (dim,))`` (float32 in ``[0, 1)``) for the key words ``data``,
  bit for bit; None where JAX's bits are not the partitionable threefry's."""
  if not (on_host() and jax.config.jax_threefry_partitionable):
    return None
  b1, b2 = threefry2x32(data, np.zeros(dim, np.uint32), np.arange(dim, dtype=np.uint32))
  one = np.asarray(1.0, np.float32).view(np.uint32)
  return ((b1 ^ b2) >> np.uint32(9) | one).view(np.float32) - np.float32(1.0)


def host_data(key: Any) -> np.ndarray | None:
  """The two words of a concrete threefry key (a typed key array or raw ``uint32[2]``), or
  None for any other key (another implementation, a tracer)."""
  if isinstance(key, jax.core.Tracer):
    return None
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if str(jax.random.key_impl(key)) != "threefry2x32":
      return None
    key = jax.random.key_data(key)
  data = np.asarray(key)
  return data if data.shape == (2,) and data.dtype == np.uint32 else None


def point_uniforms(data: np.ndarray, n: int, dim: int) -> np.ndarray | None:
  """``vmap(lambda i: uniform(split(fold_in(key, i))[0], (dim,)))(arange(n))``, ``[n, dim]``
  float32 (a TPE's startup points, ``tpe.make_startup_ask``), bit for bit; None where JAX
  makes its keys or bits another way."""
  rows = [uniform_data(split2(fold_in_data(data, i))[0], dim) for i in range(n)]
  if any(r is None for r in rows):
    return None
  return np.stack(rows) if rows else np.zeros((0, dim), np.float32)
