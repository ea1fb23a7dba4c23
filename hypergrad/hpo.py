"""Gradient-based hyperparameter optimization programs (the white-box search protocol).

Outer loop of Maclaurin et al. (2015) / Franceschi et al. (2017) / Pedregosa (2016) /
Lorraine et al. (2020): optax steps on unconstrained meta-parameters ``theta`` driven by any
hypergradient estimator, and the online alternative of Baydin et al. (2018), where the
learning rate adapts inside a single training run.

A program is a :class:`WhiteBox` ``(init, step)`` (DESIGN §3)::

    program = gradient_hpo(estimator, problem.init_params, spec, optax.adam(0.05))
    state = program.init(key, theta0)              # theta0 leaves: [N, ...], a population
    state, telemetry = jax.jit(program.step)(state, key)

``step`` advances every member of the population (``jax.vmap`` over ``theta``) by one outer
step and returns telemetry, a pytree of ``[N]``-leading arrays: ``val_loss``, ``train_loss``,
``hypergrad_norm``, ``hparams``, ``applied`` and the full :class:`metaopt.hypergrad.Diagnostics` and
:class:`metaopt.hypergrad.diagnostics.Pathologies`. A hypergradient flagged untrustworthy
(non-finite, exploding, growing, chaotic, unconverged solve) is *not applied*
(``skip_untrusted``); ``pathologies.fallback`` tells a driver to hand the space and history
to a black-box searcher. :func:`run` scans ``step`` for many outer steps under one ``jit``.

:func:`make_estimator` builds an estimator for a ``metaopt.hypergrad.problems.BilevelProblem`` with
any method (``unrolled``, ``forward``, ``implicit``), and :func:`run_config` runs a
``configs/hypergrad_*.py`` config and returns a JSON-able summary
(``python -m metaopt.hypergrad --config configs/hypergrad_unrolled.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from metaopt.hypergrad import online as online_lib
from metaopt.hypergrad.diagnostics import (
    HypergradMonitor,
    MonitorState,
    first_fallback,
    hypergrad_monitor,
    summarize,
)
from metaopt.hypergrad.forward import forward
from metaopt.hypergrad.implicit import implicit
from metaopt.hypergrad.inner import optax_inner_loop
from metaopt.hypergrad.problems import BilevelProblem, get_problem
from metaopt.hypergrad.transforms import to_hparams, to_theta
from metaopt.hypergrad.types import Estimator, HParams, PyTree, tree_norm, tree_vdot
from metaopt.hypergrad.unrolled import run_inner, unrolled

METHODS: tuple[str, ...] = ("unrolled", "forward", "implicit", "online")


class WhiteBox(NamedTuple):
  """A white-box search program: ``init(key, theta0)`` and ``step(state, key)``."""

  init: Callable[[jax.Array, PyTree], PyTree]
  step: Callable[[PyTree, jax.Array], tuple[PyTree, dict]]


class HPOState(NamedTuple):
  """Population state of :func:`gradient_hpo`; every leaf has a leading ``[N]`` axis.

  Attributes:
    theta: unconstrained meta-parameters.
    meta_state: the meta-optimizer state.
    start: the next inner run's start (initial params, or the last params if warm).
    monitor: :class:`metaopt.hypergrad.diagnostics.MonitorState`.
    best_value: lowest validation loss seen.
    best_theta: ``theta`` that reached it.
    count: outer steps taken (scalar, no ``[N]`` axis).
  """

  theta: PyTree
  meta_state: PyTree
  start: PyTree
  monitor: MonitorState
  best_value: jax.Array
  best_theta: PyTree
  count: jax.Array


def _population(theta0: PyTree) -> int:
  leaves = jax.tree.leaves(theta0)
  if not leaves or jnp.ndim(leaves[0]) == 0:
    raise ValueError("theta0: every leaf needs a leading population axis [N, ...]")
  return int(jnp.shape(leaves[0])[0])


def gradient_hpo(
    estimator: Estimator,
    init_start: Callable[[jax.Array], PyTree],
    spec: PyTree,
    meta_optimizer: optax.GradientTransformation,
    *,
    fixed: HParams | None = None,
    warm_start: bool = False,
    skip_untrusted: bool = True,
    monitor: HypergradMonitor | None = None,
) -> WhiteBox:
  """Hypergradient descent on ``theta`` for a population, one outer step per ``step``.

  Args:
    estimator: ``estimator(hparams, start, key) -> HypergradResult`` (see
      :func:`make_estimator`).
    init_start: ``key -> start`` for an inner run (e.g. ``problem.init_params``).
    spec: bijectors, ``hparams = to_hparams(theta, spec)`` (``metaopt.hypergrad.transforms``).
    meta_optimizer: optax optimizer on ``theta``.
    fixed: hyperparameters held constant (merged under the searched ones).
    warm_start: start each inner run from the previous run's final params (greedy /
      online bilevel) instead of fresh ``init_start`` params.
    skip_untrusted: do not apply hypergradients flagged by the monitor.
    monitor: pathology monitor (default ``hypergrad_monitor()``).

  Returns:
    A :class:`WhiteBox`; ``init(key, theta0)`` takes ``theta0`` with leaves ``[N, ...]``.
  """
  fixed = dict(fixed or {})
  monitor = monitor or hypergrad_monitor()

  def hparams_of(theta):
    return {**fixed, **to_hparams(theta, spec)}

  def init(key: jax.Array, theta0: PyTree) -> HPOState:
    n = _population(theta0)
    starts = jax.vmap(init_start)(jax.random.split(key, n))
    meta_state = jax.vmap(meta_optimizer.init)(theta0)
    mon = jax.vmap(lambda _: monitor.init())(jnp.arange(n))
    # a strongly typed best_value: a weak one would make the second step recompile
    best = jnp.full((n,), jnp.inf, jnp.result_type(float))
    return HPOState(theta0, meta_state, starts, mon, best, theta0, jnp.zeros((), jnp.int32))

  def member(theta, meta_state, start, mstate, best_value, best_theta, key):
    key_est, key_init = jax.random.split(key)
    hparams, to_h_vjp = jax.vjp(hparams_of, theta)
    res = estimator(hparams, start, key_est)
    (g_theta,) = to_h_vjp(res.grad)
    mstate, path = monitor.update(mstate, res.diagnostics)
    bad = (path.nonfinite | path.exploding | path.growing | path.chaotic | path.unconverged
           | path.untrusted)
    apply = ~bad if skip_untrusted else jnp.asarray(True)
    g_safe = jax.tree.map(lambda g: jnp.where(apply, g, jnp.zeros_like(g)), g_theta)
    updates, new_meta = meta_optimizer.update(g_safe, meta_state, theta)
    keep = lambda new, old: jnp.where(apply, new, old)
    new_theta = jax.tree.map(keep, optax.apply_updates(theta, updates), theta)
    new_meta = jax.tree.map(keep, new_meta, meta_state)
    if warm_start:
      new_start = jax.tree.map(lambda a, b: jnp.where(apply, a, b), res.params, start)
    else:
      new_start = init_start(key_init)
    improved = jnp.isfinite(res.value) & (res.value < best_value)
    best_value = jnp.where(improved, res.value, best_value)
    best_theta = jax.tree.map(lambda t, b: jnp.where(improved, t, b), theta, best_theta)
    tel = {
        "val_loss": res.value,
        "train_loss": res.train_loss,
        "hypergrad_norm": res.diagnostics.grad_norm,
        "theta_grad_norm": tree_norm(g_theta),
        "hparams": to_hparams(theta, spec),
        "applied": apply,
        "diagnostics": res.diagnostics,
        "pathologies": path,
    }
    return new_theta, new_meta, new_start, mstate, best_value, best_theta, tel

  def step(state: HPOState, key: jax.Array) -> tuple[HPOState, dict]:
    n = _population(state.theta)
    keys = jax.random.split(key, n)
    theta, meta, start, mon, bv, bt, tel = jax.vmap(member)(
        state.theta, state.meta_state, state.start, state.monitor, state.best_value,
        state.best_theta, keys)
    tel["step"] = jnp.full((n,), state.count)
    return HPOState(theta, meta, start, mon, bv, bt, state.count + 1), tel

  return WhiteBox(init, step)


def run(program: WhiteBox, key: jax.Array, theta0: PyTree,
        num_steps: int) -> tuple[Any, Any]:
  """``init`` then ``num_steps`` outer steps in one ``lax.scan``; telemetry ``[steps, N, ...]``.

  Jit it as ``jax.jit(run, static_argnums=(0, 3))``.
  """
  key_init, key_run = jax.random.split(key)
  state = program.init(key_init, theta0)
  return lax.scan(lambda s, k: program.step(s, k), state, jax.random.split(key_run, num_steps))


def perturb(key: jax.Array, theta: PyTree, n: int, scale: float) -> PyTree:
  """A population ``[n, ...]`` around one ``theta``: member 0 is ``theta`` itself, the rest
  add ``scale`` times standard normal noise (in the unconstrained space)."""
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, leaf in zip(keys, leaves, strict=True):
    leaf = jnp.asarray(leaf)
    noise = scale * jax.random.normal(k, (n, *leaf.shape), leaf.dtype)
    out.append(leaf[None] + noise.at[0].set(0.0))
  return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------------------- estimators
def make_estimator(
    problem: BilevelProblem,
    method: str,
    inner_steps: int,
    *,
    truncate: int | None = None,
    remat: str = "none",
    segment: int | None = None,
    backward: str = "auto",
    vectorize: bool = True,
    solver: str = "cg",
    maxiter: int = 100,
    tol: float = 1e-5,
    step_size: float | None = None,
    damping: float = 0.0,
    inner_tol: float | None = None,
    max_norm: float = 1e6,
    max_amplification: float = 1e6,
) -> Estimator:
  """An estimator ``(hparams, start, key) -> HypergradResult`` for a bilevel problem.

  ``unrolled`` / ``forward`` differentiate ``inner_steps`` optimizer steps on minibatches
  drawn with ``key``. ``implicit`` trains the same steps without differentiating, then
  applies the implicit function theorem on ``problem.full_batch``.

  Args:
    problem: a ``metaopt.hypergrad.problems.BilevelProblem``.
    method: ``"unrolled"``, ``"forward"`` or ``"implicit"``.
    inner_steps: inner optimizer steps ``T`` per outer step.
    truncate: unrolled / forward: differentiate only the last ``truncate`` steps.
    remat: unrolled: ``"none"``, ``"step"`` or ``"sqrt"``.
    segment: unrolled: segment length of ``remat="sqrt"``.
    backward: unrolled: ``"auto"``, ``"hvp"`` or ``"autodiff"``.
    vectorize: forward: push all tangents at once.
    solver: implicit: ``"cg"``, ``"neumann"`` or ``"fixed_point"``.
    maxiter: implicit: solver iterations.
    tol: implicit: solver relative residual tolerance.
    step_size: implicit: Neumann / fixed-point step.
    damping: implicit: Hessian damping.
    inner_tol: implicit: maximal inner gradient norm for a trustworthy result.
    max_norm: hypergradient norms above this are flagged.
    max_amplification: unrolled: amplifications above this are flagged.

  Returns:
    The estimator.
  """
  if method not in ("unrolled", "forward", "implicit"):
    raise ValueError(f"method={method!r} is unknown; allowed: unrolled, forward, implicit "
                     "(online: use online_hpo)")
  if isinstance(inner_steps, bool) or not isinstance(inner_steps, (int, np.integer)) \
      or inner_steps < 1:
    raise ValueError(f"inner_steps={inner_steps!r}: must be an int >= 1 (inner optimizer "
                     "steps per outer step)")
  inner = optax_inner_loop(problem.train_loss, problem.optimizer)
  if method == "unrolled":
    hg = unrolled(inner, problem.val_loss, truncate=truncate, remat=remat, segment=segment,
                  backward=backward, max_norm=max_norm, max_amplification=max_amplification)
  elif method == "forward":
    hg = forward(inner, problem.val_loss, truncate=truncate, vectorize=vectorize,
                 max_norm=max_norm)
  elif method == "implicit":
    ig = implicit(problem.train_loss, problem.val_loss, solver=solver, maxiter=maxiter,
                  tol=tol, step_size=step_size, damping=damping, inner_tol=inner_tol,
                  max_norm=max_norm, stats=True)  # train_loss telemetry

    def estimator(hparams, start, key):
      state, _ = run_inner(inner, lax.stop_gradient(hparams), start,
                           problem.sample(key, inner_steps))
      return ig(hparams, lax.stop_gradient(inner.params(state)), problem.full_batch)

    return estimator
  else:
    raise ValueError(f"method={method!r} is unknown; allowed: unrolled, forward, implicit "
                     "(online: use online_hpo)")
  return lambda hparams, start, key: hg(hparams, start, problem.sample(key, inner_steps))


# ------------------------------------------------------------------------- online (HD)
class OnlineState(NamedTuple):
  """Population state of :func:`online_hpo` (leading ``[N]`` axis except ``count``)."""

  params: PyTree
  opt_state: PyTree
  count: jax.Array


def online_hpo(
    problem: BilevelProblem,
    steps_per_outer: int,
    hyper_lr: float,
    *,
    optimizer: str = "adam_hd",
    multiplicative: bool = False,
    fixed: HParams | None = None,
) -> WhiteBox:
  """Hypergradient descent *during* training (Baydin et al. 2018) as a white-box program.

  ``theta0 = {"learning_rate": log(lr0)}`` with a ``[N]`` axis; each ``step`` trains every
  member ``steps_per_outer`` minibatch steps with ``sgd_hd`` / ``adam_hd`` and reports the
  adapted learning rates and losses. Telemetry matches :func:`gradient_hpo`'s main keys.

  Args:
    problem: a bilevel problem (its ``train_loss``, ``val_loss``, ``sample``).
    steps_per_outer: training steps per ``step``.
    hyper_lr: hyper learning rate ``β``.
    optimizer: ``"sgd_hd"`` or ``"adam_hd"``.
    multiplicative: the scale-free multiplicative rule.
    fixed: other hyperparameters passed to ``train_loss`` (default ``problem.hparams``).

  Returns:
    A :class:`WhiteBox`.
  """
  if optimizer not in ("sgd_hd", "adam_hd"):
    raise ValueError(f"optimizer={optimizer!r} is unknown; allowed: sgd_hd, adam_hd")
  fixed = dict(problem.hparams if fixed is None else fixed)
  factory = getattr(online_lib, optimizer)

  def make(lr):
    return factory(lr, hyper_lr, multiplicative=multiplicative)

  def init(key: jax.Array, theta0: PyTree) -> OnlineState:
    if not isinstance(theta0, Mapping) or set(theta0) != {"learning_rate"}:
      got = sorted(theta0) if isinstance(theta0, Mapping) else type(theta0).__name__
      raise ValueError(f"theta0: online_hpo adapts the learning rate only; theta0 must be "
                       f"{{'learning_rate': log(lr0) of shape [N]}}, got {got}")
    n = _population(theta0)
    params = jax.vmap(problem.init_params)(jax.random.split(key, n))

    def one(p, log_lr):
      s = make(0.0).init(p)
      return s._replace(learning_rate=jnp.exp(log_lr).astype(s.learning_rate.dtype))

    opt_state = jax.vmap(one)(params, theta0["learning_rate"])
    return OnlineState(params, opt_state, jnp.zeros((), jnp.int32))

  def member(params, opt_state, key):
    opt = make(0.0)  # the learning rate lives in opt_state

    def train(carry, idx):
      p, s = carry
      loss, g = jax.value_and_grad(problem.train_loss)(p, fixed, idx)
      hg = tree_vdot(g, s.prev_direction)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), (loss, hg)

    (params, opt_state), (losses, hgs) = lax.scan(
        train, (params, opt_state), problem.sample(key, steps_per_outer))
    value = problem.val_loss(params, fixed)
    lr = opt_state.learning_rate
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(losses))
    tel = {"val_loss": value, "train_loss": losses[-1], "hypergrad_norm": jnp.abs(hgs[-1]),
           "hparams": {"learning_rate": lr}, "applied": finite,
           "nonfinite": ~finite}
    return params, opt_state, tel

  def step(state: OnlineState, key: jax.Array) -> tuple[OnlineState, dict]:
    n = _population(state.params)
    params, opt_state, tel = jax.vmap(member)(state.params, state.opt_state,
                                              jax.random.split(key, n))
    tel["step"] = jnp.full((n,), state.count)
    return OnlineState(params, opt_state, state.count + 1), tel

  return WhiteBox(init, step)


# ------------------------------------------------------------------------- configs
def _initial_hparams(problem: BilevelProblem, tune: list[str],
                     init: Mapping[str, Any]) -> HParams:
  out = {}
  for name in tune:
    if name not in problem.hparams:
      raise ValueError(f"tune: {name!r} is not a hyperparameter of the problem; known: "
                       f"{sorted(problem.hparams)}")
    default = problem.hparams[name]
    if name in init:
      v = init[name]
      default = jax.tree.map(lambda d, v=v: jnp.full(jnp.shape(d), v, jnp.result_type(d)),
                             default)
    out[name] = default
  return out


def _to_py(x: Any) -> Any:
  return jax.tree.map(lambda a: np.asarray(a).tolist(), x)


def build(config: Mapping[str, Any]) -> tuple[WhiteBox, PyTree, PyTree]:
  """``(program, theta0 [N, ...], spec)`` for a ``configs/hypergrad_*.py`` config."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  method = cfg["method"]
  if method not in METHODS:
    raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
  problem = get_problem(cfg["problem_name"], **dict(cfg.get("problem", {})))
  tune = list(cfg["tune"])
  h0 = _initial_hparams(problem, tune, dict(cfg.get("init", {})))
  spec = {k: problem.spec[k] for k in tune}
  fixed = {k: v for k, v in problem.hparams.items() if k not in tune}
  theta0 = perturb(jax.random.key(cfg["seed"] + 1), to_theta(h0, spec), cfg["population"],
                   cfg.get("init_spread", 0.0))
  if method == "online":
    if tune != ["learning_rate"]:
      raise ValueError(f"method='online' adapts only the learning rate; got tune={tune}")
    kw = dict(cfg.get("online", {}))
    program = online_hpo(problem, cfg["inner_steps"], cfg["hyper_lr"], fixed={**problem.hparams},
                         **kw)
    return program, theta0, spec
  kw = dict(cfg.get("estimator", {}))
  if kw.get("truncate") == 0:
    kw["truncate"] = None
  est = make_estimator(problem, method, cfg["inner_steps"], **kw)
  meta = {"adam": optax.adam, "sgd": optax.sgd}[cfg.get("meta_optimizer", "adam")](
      cfg["hyper_lr"])
  program = gradient_hpo(est, problem.init_params, spec, meta, fixed=fixed,
                         warm_start=cfg.get("warm_start", False))
  return program, theta0, spec


