"""Truncated inner problems: a task family trained by a learned optimizer, K steps a call.

An :class:`InnerProblem` is what the meta-gradient estimators see: ``init(key, theta)``
samples a task and its initial training state, ``unroll(theta, state, key)`` trains it for
``unroll_length`` steps (a ``lax.scan``; each step rematerialised with ``jax.checkpoint``
when ``remat``) and returns the new state and the truncation's meta-loss. The estimators
reset a task after ``horizon`` steps (``horizon // unroll_length`` truncations).

Meta-losses (``META_LOSSES``): ``train_mean`` / ``valid_mean`` average the minibatch loss
over the truncation's steps (so the sum over truncations is the full-horizon average, the
objective PES is unbiased for), ``train_final`` / ``valid_final`` take the loss after the
truncation's last step, ``train_late`` / ``valid_late`` weight the truncation's mean by
``2 t / horizon`` at its middle step ``t`` (weights average to 1 over a horizon: the end of
training counts most, as when only the final loss matters). Each loss is divided by the
task's initial loss (so families with different loss scales weigh alike) and clipped at
``loss_clip`` (non-finite losses count as ``loss_clip``), as in learned_optimization's task
normalisers; ``normalise="log"`` takes the log of that ratio instead, so a halving of the
loss counts alike at every loss scale.

``learning_rate`` (a function of a key) gives every sampled task its own base learning rate:
the task is trained with ``optax.chain(lopt.as_optax(theta), optax.scale(lr))``, for learned
optimizers that scale a base step (``adam_controller(learning_rate=1.0)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt._src.lopt.base import LearnedOptimizer

PyTree = Any
META_LOSSES: tuple[str, ...] = ("train_mean", "train_final", "valid_mean", "valid_final",
                                "train_late", "valid_late")
NORMALISATIONS: tuple[str, ...] = ("ratio", "log")


class InnerProblem(NamedTuple):
  """A distribution of inner training runs, advanced ``unroll_length`` steps per call."""

  init: Callable[[jax.Array, PyTree], PyTree]
  unroll: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array, dict]]
  horizon: int
  unroll_length: int
  name: str


def check_meta_loss(meta_loss: str) -> None:
  if meta_loss not in META_LOSSES:
    raise ValueError(f"meta_loss={meta_loss!r}: allowed values are {', '.join(META_LOSSES)}")


def make_problem(family: Any, lopt: LearnedOptimizer, horizon: int, unroll_length: int,
                 meta_loss: str = "train_mean", remat: bool = True,
                 loss_clip: float = 3.0, normalise: str = "ratio",
                 learning_rate: Callable[[jax.Array], jax.Array] | None = None
                 ) -> InnerProblem:
  """An :class:`InnerProblem` training tasks of ``family`` with ``lopt``.

  Args:
    family: a ``metaopt.tasks.TaskFamily``.
    lopt: the learned optimizer whose meta-parameters are trained.
    horizon: inner steps before a task is replaced by a new one.
    unroll_length: inner steps per truncation (``K``); must divide ``horizon``.
    meta_loss: one of ``META_LOSSES``.
    remat: rematerialise each inner step in the backward pass (``jax.checkpoint``).
    loss_clip: normalised losses are clipped at this value.
    normalise: ``"ratio"`` (loss / initial loss) or ``"log"`` (its log), see the module doc.
    learning_rate: ``learning_rate(key)`` samples each task's base learning rate (the
      optimizer is ``lopt`` followed by ``optax.scale(lr)``); ``None``: ``lopt`` alone.
  """
  check_meta_loss(meta_loss)
  if normalise not in NORMALISATIONS:
    raise ValueError(f"normalise={normalise!r}: allowed values are "
                     f"{', '.join(NORMALISATIONS)}")
  if unroll_length < 1 or horizon < unroll_length or horizon % unroll_length:
    raise ValueError(f"horizon={horizon}, unroll_length={unroll_length}: unroll_length must "
                     "be >= 1 and divide horizon")
  split = "valid" if meta_loss.startswith("valid") else "train"
  final = meta_loss.endswith("final")
  late = meta_loss.endswith("late")

  log_space = normalise == "log"

  def norm(loss: jax.Array, l0: jax.Array) -> jax.Array:
    r = loss / jnp.maximum(l0, 1e-8)
    r = jnp.where(jnp.isfinite(r), jnp.minimum(r, loss_clip), loss_clip)
    return jnp.log(jnp.maximum(r, 1e-8)) if log_space else r

  def optimizer(theta: PyTree, lr: jax.Array | None) -> optax.GradientTransformation:
    opt = lopt.as_optax(theta)
    return opt if lr is None else optax.chain(opt, optax.scale(lr))

  def init(key: jax.Array, theta: PyTree) -> PyTree:
    k_cfg, k_init = jax.random.split(key)
    k_lr = jax.random.fold_in(key, 1)
    cfg = family.sample(k_cfg)
    params = family.init(k_init, cfg)
    l0 = jax.lax.stop_gradient(family.eval_loss(params, cfg, split))
    lr = None if learning_rate is None else jnp.asarray(learning_rate(k_lr), jnp.float32)
    state = {"params": params, "opt_state": optimizer(theta, lr).init(params), "cfg": cfg,
             "l0": l0}
    if lr is not None:
      state["lr"] = lr
    if late:
      state["t"] = jnp.zeros((), jnp.int32)
    return state

  def unroll(theta: PyTree, state: PyTree, key: jax.Array):
    opt = optimizer(theta, state.get("lr"))
    cfg, l0 = state["cfg"], state["l0"]

    def step(carry, k):
      params, opt_state = carry
      k_train, k_meta = jax.random.split(k)
      loss, grads = jax.value_and_grad(family.loss)(params, cfg,
                                                    family.batch(k_train, cfg, "train"))
      if split == "valid":
        ml = family.loss(params, cfg, family.batch(k_meta, cfg, "valid"))
      else:
        ml = loss
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (norm(ml, l0), loss)

    keys = jax.random.split(key, unroll_length + 1)
    (params, opt_state), (mls, losses) = jax.lax.scan(
        jax.checkpoint(step) if remat else step, (state["params"], state["opt_state"]),
        keys[:-1])
    if final:
      last = family.loss(params, cfg, family.batch(keys[-1], cfg, split))
      meta = norm(last, l0)
    else:
      meta = jnp.mean(mls)
    new = {**state, "params": params, "opt_state": opt_state}
    if late:
      meta = meta * (2.0 * state["t"] + unroll_length) / horizon
      new["t"] = state["t"] + unroll_length
    return new, meta, {"train_loss": jnp.mean(losses), "final_loss": losses[-1]}

  return InnerProblem(init, unroll, int(horizon), int(unroll_length),
                      getattr(family, "name", "task"))
