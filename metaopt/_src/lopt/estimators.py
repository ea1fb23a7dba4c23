"""Meta-gradient estimators over vmapped populations of truncated inner problems.

* :func:`truncated_backprop`: reverse-mode through each truncation of ``K`` steps, tasks
  carried over between truncations (truncated BPTT; biased towards short horizons, Wu et
  al. 2018, "Understanding short-horizon bias in stochastic meta-optimization").
* :func:`pes`: Persistent Evolution Strategies (Vicol, Metz & Sohl-Dickstein 2021,
  "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent Evolution
  Strategies"), antithetic: each pair of particles runs at ``theta + eps_t`` and
  ``theta - eps_t`` with fresh ``eps_t`` every truncation, and the estimate uses the
  accumulated perturbation ``xi_t = sum_{s<=t} eps_s``::

      g_t = mean_pairs (L_t(theta + eps) - L_t(theta - eps)) / (2 sigma^2) * xi_t

  Summed over the truncations of a horizon, ``g_t`` is unbiased for the gradient of the
  (Gaussian-smoothed) full-horizon meta-loss.
* :func:`es`: plain antithetic ES over the full horizon (fresh tasks every estimate).

All three share ``Estimator(init(key, theta) -> state, estimate(theta, state, key) ->
(grad, state, metrics))``, as learned_optimization's ``GradientEstimator`` does. Tasks are
``vmap`` ped: ``num_tasks`` inner problems (``num_tasks`` antithetic pairs for PES/ES) run in
one kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metaopt._src.lopt.problem import InnerProblem

PyTree = Any
ESTIMATORS: tuple[str, ...] = ("truncated", "pes", "es")


class Estimator(NamedTuple):
  """A meta-gradient estimator: ``init(key, theta)`` and ``estimate(theta, state, key)``."""

  init: Callable[[jax.Array, PyTree], PyTree]
  estimate: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, dict]]
  name: str


class TruncatedState(NamedTuple):
  tasks: PyTree
  index: jax.Array  # truncations done by each task since its last reset


class PESState(NamedTuple):
  pos: PyTree
  neg: PyTree
  accum: PyTree  # accumulated perturbation xi of each pair
  index: jax.Array


class ESState(NamedTuple):
  count: jax.Array


def _where(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
  def sel(x, y):
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y)
  return jax.tree.map(sel, a, b)


def _truncations(problem: InnerProblem) -> int:
  return problem.horizon // problem.unroll_length


def _init_tasks(problem: InnerProblem, key: jax.Array, theta: PyTree, n: int) -> PyTree:
  return jax.vmap(problem.init, (0, None))(jax.random.split(key, n), theta)


def _start_index(key: jax.Array, problem: InnerProblem, n: int, stagger: bool) -> jax.Array:
  """Truncation counters at the start: random when ``stagger`` (tasks then reset at
  different times, decorrelating the population), else zero."""
  if not stagger:
    return jnp.zeros((n,), jnp.int32)
  return jax.random.randint(key, (n,), 0, _truncations(problem))


def _reset(problem: InnerProblem, key: jax.Array, theta: PyTree, index: jax.Array,
           *trees: PyTree) -> tuple[jax.Array, tuple[PyTree, ...]]:
  """Replaces the tasks whose horizon is over by fresh ones (the same fresh task in each
  of ``trees``); returns the reset mask and the new trees."""
  done = index >= _truncations(problem)

  def fresh(trees):
    new = _init_tasks(problem, key, theta, index.shape[0])
    return tuple(_where(done, new, t) for t in trees)

  return done, jax.lax.cond(jnp.any(done), fresh, lambda t: t, trees)


def _check(num_tasks: int, sigma: float | None = None) -> None:
  if num_tasks < 1:
    raise ValueError(f"num_tasks={num_tasks}: must be >= 1")
  if sigma is not None and not sigma > 0:
    raise ValueError(f"sigma={sigma}: must be > 0")


def truncated_backprop(problem: InnerProblem, num_tasks: int, stagger: bool = True
                       ) -> Estimator:
  """Truncated backprop through ``unroll_length`` steps of ``num_tasks`` vmapped tasks."""
  _check(num_tasks)

  def init(key: jax.Array, theta: PyTree) -> TruncatedState:
    k_tasks, k_index = jax.random.split(key)
    return TruncatedState(_init_tasks(problem, k_tasks, theta, num_tasks),
                          _start_index(k_index, problem, num_tasks, stagger))

  def estimate(theta: PyTree, state: TruncatedState, key: jax.Array):
    k_reset, k_unroll = jax.random.split(key)
    done, (tasks,) = _reset(problem, k_reset, theta, state.index, state.tasks)
    index = jnp.where(done, 0, state.index)

    def one(theta, task, k):
      new, meta, aux = problem.unroll(theta, task, k)
      return meta, (new, aux)

    (meta, (tasks, aux)), grads = jax.vmap(jax.value_and_grad(one, has_aux=True),
                                           (None, 0, 0))(
        theta, tasks, jax.random.split(k_unroll, num_tasks))
    grad = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
    metrics = {"meta_loss": jnp.mean(meta), "train_loss": jnp.mean(aux["train_loss"]),
               "resets": jnp.sum(done)}
    return grad, TruncatedState(tasks, index + 1), metrics

  return Estimator(init, estimate, "truncated")


def _perturb(key: jax.Array, theta: PyTree, n: int, sigma: float) -> PyTree:
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([sigma * jax.random.normal(k, (n, *x.shape), x.dtype)
                            for k, x in zip(keys, leaves, strict=True)])


def _add(theta: PyTree, eps: PyTree, sign: float) -> PyTree:
  return jax.tree.map(lambda t, e: t[None] + sign * e, theta, eps)


def _weighted_mean(w: jax.Array, tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.mean(w.reshape(w.shape + (1,) * (x.ndim - 1)) * x, 0),
                      tree)


def pes(problem: InnerProblem, num_tasks: int, sigma: float = 0.01, stagger: bool = True
        ) -> Estimator:
  """Antithetic Persistent Evolution Strategies over ``num_tasks`` pairs of particles."""
  _check(num_tasks, sigma)

  def init(key: jax.Array, theta: PyTree) -> PESState:
    k_tasks, k_index = jax.random.split(key)
    tasks = _init_tasks(problem, k_tasks, theta, num_tasks)
    accum = jax.tree.map(lambda t: jnp.zeros((num_tasks, *t.shape), t.dtype), theta)
    return PESState(tasks, tasks, accum, _start_index(k_index, problem, num_tasks, stagger))

  def estimate(theta: PyTree, state: PESState, key: jax.Array):
    k_reset, k_eps, k_unroll = jax.random.split(key, 3)
    zeros = jax.tree.map(jnp.zeros_like, state.accum)
    done, (pos, neg) = _reset(problem, k_reset, theta, state.index, state.pos, state.neg)
    accum = _where(done, zeros, state.accum)
    index = jnp.where(done, 0, state.index)
    eps = _perturb(k_eps, theta, num_tasks, sigma)
    keys = jax.random.split(k_unroll, num_tasks)  # common random numbers for +/-
    unroll = jax.vmap(problem.unroll)
    pos, meta_pos, aux = unroll(_add(theta, eps, 1.0), pos, keys)
    neg, meta_neg, _ = unroll(_add(theta, eps, -1.0), neg, keys)
    accum = jax.tree.map(jnp.add, accum, eps)
    grad = _weighted_mean((meta_pos - meta_neg) / (2.0 * sigma ** 2), accum)
    metrics = {"meta_loss": 0.5 * jnp.mean(meta_pos + meta_neg),
               "train_loss": jnp.mean(aux["train_loss"]), "resets": jnp.sum(done)}
    return grad, PESState(pos, neg, accum, index + 1), metrics

  return Estimator(init, estimate, "pes")


def es(problem: InnerProblem, num_tasks: int, sigma: float = 0.01) -> Estimator:
  """Antithetic ES on the full-horizon meta-loss of ``num_tasks`` fresh tasks per estimate."""
  _check(num_tasks, sigma)
  n_trunc = _truncations(problem)

  def init(key: jax.Array, theta: PyTree) -> ESState:
    del key, theta
    return ESState(jnp.zeros((), jnp.int32))

  def full(theta_b: PyTree, tasks: PyTree, key: jax.Array):
    def body(tasks, k):
      tasks, meta, aux = jax.vmap(problem.unroll)(theta_b, tasks,
                                                  jax.random.split(k, num_tasks))
      return tasks, (meta, aux["train_loss"])
    _, (meta, loss) = jax.lax.scan(body, tasks, jax.random.split(key, n_trunc))
    return jnp.mean(meta, 0), jnp.mean(loss)

  def estimate(theta: PyTree, state: ESState, key: jax.Array):
    k_tasks, k_eps, k_unroll = jax.random.split(key, 3)
    tasks = _init_tasks(problem, k_tasks, theta, num_tasks)
    eps = _perturb(k_eps, theta, num_tasks, sigma)
    meta_pos, loss = full(_add(theta, eps, 1.0), tasks, k_unroll)
    meta_neg, _ = full(_add(theta, eps, -1.0), tasks, k_unroll)
    grad = _weighted_mean((meta_pos - meta_neg) / (2.0 * sigma ** 2), eps)
    metrics = {"meta_loss": 0.5 * jnp.mean(meta_pos + meta_neg), "train_loss": loss,
               "resets": jnp.asarray(num_tasks)}
    return grad, ESState(state.count + 1), metrics

  return Estimator(init, estimate, "es")


def make_estimator(name: str, problem: InnerProblem, num_tasks: int, sigma: float = 0.01,
                   stagger: bool = True) -> Estimator:
  """The estimator ``name`` (one of ``ESTIMATORS``) over ``problem``."""
  if name == "truncated":
    return truncated_backprop(problem, num_tasks, stagger)
  if name == "pes":
    return pes(problem, num_tasks, sigma, stagger)
  if name == "es":
    return es(problem, num_tasks, sigma)
  raise ValueError(f"estimator={name!r}: allowed values are {', '.join(ESTIMATORS)}")
