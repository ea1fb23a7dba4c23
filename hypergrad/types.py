"""Shared types of ``hypergrad``: the inner-loop protocol, results and their diagnostics.

Every hypergradient method (unrolled reverse-mode, Maclaurin et al. 2015; forward-mode,
Franceschi et al. 2017; implicit differentiation, Pedregosa 2016 and Lorraine et al. 2020)
returns one :class:`HypergradResult` ``(value, grad, diagnostics, params, train_loss)``, so a
white-box search program or a monitor can swap methods without changing shapes.

An inner training run is an :class:`InnerLoop`, a NamedTuple of pure functions::

    state = inner.init(start, hparams)            # start: initial params (or a PRNG key)
    state, train_loss = inner.step(state, hparams, x)   # x: a minibatch or a step index
    params = inner.params(state)                  # what the outer loss reads

and optionally ``inner.loss(params, hparams, x)`` and ``inner.update(state, grads, hparams)``
with ``step = update(state, grad(loss), hparams)`` (enables Hessian-vector-product backward).

``hparams`` is any pytree of floating arrays (per-layer learning rates, weight decays,
momentum, loss weights...); steps read it directly, never through a stale copy in the
optimizer state, so gradients reach it from every step (see ``inner.refresh_hyperparams``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
HParams = Any


class InnerLoop(NamedTuple):
  """One inner training run as pure functions (see the module docstring).

  ``loss`` and ``update`` are optional: when a step is ``update(state, grad(loss)(params,
  hparams, x), hparams)``, giving them lets ``unrolled`` back-propagate with Hessian-vector
  products (``backward="hvp"``), which is cheaper than differentiating ``step`` twice.
  """

  init: Callable[[PyTree, HParams], PyTree]
  step: Callable[[PyTree, HParams, PyTree], tuple[PyTree, jax.Array]]
  params: Callable[[PyTree], PyTree]
  loss: Callable[[PyTree, HParams, PyTree], jax.Array] | None = None
  update: Callable[[PyTree, PyTree, HParams], PyTree] | None = None


class Diagnostics(NamedTuple):
  """Health of one hypergradient; every field is an array so results vmap and stack.

  Attributes:
    grad_norm: global L2 norm of the hypergradient.
    finite: value and every hypergradient entry are finite.
    residual_norm: relative residual ``||A x - b|| / ||b||`` of the implicit linear solve
      (0 for exact methods).
    iterations: iterations the linear solve used (0 for exact methods).
    converged: the linear solve met its tolerance (True for exact methods).
    inner_grad_norm: ``||d train_loss / d params||`` at the inner solution (implicit
      methods, whose formula assumes a stationary point, with ``stats=True`` or
      ``inner_tol``; 0 where not computed).
    amplification: ``||dV/d params_start|| / ||dV/d params_T||`` of an unrolled window, how
      much the inner dynamics amplify sensitivities (>> 1: chaotic or exploding unroll;
      0 where not computed).
    trustworthy: finite, converged, norm below the method's ``max_norm``, amplification
      below its ``max_amplification`` and (implicit, when asked) the inner solution
      stationary. Anything else must not be used as a good gradient.
  """

  grad_norm: jax.Array
  finite: jax.Array
  residual_norm: jax.Array
  iterations: jax.Array
  converged: jax.Array
  inner_grad_norm: jax.Array
  amplification: jax.Array
  trustworthy: jax.Array


class HypergradResult(NamedTuple):
  """Outer loss, its hypergradient (same structure as ``hparams``) and diagnostics.

  Attributes:
    value: the outer (validation) loss at the inner solution.
    grad: ``d value / d hparams``, a pytree shaped like ``hparams``.
    diagnostics: a :class:`Diagnostics`.
    params: the inner parameters the value was computed at (``w_T`` or ``w*``).
    train_loss: the inner training loss of the last step (or at ``w*``; ``implicit``: NaN
      unless asked for with ``stats=True`` or ``inner_tol``).
  """

  value: jax.Array
  grad: PyTree
  diagnostics: Diagnostics
  params: PyTree
  train_loss: jax.Array


Estimator = Callable[[HParams, PyTree, jax.Array], HypergradResult]
"""``estimator(hparams, start, key) -> HypergradResult``: one hypergradient, data drawn by key."""


# ------------------------------------------------------------------------- tree helpers
def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Sum over leaves of ``vdot(a_i, b_i)``."""
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
  return sum(leaves, jnp.zeros((), jnp.result_type(*leaves) if leaves else jnp.float32))


def tree_norm(tree: PyTree) -> jax.Array:
  """Global L2 norm of a pytree (0 for an empty tree)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros(())
  return jnp.sqrt(sum(jnp.sum(jnp.square(jnp.abs(x))) for x in leaves))


def tree_finite(tree: PyTree) -> jax.Array:
  """True when every entry of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_axpy(a: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  """``a * x + y`` leafwise."""
  return jax.tree.map(lambda u, v: a * u + v, x, y)


def make_diagnostics(
    value: jax.Array,
    grad: PyTree,
    *,
    residual_norm: jax.Array | float = 0.0,
    iterations: jax.Array | int = 0,
    converged: jax.Array | bool = True,
    inner_grad_norm: jax.Array | float = 0.0,
    amplification: jax.Array | float = 0.0,
    max_norm: float = float("inf"),
    max_amplification: float = float("inf"),
    max_inner_grad_norm: float | None = None,
) -> Diagnostics:
  """Builds :class:`Diagnostics` and decides ``trustworthy``.

  Args:
    value: the outer loss.
    grad: the hypergradient pytree.
    residual_norm: relative residual of a linear solve.
    iterations: iterations of a linear solve.
    converged: whether the solve met its tolerance.
    inner_grad_norm: stationarity of the inner solution.
    amplification: sensitivity amplification of an unroll.
    max_norm: a hypergradient norm above this is *exploding*, not trustworthy.
    max_amplification: an amplification above this is *chaotic*, not trustworthy.
    max_inner_grad_norm: if given, an inner solution less stationary than this is not
      trustworthy (the implicit function theorem does not apply there).

  Returns:
    The diagnostics, all fields arrays.
  """
  norm = tree_norm(grad)
  finite = tree_finite(grad) & jnp.all(jnp.isfinite(value)) & jnp.isfinite(norm)
  converged = jnp.asarray(converged, bool)
  amplification = jnp.asarray(amplification, jnp.result_type(float))
  trustworthy = (finite & converged & (norm <= max_norm)
                 & ~(amplification > max_amplification))
  inner_grad_norm = jnp.asarray(inner_grad_norm, jnp.result_type(float))
  if max_inner_grad_norm is not None:
    trustworthy = trustworthy & (inner_grad_norm <= max_inner_grad_norm)
  return Diagnostics(
      grad_norm=norm,
      finite=finite,
      residual_norm=jnp.asarray(residual_norm, jnp.result_type(float)),
      iterations=jnp.asarray(iterations, jnp.int32),
      converged=converged,
      inner_grad_norm=inner_grad_norm,
      amplification=amplification,
      trustworthy=trustworthy,
  )