def run_config(config: Mapping[str, Any],
               on_step: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
  """Runs a ``configs/hypergrad_*.py`` config; returns a JSON-able summary.

  The outer loop is a Python loop over one jitted ``step`` (so a driver can record each
  step's telemetry); the summary holds the final and best validation losses per member,
  the best member's hyperparameters, hypergradient norms and pathology counts.
  """
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  program, theta0, spec = build(cfg)
  key = jax.random.key(cfg["seed"])
  key_init, key_run = jax.random.split(key)
  t0 = time.perf_counter()
  state = jax.jit(program.init)(key_init, theta0)
  step = jax.jit(program.step)
  history = []
  for i, k in enumerate(jax.random.split(key_run, cfg["outer_steps"])):
    state, tel = step(state, k)
    history.append(tel)
    if on_step is not None:
      on_step(i, jax.device_get(tel))
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t0
  tel = jax.tree.map(lambda *xs: np.stack(xs), *history)
  val = np.asarray(tel["val_loss"])  # [steps, N]
  final = val[-1]
  best = int(np.nanargmin(np.where(np.isfinite(final), final, np.inf)))
  summary = {
      "name": cfg.get("name", ""),
      "problem": cfg["problem_name"],
      "method": cfg["method"],
      "population": int(val.shape[1]),
      "outer_steps": int(val.shape[0]),
      "inner_steps": cfg["inner_steps"],
      "seconds": round(seconds, 3),
      "val_loss_first": _to_py(val[0]),
      "val_loss_final": _to_py(final),
      "best_member": best,
      "best_hparams": _to_py(jax.tree.map(lambda a: a[-1, best], tel["hparams"])),
      "hypergrad_norm_final": _to_py(np.asarray(tel["hypergrad_norm"])[-1]),
      "applied_fraction": float(np.mean(np.asarray(tel["applied"]))),
  }
  if "pathologies" in tel:
    summary["pathologies"] = summarize(tel["pathologies"])
    summary["first_fallback_step"] = int(first_fallback(tel["pathologies"]))
  else:
    summary["nonfinite"] = int(np.sum(np.asarray(tel["nonfinite"])))
  return summary
