"""Inner training loops for hypergradients: optax optimizers whose hyperparameters are traced.

The bilevel view of hyperparameter optimization (Domke 2012; Maclaurin et al. 2015) needs
an inner training step that is a differentiable function of the hyperparameters. Two
builders make an :class:`metaopt.hypergrad.types.InnerLoop`:

* :func:`optax_inner_loop` from a training loss ``loss(params, hparams, batch)`` and an
  optimizer factory ``hparams -> optax.GradientTransformation`` (typically
  ``optax.inject_hyperparams(optax.sgd)(learning_rate=h["learning_rate"], ...)``);
* :func:`trial_fns_inner_loop` from a task's ``TrialFns`` (``metaopt.tasks.supervised``).

``optax.inject_hyperparams`` keeps its hyperparameters in ``opt_state.hyperparams`` and
*ignores* the values the optimizer is rebuilt with after ``init``. Differentiating through a
window that starts mid-training (truncation, warm starts) would then miss the
learning-rate path, so every step calls :func:`refresh_hyperparams`, which copies the current
``hparams`` into every injected state of the optimizer tree.

:func:`tree_sgd` is SGD with momentum and decoupled weight decay whose hyperparameters may
be pytree prefixes of the parameters (per-layer learning rates and weight decays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.hypergrad.types import HParams, InnerLoop, PyTree

_INJECT_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _is_inject(x: Any) -> bool:
  return isinstance(x, _INJECT_STATES)


def refresh_hyperparams(opt_state: PyTree, fresh: PyTree) -> PyTree:
  """Copies ``hyperparams`` of every injected state in ``fresh`` into ``opt_state``.

  Args:
    opt_state: the running optimizer state.
    fresh: ``optimizer(hparams).init(params)`` for the current ``hparams`` (same tree
      structure); under ``jit`` everything but its hyperparameters is dead code.

  Returns:
    ``opt_state`` with up-to-date (and differentiable) injected hyperparameters.
  """
  return jax.tree.map(
      lambda old, new: old._replace(hyperparams=new.hyperparams) if _is_inject(old) else old,
      opt_state, fresh, is_leaf=_is_inject)


class OptaxInnerState(NamedTuple):
  """Inner state of :func:`optax_inner_loop`."""

  params: PyTree
  opt_state: PyTree


def optax_inner_loop(
    loss: Callable[[PyTree, HParams, PyTree], jax.Array],
    optimizer: Callable[[HParams], optax.GradientTransformation],
) -> InnerLoop:
  """An inner loop of optax steps on ``loss`` with hyperparameters read from ``hparams``.

  Args:
    loss: ``loss(params, hparams, batch) -> scalar``; may depend on ``hparams`` (an L2
      strength, loss weights).
    optimizer: ``hparams -> GradientTransformation``, rebuilt every step from the traced
      ``hparams`` (``optax.inject_hyperparams`` or plain closures both work).

  Returns:
    An ``InnerLoop`` whose ``init(params0, hparams)`` starts from initial parameters and
    whose ``step(state, hparams, batch)`` returns ``(state, loss_before_step)``; it also
    exposes ``loss`` and ``update`` (for the Hessian-vector-product backward of
    ``unrolled``).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> loss = lambda w, h, b: 0.5 * jnp.sum((w - b) ** 2) + 0.5 * h["l2"] * jnp.sum(w ** 2)
    >>> opt = lambda h: optax.inject_hyperparams(optax.sgd)(learning_rate=h["lr"])
    >>> inner = optax_inner_loop(loss, opt)
    >>> h = {"lr": jnp.asarray(0.1), "l2": jnp.asarray(0.0)}
    >>> state, l = inner.step(inner.init(jnp.zeros(2), h), h, jnp.ones(2))
    >>> float(l), inner.params(state).tolist()
    (1.0, [0.10000000149011612, 0.10000000149011612])
  """

  def init(params: PyTree, hparams: HParams) -> OptaxInnerState:
    return OptaxInnerState(params, optimizer(hparams).init(params))

  def update(state: OptaxInnerState, grads: PyTree, hparams: HParams) -> OptaxInnerState:
    opt = optimizer(hparams)
    opt_state = refresh_hyperparams(state.opt_state, opt.init(state.params))
    updates, opt_state = opt.update(grads, opt_state, state.params)
    return OptaxInnerState(optax.apply_updates(state.params, updates), opt_state)

  def step(state: OptaxInnerState, hparams: HParams, batch: PyTree):
    value, grads = jax.value_and_grad(loss)(state.params, hparams, batch)
    return update(state, grads, hparams), value

  return InnerLoop(init, step, lambda state: state.params, loss, update)


def trial_fns_inner_loop(
    fns: Any,
    optimizer: Callable[[HParams], optax.GradientTransformation] | None = None,
) -> InnerLoop:
  """Adapts a task's ``TrialFns(init, train_step, evaluate)`` to an ``InnerLoop``.

  The inner state is the task's train state and ``start`` is a PRNG key; the outer loss
  gets the whole train state, e.g. ``lambda s, h: fns.evaluate(s, xv, yv, h)["loss"]``.

  Args:
    fns: ``metaopt.tasks.TrialFns``.
    optimizer: the task's optimizer factory (``lambda h: tasks.make_optimizer(name, h,
      defaults)``). When given, each step refreshes ``state["opt_state"]``'s injected
      hyperparameters from ``h`` (``metaopt.tasks.supervised`` reads them from the state set at
      ``init``, so without this only a full unroll from ``init`` sees the learning rate).

  Returns:
    An ``InnerLoop`` with ``step`` returning the task telemetry's ``"loss"``.
  """

  def step(state: PyTree, hparams: HParams, batch: PyTree):
    if optimizer is not None:
      fresh = optimizer(hparams).init(state["params"])
      state = dict(state, opt_state=refresh_hyperparams(state["opt_state"], fresh))
    state, tel = fns.train_step(state, batch, hparams)
    return state, tel["loss"]

  return InnerLoop(lambda key, hparams: fns.init(key, hparams), step, lambda state: state)


# ------------------------------------------------------------------------- tree_sgd
def broadcast_prefix(prefix: PyTree, tree: PyTree) -> PyTree:
  """Expands ``prefix`` (a scalar or a tree prefix of ``tree``) to ``tree``'s structure."""
  return jax.tree.map(lambda p, sub: jax.tree.map(lambda _: p, sub), prefix, tree)


