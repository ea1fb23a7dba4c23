"""Meta-training: one jitted outer step over several task families, checkpointed and resumable.

``meta_trainer(lopt, problems, ...)`` returns a :class:`MetaTrainer` of pure functions:
``init(key) -> MetaTrainState`` and ``step(state) -> (state, metrics)``. One outer step asks
every family's estimator (each a vmapped population of tasks) for a meta-gradient, averages
them, zeroes non-finite entries, clips the global norm and applies Adam. The whole state
(meta-parameters, meta-optimizer state, task states, PES accumulators, the key and the
step) is one pytree, so :func:`meta_train` checkpoints it with orbax and a restarted run
continues bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metaopt._src.checkpoint import Checkpointer
from metaopt._src.lopt.base import LearnedOptimizer
from metaopt._src.lopt.estimators import Estimator, make_estimator
from metaopt._src.lopt.problem import InnerProblem

PyTree = Any


class MetaTrainState(NamedTuple):
  """Everything that changes during meta-training."""

  theta: PyTree
  opt_state: Any
  estimators: tuple[Any, ...]
  key: jax.Array
  step: jax.Array


class MetaTrainer(NamedTuple):
  """``init(key) -> state`` and a jitted ``step(state) -> (state, metrics)``."""

  init: Callable[[jax.Array], MetaTrainState]
  step: Callable[[MetaTrainState], tuple[MetaTrainState, dict]]
  names: tuple[str, ...]


def meta_optimizer(meta_lr: float = 1e-3, clip: float = 1.0) -> optax.GradientTransformation:
  """Adam on the meta-parameters after zeroing NaNs and clipping the global norm."""
  if not meta_lr > 0:
    raise ValueError(f"meta_lr={meta_lr}: must be > 0")
  if not clip > 0:
    raise ValueError(f"clip={clip}: must be > 0")
  return optax.chain(optax.zero_nans(), optax.clip_by_global_norm(clip), optax.adam(meta_lr))


def meta_trainer(lopt: LearnedOptimizer, problems: Sequence[InnerProblem],
                 estimator: str | Sequence[Estimator] = "pes", num_tasks: int = 8,
                 sigma: float = 0.01, meta_lr: float = 1e-3, clip: float = 1.0,
                 stagger: bool = True) -> MetaTrainer:
  """A :class:`MetaTrainer` of ``lopt`` over ``problems`` (one estimator per problem).

  Args:
    lopt: the learned optimizer.
    problems: inner problems (one per task family), see ``make_problem``.
    estimator: a name from ``ESTIMATORS`` (built for every problem) or one
      :class:`Estimator` per problem.
    num_tasks: tasks (PES/ES: antithetic pairs) per family and outer step.
    sigma: perturbation scale of PES / ES.
    meta_lr: Adam learning rate on the meta-parameters.
    clip: global-norm clip of the meta-gradient.
    stagger: start tasks at random truncation counters so resets do not coincide.
  """
  if isinstance(problems, InnerProblem) or not isinstance(problems, Sequence):
    raise ValueError(f"problems: a list of inner problems (metaopt.lopt.make_problem), got "
                     f"one {type(problems).__name__}; pass [problem]")
  if not problems:
    raise ValueError("problems: need at least one inner problem")
  for i, p in enumerate(problems):
    if not isinstance(p, InnerProblem):
      hint = (" (a task family: wrap it as metaopt.lopt.make_problem(family, lopt, horizon, "
              "unroll_length))" if type(p).__name__ == "TaskFamily" else "")
      raise ValueError(f"problems[{i}]: must be an InnerProblem from "
                       f"metaopt.lopt.make_problem, got {type(p).__name__}{hint}")
  if isinstance(estimator, str):
    ests = tuple(make_estimator(estimator, p, num_tasks, sigma, stagger) for p in problems)
  else:
    ests = tuple(estimator)
    if len(ests) != len(problems):
      raise ValueError(f"estimator: got {len(ests)} estimators for {len(problems)} problems")
  opt = meta_optimizer(meta_lr, clip)
  names = tuple(p.name for p in problems)

  def init(key: jax.Array) -> MetaTrainState:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw keys checkpoint as uint32
      key = jax.random.key_data(key)
    k_theta, k_est, k_run = jax.random.split(key, 3)
    theta = lopt.init(k_theta)
    states = tuple(e.init(k, theta) for e, k in
                   zip(ests, jax.random.split(k_est, len(ests)), strict=True))
    return MetaTrainState(theta, opt.init(theta), states, k_run, jnp.zeros((), jnp.int32))

  @jax.jit
  def step(state: MetaTrainState) -> tuple[MetaTrainState, dict]:
    key, k_step = jax.random.split(state.key)
    keys = jax.random.split(k_step, len(ests))
    grads, new_states, metrics = [], [], {}
    for e, s, k, name in zip(ests, state.estimators, keys, names, strict=True):
      g, s, m = e.estimate(state.theta, s, k)
      grads.append(g)
      new_states.append(s)
      metrics.update({f"{name}/{k2}": v for k2, v in m.items()})
    grad = jax.tree.map(lambda *gs: sum(gs) / len(gs), *grads)
    metrics["meta_loss"] = jnp.mean(jnp.stack([metrics[f"{n}/meta_loss"] for n in names]))
    metrics["grad_norm"] = optax.global_norm(grad)
    updates, opt_state = opt.update(grad, state.opt_state, state.theta)
    theta = optax.apply_updates(state.theta, updates)
    return MetaTrainState(theta, opt_state, tuple(new_states), key, state.step + 1), metrics

  return MetaTrainer(init, step, names)


def _floats(metrics: dict) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in metrics.items()}


def meta_train(trainer: MetaTrainer, key: jax.Array, num_steps: int, *,
               checkpoint_dir: str | None = None, checkpoint_every: int = 50,
               log_every: int = 1,
               callback: Callable[[int, dict[str, float]], None] | None = None,
               progress: bool = False,
               on_start: Callable[[int], None] | None = None,
               ) -> tuple[MetaTrainState, list[dict[str, float]]]:
  """Runs ``num_steps`` outer steps of ``trainer`` from ``key`` (or from the newest
  checkpoint in ``checkpoint_dir``).

  Args:
    trainer: from :func:`meta_trainer`.
    key: PRNG key of the run (ignored when a checkpoint is resumed).
    num_steps: total outer steps (a resumed run does only the remaining ones).
    checkpoint_dir: orbax directory; the state is saved every ``checkpoint_every`` steps and
      at the end, and a run restarted with the same directory continues exactly.
    checkpoint_every: outer steps between checkpoints.
    log_every: outer steps between ``callback`` calls (and history rows).
    callback: ``callback(step, metrics)`` after every ``log_every``-th step (``step`` counts
      from 1).
    progress: show a tqdm progress bar.
    on_start: ``on_start(step)`` once, with the step this call starts from (0, or the
      restored checkpoint's step).

  Returns:
    The final :class:`MetaTrainState` and the history rows logged by this call.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps={num_steps}: must be >= 0")
  if checkpoint_every < 1 or log_every < 1:
    raise ValueError(f"checkpoint_every={checkpoint_every}, log_every={log_every}: "
                     "must be >= 1")
  state = trainer.init(key)
  ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir else None
  if ckpt is not None:
    restored = ckpt.restore(state)
    if restored is not None:
      state = restored[1]
  start = int(state.step)
  if on_start is not None:
    on_start(start)
  history: list[dict[str, float]] = []
  bar = tqdm(total=num_steps, initial=min(start, num_steps), disable=not progress,
             desc="meta-train", unit="step")
  t0 = time.perf_counter()
  for i in range(start, num_steps):
    state, metrics = trainer.step(state)
    if (i + 1) % log_every == 0 or i + 1 == num_steps:
      row = _floats(metrics)
      row["seconds"] = time.perf_counter() - t0
      history.append({"step": i + 1, **row})
      if callback is not None:
        callback(i + 1, row)
      bar.set_postfix(meta_loss=f"{row['meta_loss']:.4f}")
    if ckpt is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == num_steps):
      ckpt.save(i + 1, state, {"step": i + 1})
    bar.update(1)
  bar.close()
  if ckpt is not None:
    ckpt.close()
  return state, history
