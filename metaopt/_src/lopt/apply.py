"""Training one task of a family with any optax transform (a learned optimizer or a baseline).

``fit`` is a pure, jittable function: it samples a task from ``key``, trains it for
``num_steps`` with ``opt`` inside ``lax.scan`` and returns its learning curve, so a grid of
baseline learning rates ``vmap`` s in one kernel (``benchmarks/learned_opt.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def fit(family: Any, opt: optax.GradientTransformation, key: jax.Array, num_steps: int,
        eval_every: int, seed_key: jax.Array | None = None) -> dict[str, jax.Array]:
  """Trains the task ``family.sample(key)`` with ``opt`` for ``num_steps`` steps.

  Args:
    family: a ``metaopt.tasks.TaskFamily``.
    opt: any optax transform (e.g. ``metaopt.lopt.load(path)`` or ``optax.adam(1e-3)``).
    key: samples the task, its initialisation and its minibatches.
    num_steps: training steps; must be a multiple of ``eval_every``.
    eval_every: steps between evaluations.
    seed_key: when given, ``key`` only samples the task and ``seed_key`` its initialisation
      and minibatches (the same task trained under several seeds).

  Returns:
    ``step`` ``(n,)``, ``train_loss`` (mean minibatch loss over the last ``eval_every``
    steps), ``train_eval`` and ``valid_loss`` (whole split) ``(n,)`` with ``n = num_steps //
    eval_every``.
  """
  if num_steps % eval_every:
    raise ValueError(f"num_steps={num_steps}, eval_every={eval_every}: num_steps must be a "
                     "multiple of eval_every")
  k_cfg, k_init, k_run = jax.random.split(key, 3)
  if seed_key is not None:
    _, k_init, k_run = jax.random.split(seed_key, 3)
  cfg = family.sample(k_cfg)
  params = family.init(k_init, cfg)

  def step(carry, k):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(family.loss)(params, cfg, family.batch(k, cfg, "train"))
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def chunk(carry, k):
    carry, losses = jax.lax.scan(step, carry, jax.random.split(k, eval_every))
    p = carry[0]
    return carry, (jnp.mean(losses), family.eval_loss(p, cfg, "train"),
                   family.eval_loss(p, cfg, "valid"))

  n = num_steps // eval_every
  _, (train, train_eval, valid) = jax.lax.scan(chunk, (params, opt.init(params)),
                                               jax.random.split(k_run, n))
  return {"step": (jnp.arange(n) + 1) * eval_every, "train_loss": train,
          "train_eval": train_eval, "valid_loss": valid}
