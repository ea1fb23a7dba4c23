"""Pathology detection for hypergradients, so a white-box search can fall back to black-box.

Hypergradients fail in known ways: unrolled reverse-mode through long training at large
learning rates is chaotic or explodes (Maclaurin et al. 2015; Shaban et al. 2019 analyse
truncation bias), implicit solves stop short of the tolerance or start from a non-stationary
inner point (Pedregosa 2016; Lorraine et al. 2020), and discrete hyperparameters (``Int``,
``Choice``) have no gradient at all. This module turns :class:`metaopt.hypergrad.Diagnostics` into
boolean :class:`Pathologies`, tracking norm growth across outer steps in a small state:

    monitor = hypergrad_monitor(max_norm=1e3, max_growth=100.0)
    mstate = monitor.init()
    mstate, path = monitor.update(mstate, result.diagnostics)
    if path.fallback: ...   # hand the space and history to a black-box searcher

Everything is ``jnp`` (jittable, vmappable over a population).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metaopt.hypergrad.types import Diagnostics


class Pathologies(NamedTuple):
  """Boolean flags for one hypergradient (arrays, so they vmap and stack).

  Attributes:
    nonfinite: NaN or inf in the value or the hypergradient.
    exploding: hypergradient norm above ``max_norm``.
    growing: norm grew by more than ``max_growth`` times since the previous outer step.
    chaotic: unroll amplification above ``max_amplification``.
    unconverged: an implicit linear solve missed its tolerance.
    untrusted: the method itself declared the result untrustworthy.
    discrete: the searched space has discrete (``Int``/``Choice``) parameters.
    fallback: any of the above: stop trusting gradients, switch to black-box search.
  """

  nonfinite: jax.Array
  exploding: jax.Array
  growing: jax.Array
  chaotic: jax.Array
  unconverged: jax.Array
  untrusted: jax.Array
  discrete: jax.Array
  fallback: jax.Array


class MonitorState(NamedTuple):
  """Previous hypergradient norm, outer steps seen, and how many were flagged."""

  prev_norm: jax.Array
  count: jax.Array
  n_flagged: jax.Array


class HypergradMonitor(NamedTuple):
  """``init() -> MonitorState`` and ``update(state, diagnostics) -> (state, Pathologies)``."""

  init: Callable[[], MonitorState]
  update: Callable[[MonitorState, Diagnostics], tuple[MonitorState, Pathologies]]


def check(
    diagnostics: Diagnostics,
    *,
    max_norm: float = 1e6,
    max_amplification: float = 1e6,
    prev_norm: jax.Array | float | None = None,
    max_growth: float = 1e3,
    discrete: bool = False,
) -> Pathologies:
  """Stateless check of one result's diagnostics.

  Args:
    diagnostics: a result's :class:`Diagnostics`.
    max_norm: norms above this are *exploding*.
    max_amplification: unroll amplifications above this are *chaotic*.
    prev_norm: the previous outer step's norm (``None`` or 0: no growth check).
    max_growth: a norm more than ``max_growth`` times ``prev_norm`` is *growing*.
    discrete: the searched space has discrete parameters.

  Returns:
    :class:`Pathologies`.
  """
  d = diagnostics
  nonfinite = ~d.finite
  exploding = d.grad_norm > max_norm
  if prev_norm is None:
    growing = jnp.zeros_like(d.finite)
  else:
    prev = jnp.asarray(prev_norm, d.grad_norm.dtype)
    growing = (prev > 0) & (d.grad_norm > max_growth * prev)
  chaotic = d.amplification > max_amplification
  unconverged = ~d.converged
  untrusted = ~d.trustworthy
  disc = jnp.full_like(d.finite, bool(discrete))
  fallback = nonfinite | exploding | growing | chaotic | unconverged | untrusted | disc
  return Pathologies(nonfinite, exploding, growing, chaotic, unconverged, untrusted, disc,
                     fallback)


def hypergrad_monitor(
    *,
    max_norm: float = 1e6,
    max_growth: float = 1e3,
    max_amplification: float = 1e6,
    discrete: bool = False,
) -> HypergradMonitor:
  """A stateful monitor of hypergradients across outer steps.

  Args:
    max_norm: norms above this are *exploding*.
    max_growth: a norm growing by more than this factor between consecutive outer steps
      is *growing* (the start of an explosion).
    max_amplification: unroll amplifications above this are *chaotic*.
    discrete: the searched space has discrete parameters (see :func:`nondifferentiable`).

  Returns:
    A :class:`HypergradMonitor`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from metaopt.hypergrad.types import make_diagnostics
    >>> m = hypergrad_monitor(max_growth=10.0)
    >>> s = m.init()
    >>> s, p = m.update(s, make_diagnostics(jnp.asarray(1.0), jnp.asarray(1.0)))
    >>> s, p = m.update(s, make_diagnostics(jnp.asarray(1.0), jnp.asarray(50.0)))
    >>> bool(p.growing), bool(p.fallback), int(s.n_flagged)
    (True, True, 1)
  """

  def init_fn() -> MonitorState:
    return MonitorState(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def update_fn(state: MonitorState, diagnostics: Diagnostics):
    path = check(diagnostics, max_norm=max_norm, max_amplification=max_amplification,
                 prev_norm=state.prev_norm, max_growth=max_growth, discrete=discrete)
    norm = jnp.where(diagnostics.finite, diagnostics.grad_norm, state.prev_norm)
    new = MonitorState(norm.astype(state.prev_norm.dtype), state.count + 1,
                       state.n_flagged + path.fallback.astype(jnp.int32))
    return new, path

  return HypergradMonitor(init_fn, update_fn)


def nondifferentiable(space: Any, names: Sequence[str] | None = None) -> list[str]:
  """Names of the space's parameters that have no hypergradient.

  ``Int`` and ``Choice`` are discrete; ``Fixed`` has nothing to search. Conditional
  ``Float`` parameters are differentiable only where active, and are not listed.

  Args:
    space: a ``metaopt.spaces.Space``.
    names: restrict to these names (default: all parameters).

  Returns:
    Sorted list of names.
  """
  from metaopt.spaces import Float

  names = list(space.params) if names is None else list(names)
  unknown = [n for n in names if n not in space.params]
  if unknown:
    raise ValueError(f"space: unknown parameter(s) {unknown}; known: {sorted(space.params)}")
  return sorted(n for n in names if not isinstance(space.params[n], Float))


def summarize(pathologies: Pathologies) -> dict[str, Any]:
  """Counts of each flag over all axes (e.g. a population and outer steps), as Python ints."""
  return {k: int(jnp.sum(jnp.asarray(v))) for k, v in pathologies._asdict().items()}


def first_fallback(pathologies: Pathologies) -> jax.Array:
  """Index of the first outer step (leading axis) where any member flagged fallback, or -1."""
  fb = jnp.asarray(pathologies.fallback)
  per_step = fb.reshape(fb.shape[0], -1).any(axis=1)
  return jnp.where(per_step.any(), jnp.argmax(per_step), -1)