class TreeSgdState(NamedTuple):
  """Momentum buffer of :func:`tree_sgd`."""

  trace: PyTree


def tree_sgd(
    learning_rate: PyTree,
    momentum: PyTree = 0.0,
    weight_decay: PyTree = 0.0,
) -> optax.GradientTransformation:
  """SGD with heavy-ball momentum and decoupled weight decay, hyperparameters per subtree.

  ``u = g + weight_decay * w``, ``m = u + momentum * m``, ``update = -learning_rate * m``,
  where each hyperparameter is a scalar or a pytree *prefix* of the parameters, e.g.
  ``{"layer_0": 0.1, "layer_1": 0.01}`` for per-layer learning rates.

  Args:
    learning_rate: step size(s).
    momentum: momentum coefficient(s) in ``[0, 1)``.
    weight_decay: decoupled weight decay coefficient(s).

  Returns:
    An ``optax.GradientTransformation`` (needs ``params`` when ``weight_decay`` is nonzero).

  Examples:
    >>> import jax.numpy as jnp
    >>> opt = tree_sgd({"a": 0.1, "b": 1.0})
    >>> p = {"a": jnp.ones(2), "b": jnp.ones(2)}
    >>> u, _ = opt.update(p, opt.init(p), p)
    >>> u["a"].tolist(), u["b"].tolist()
    ([-0.10000000149011612, -0.10000000149011612], [-1.0, -1.0])
  """

  def init_fn(params: PyTree) -> TreeSgdState:
    return TreeSgdState(jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates: PyTree, state: TreeSgdState, params: PyTree = None):
    lr = broadcast_prefix(learning_rate, updates)
    mom = broadcast_prefix(momentum, updates)
    wd = broadcast_prefix(weight_decay, updates)
    if params is not None:
      updates = jax.tree.map(lambda g, d, w: g + d * w, updates, wd, params)
    trace = jax.tree.map(lambda g, m, t: (g + m * t).astype(t.dtype), updates, mom, state.trace)
    out = jax.tree.map(lambda a, t: (-a * t).astype(t.dtype), lr, trace)
    return out, TreeSgdState(trace)

  return optax.GradientTransformation(init_fn, update_fn)


def sgd(hparams: HParams) -> optax.GradientTransformation:
  """``optax.inject_hyperparams`` SGD with ``learning_rate`` and optional ``momentum``.

  The injected state keeps ``hparams``' float dtype, so float64 checks stay float64.
  """
  if "momentum" in hparams:
    return optax.inject_hyperparams(optax.sgd)(
        learning_rate=hparams["learning_rate"], momentum=hparams["momentum"])
  return optax.inject_hyperparams(optax.sgd)(learning_rate=hparams["learning_rate"])
