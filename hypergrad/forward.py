"""Forward-mode hypergradients: one Jacobian-vector product per hyperparameter.

Franceschi, Donini, Frasconi & Pontil (2017), "Forward and Reverse Gradient-Based
Hyperparameter Optimization" (forward-mode / real-time hyperparameter optimization).

``forward(inner, val_loss)`` returns ``hypergrad(hparams, start, xs)`` with the same values
as :func:`metaopt.hypergrad.unrolled` but computed with ``jax.jvp`` through the same ``lax.scan``:
memory does not grow with the number of inner steps ``T``, and the cost is one tangent
pass per scalar hyperparameter, so it suits a few hyperparameters (learning rate, momentum,
a weight decay) over long runs. All tangents are pushed together (``vmap`` of ``jvp`` over
the basis of the flattened hyperparameters: ``jax.jacfwd``), sharing one primal pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from metaopt.hypergrad.types import HParams, HypergradResult, InnerLoop, PyTree, make_diagnostics
from metaopt.hypergrad.unrolled import run_inner


def forward(
    inner: InnerLoop,
    val_loss: Callable[[PyTree, HParams], jax.Array],
    *,
    truncate: int | None = None,
    vectorize: bool = True,
    max_norm: float = 1e6,
) -> Callable[[HParams, PyTree, PyTree], HypergradResult]:
  """Forward-mode hypergradient of ``val_loss(params_T, hparams)`` through ``T`` steps.

  Args:
    inner: the inner loop.
    val_loss: ``val_loss(params, hparams) -> scalar``.
    truncate: only the last ``truncate`` steps see a differentiable ``hparams`` (same
      meaning as in ``unrolled``).
    vectorize: push all tangents in one ``vmap``-ed pass (one primal pass, memory
      ``P`` times the state). ``False`` runs them one after another with ``lax.map``
      (memory of one tangent, the primal recomputed ``P`` times).
    max_norm: hypergradient norms above this are flagged *exploding*.

  Returns:
    ``hypergrad(hparams, start, xs) -> HypergradResult``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from metaopt.hypergrad.inner import optax_inner_loop, sgd
    >>> loss = lambda w, h, b: 0.5 * jnp.sum((w - b) ** 2)
    >>> hg = forward(optax_inner_loop(loss, sgd), lambda w, h: jnp.sum(w))
    >>> r = hg({"learning_rate": jnp.asarray(0.5)}, jnp.zeros(1), jnp.ones((2, 1)))
    >>> float(r.value), float(r.grad["learning_rate"])
    (0.75, 1.0)
  """

  def hypergrad(hparams: HParams, start: PyTree, xs: PyTree) -> HypergradResult:
    flat, unravel = ravel_pytree(hparams)

    def meta_loss(f):
      h = unravel(f)
      state, losses = run_inner(inner, h, start, xs, truncate=truncate)
      params = inner.params(state)
      return val_loss(params, h), (losses[-1], params)

    basis = jnp.eye(flat.size, dtype=flat.dtype)
    if vectorize:
      one = lambda v: jax.jvp(meta_loss, (flat,), (v,), has_aux=True)
      value, tangents, (train_loss, params) = jax.vmap(one, out_axes=(None, 0, None))(basis)
    else:
      value, (train_loss, params) = meta_loss(flat)
      tangents = lax.map(lambda v: jax.jvp(meta_loss, (flat,), (v,), has_aux=True)[1], basis)
    grad = unravel(tangents)
    diag = make_diagnostics(value, grad, max_norm=max_norm)
    return HypergradResult(value, grad, diag, params, train_loss)

  return hypergrad
