"""Online hypergradient descent of the learning rate, as optax transformations.

Baydin, Cornish, Martínez Rubio, Schmidt & Wood (2018), "Online Learning Rate Adaptation
with Hypergradient Descent" (ICLR).

The loss after a step depends on the learning rate ``α`` through the last update, so
``∂f(θ_t)/∂α = −∇f(θ_t) · u_{t−1}`` where ``u_{t−1}`` is the previous update direction (the
gradient for SGD, ``m̂/(√v̂ + ε)`` for Adam). Hypergradient descent on ``α`` with hyper
learning rate ``β`` is therefore

    α_t = α_{t−1} + β ∇f(θ_t) · u_{t−1}        (additive rule, the paper's SGD-HD / Adam-HD)
    α_t = α_{t−1} (1 + β cos(∇f(θ_t), u_{t−1}))  (``multiplicative=True``, scale-free)

and the step is ``θ_{t+1} = θ_t − α_t u_t``. The current ``α`` lives in the state
(``state.learning_rate``; :func:`hd_learning_rate` finds it inside a chain), so it can be read
out, logged and checkpointed. Both are ordinary ``optax.GradientTransformation``\\ s and
compose with ``optax.chain`` (e.g. after ``optax.clip_by_global_norm``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.hypergrad.types import PyTree, tree_norm, tree_vdot


class SgdHdState(NamedTuple):
  """State of :func:`sgd_hd`: step count, current learning rate, previous direction."""

  count: jax.Array
  learning_rate: jax.Array
  prev_direction: PyTree


class AdamHdState(NamedTuple):
  """State of :func:`adam_hd`: Adam moments plus the adapted learning rate."""

  count: jax.Array
  learning_rate: jax.Array
  mu: PyTree
  nu: PyTree
  prev_direction: PyTree


def _adapt(lr: jax.Array, g: PyTree, prev: PyTree, hyper_lr: float, multiplicative: bool,
           lo: float, hi: float) -> jax.Array:
  h = tree_vdot(g, prev).astype(lr.dtype)
  if multiplicative:
    denom = (tree_norm(g) * tree_norm(prev)).astype(lr.dtype)
    cos = jnp.where(denom > 0, h / jnp.where(denom > 0, denom, 1.0), 0.0)
    new = lr * (1.0 + hyper_lr * cos)
  else:
    new = lr + hyper_lr * h
  new = jnp.clip(new, lo, hi)
  return jnp.where(jnp.isfinite(new), new, lr)


def _lr_dtype(params: PyTree) -> Any:
  leaves = jax.tree.leaves(params)
  return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def sgd_hd(
    learning_rate: float,
    hyper_lr: float,
    *,
    multiplicative: bool = False,
    min_learning_rate: float = 0.0,
    max_learning_rate: float = float("inf"),
) -> optax.GradientTransformation:
  """SGD whose learning rate follows hypergradient descent (SGD-HD, Baydin et al. 2018).

  Args:
    learning_rate: initial learning rate ``α_0``.
    hyper_lr: hyper learning rate ``β``.
    multiplicative: use the scale-free multiplicative rule (``β`` is then dimensionless,
      ~0.01-0.1) instead of the additive one.
    min_learning_rate: ``α`` is clipped from below (the default keeps it nonnegative).
    max_learning_rate: ``α`` is clipped from above.

  Returns:
    An ``optax.GradientTransformation``; updates are ``−α_t g_t``.

  Examples:
    >>> import jax.numpy as jnp
    >>> opt = sgd_hd(0.01, hyper_lr=0.1)
    >>> p = jnp.ones(2)
    >>> s = opt.init(p)
    >>> u, s = opt.update(p, s)      # first step: no previous gradient, α stays 0.01
    >>> u, s = opt.update(p, s)      # g·g_prev = 2, α = 0.01 + 0.1 * 2
    >>> round(float(s.learning_rate), 4)
    0.21
  """

  def init_fn(params: PyTree) -> SgdHdState:
    return SgdHdState(jnp.zeros((), jnp.int32), jnp.asarray(learning_rate, _lr_dtype(params)),
                      jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates: PyTree, state: SgdHdState, params: PyTree = None):
    del params
    lr = _adapt(state.learning_rate, updates, state.prev_direction, hyper_lr, multiplicative,
                min_learning_rate, max_learning_rate)
    out = jax.tree.map(lambda g: (-lr * g).astype(g.dtype), updates)
    return out, SgdHdState(optax.safe_increment(state.count), lr, updates)

  return optax.GradientTransformation(init_fn, update_fn)


def adam_hd(
    learning_rate: float,
    hyper_lr: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    multiplicative: bool = False,
    min_learning_rate: float = 0.0,
    max_learning_rate: float = float("inf"),
) -> optax.GradientTransformation:
  """Adam whose learning rate follows hypergradient descent (Adam-HD, Baydin et al. 2018).

  The hypergradient uses the previous Adam direction ``u_{t−1} = m̂/(√v̂ + ε)``.

  Args:
    learning_rate: initial learning rate ``α_0``.
    hyper_lr: hyper learning rate ``β``.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: Adam's epsilon.
    multiplicative: use the scale-free multiplicative rule.
    min_learning_rate: ``α`` is clipped from below.
    max_learning_rate: ``α`` is clipped from above.

  Returns:
    An ``optax.GradientTransformation``; updates are ``−α_t u_t``.

  Examples:
    >>> import jax.numpy as jnp
    >>> opt = adam_hd(1e-3, hyper_lr=1e-4)
    >>> s = opt.init(jnp.zeros(3))
    >>> u, s = opt.update(jnp.ones(3), s)
    >>> [round(float(v), 6) for v in u]
    [-0.001, -0.001, -0.001]
  """

  def init_fn(params: PyTree) -> AdamHdState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamHdState(jnp.zeros((), jnp.int32),
                       jnp.asarray(learning_rate, _lr_dtype(params)), zeros, zeros, zeros)

  def update_fn(updates: PyTree, state: AdamHdState, params: PyTree = None):
    del params
    lr = _adapt(state.learning_rate, updates, state.prev_direction, hyper_lr, multiplicative,
                min_learning_rate, max_learning_rate)
    count = optax.safe_increment(state.count)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    c1 = 1 - b1 ** count.astype(lr.dtype)
    c2 = 1 - b2 ** count.astype(lr.dtype)
    direction = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
    out = jax.tree.map(lambda d, g: (-lr * d).astype(g.dtype), direction, updates)
    return out, AdamHdState(count, lr, mu, nu, direction)

  return optax.GradientTransformation(init_fn, update_fn)


def _is_hd(x: Any) -> bool:
  return isinstance(x, (SgdHdState, AdamHdState))


def hd_learning_rate(opt_state: PyTree) -> jax.Array:
  """The adapted learning rate of the first SGD-HD / Adam-HD state inside ``opt_state``.

  Raises:
    ValueError: there is no such state (e.g. a plain optax optimizer).
  """
  for node in jax.tree.leaves(opt_state, is_leaf=_is_hd):
    if _is_hd(node):
      return node.learning_rate
  raise ValueError("opt_state: contains no sgd_hd / adam_hd state")
