"""Synthetic black-box test functions on the unit cube, with known minima.

Every function takes points ``u[..., d]`` in ``[0, 1]^d`` and returns ``f[...]`` (minimised),
rescaling to the function's usual domain inside, so any searcher of metaopt runs on them as is.

* Branin (Dixon & Szego 1978), on ``[-5, 10] x [0, 15]``: minimum 0.397887 at three points.
* Hartmann-6 (Hartmann 1973; Dixon & Szego 1978), on ``[0, 1]^6``: minimum -3.32237.
* Rosenbrock (Rosenbrock 1960), d-dimensional on ``[-5, 10]^d``: minimum 0 at ``x = 1``.
* ``mixed``: two categorical index coordinates (3 and 4 choices, decoded as in
  ``metaopt.spaces.Choice``: ``floor(u * k)``) and two continuous ones whose optimum moves with the
  first category; minimum 0. ``MIXED_LEVELS`` gives the number of choices per coordinate
  (0 = continuous), the ``levels`` argument of ``grid`` and ``regularized_evolution``.
* Sphere: ``sum((u - 0.3)^2)``, minimum 0.

The surfaces are the ones in the Virtual Library of Simulation Experiments (Surjanovic &
Bingham), https://www.sfu.ca/~ssurjano/optimization.html.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2], np.float32)
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]], np.float32)
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886],
                         [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650],
                         [4047, 8828, 8732, 5743, 1091, 381]], np.float32)

MIXED_LEVELS = (3, 4, 0, 0)
_MIXED_OFF_A = np.array([0.6, 0.3, 0.0], np.float32)
_MIXED_OFF_B = np.array([0.4, 0.0, 0.2, 0.5], np.float32)
_MIXED_CENTER = np.array([[0.2, 0.8], [0.7, 0.3], [0.25, 0.65]], np.float32)


def branin(u: jax.Array) -> jax.Array:
  """Branin-Hoo on ``[-5, 10] x [0, 15]`` mapped from ``[0, 1]^2``; minimum 0.397887."""
  x1 = 15.0 * u[..., 0] - 5.0
  x2 = 15.0 * u[..., 1]
  b, c, t = 5.1 / (4 * np.pi**2), 5.0 / np.pi, 1.0 / (8 * np.pi)
  return (x2 - b * x1**2 + c * x1 - 6.0) ** 2 + 10.0 * (1 - t) * jnp.cos(x1) + 10.0


def hartmann6(u: jax.Array) -> jax.Array:
  """Hartmann-6 on ``[0, 1]^6``; minimum -3.32237 at (0.2017, 0.1500, 0.4769, 0.2753, ...)."""
  inner = jnp.sum(_H6_A * jnp.square(u[..., None, :] - _H6_P), axis=-1)  # [..., 4]
  return -jnp.sum(_H6_ALPHA * jnp.exp(-inner), axis=-1)


def rosenbrock(u: jax.Array) -> jax.Array:
  """Rosenbrock in ``d >= 2`` dimensions on ``[-5, 10]^d``; minimum 0 at ``u = 0.4``."""
  x = 15.0 * u - 5.0
  return jnp.sum(100.0 * jnp.square(x[..., 1:] - x[..., :-1] ** 2)
                 + jnp.square(1.0 - x[..., :-1]), axis=-1)


def mixed(u: jax.Array) -> jax.Array:
  """Two categorical coordinates (3 and 4 choices) and two continuous ones; minimum 0.

  ``f = a_off[i] + b_off[j] + 5 * |x - center[i]|^2`` with ``i = floor(3 u0)``,
  ``j = floor(4 u1)``, ``x = u[2:4]``; the minimum is at ``i = 2, j = 1, x = (0.25, 0.65)``.
  """
  i = jnp.clip(jnp.floor(u[..., 0] * 3), 0, 2).astype(jnp.int32)
  j = jnp.clip(jnp.floor(u[..., 1] * 4), 0, 3).astype(jnp.int32)
  center = jnp.asarray(_MIXED_CENTER)[i]
  return (jnp.asarray(_MIXED_OFF_A)[i] + jnp.asarray(_MIXED_OFF_B)[j]
          + 5.0 * jnp.sum(jnp.square(u[..., 2:4] - center), axis=-1))


def sphere(u: jax.Array) -> jax.Array:
  """``sum((u - 0.3)^2)`` in any dimension; minimum 0."""
  return jnp.sum(jnp.square(u - 0.3), axis=-1)


class Problem(NamedTuple):
  """A test function with its dimension, known minimum and per-coordinate levels."""

  fn: Callable[[jax.Array], jax.Array]
  dim: int
  minimum: float
  levels: tuple[int, ...] | None = None


PROBLEMS: dict[str, Problem] = {
    "branin": Problem(branin, 2, 0.397887),
    "hartmann6": Problem(hartmann6, 6, -3.32237),
    "rosenbrock10": Problem(rosenbrock, 10, 0.0),
    "mixed": Problem(mixed, 4, 0.0, MIXED_LEVELS),
    "sphere5": Problem(sphere, 5, 0.0),
}


def _zdt_g(u: jax.Array) -> jax.Array:
  return 1.0 + 9.0 * jnp.mean(u[..., 1:], axis=-1)


def zdt1(u: jax.Array) -> jax.Array:
  """ZDT1 (Zitzler, Deb & Thiele, Evol. Comput. 2000): two minimised objectives ``[..., 2]``
  on ``[0, 1]^d`` (d >= 2, usually 30); convex front ``f2 = 1 - sqrt(f1)`` where ``u[1:] = 0``."""
  g = _zdt_g(u)
  f1 = u[..., 0]
  return jnp.stack([f1, g * (1.0 - jnp.sqrt(f1 / g))], axis=-1)


def zdt2(u: jax.Array) -> jax.Array:
  """ZDT2: as :func:`zdt1` with the concave front ``f2 = 1 - f1^2``."""
  g = _zdt_g(u)
  f1 = u[..., 0]
  return jnp.stack([f1, g * (1.0 - jnp.square(f1 / g))], axis=-1)


def zdt3(u: jax.Array) -> jax.Array:
  """ZDT3: as :func:`zdt1` with a front of five disconnected pieces,
  ``f2 = 1 - sqrt(f1) - f1 sin(10 pi f1)``."""
  g = _zdt_g(u)
  f1 = u[..., 0]
  h = 1.0 - jnp.sqrt(f1 / g) - (f1 / g) * jnp.sin(10.0 * jnp.pi * f1)
  return jnp.stack([f1, g * h], axis=-1)
