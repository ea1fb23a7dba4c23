"""Implicit-function-theorem hypergradients at an inner optimum.

Pedregosa (2016), "Hyperparameter optimization with approximate gradient" (HOAG, conjugate
gradient); Lorraine, Vicol & Duvenaud (2020), "Optimizing Millions of Hyperparameters by
Implicit Differentiation" (Neumann series); Domke (2012) and Shaban et al. (2019) for the
fixed-point view.

At a stationary point ``w*(λ)`` of the training loss ``L(w, λ)``,

    dV/dλ = ∂_λ V − ∂²_{λw} L · H⁻¹ ∂_w V,      H = ∂²_w L,

with ``H v`` computed as a Hessian-vector product (forward-over-reverse, never forming ``H``):
one ``jax.linearize`` of ``w -> (∂_w L, ∂_λ L)`` serves every iteration, and its tangent at the
solution ``v`` gives both ``H v`` (for the true residual) and ``∂²_{λw} L · v`` (the mixed term,
by symmetry of second derivatives) in one pass. The linear system ``H v = ∂_w V`` is solved by

* ``"cg"``: conjugate gradient, stopping at relative residual ``tol`` (HOAG);
* ``"neumann"``: ``H⁻¹ ≈ α Σ_{j≤K} (I − αH)^j``, ``K = maxiter`` terms (Lorraine et al.);
* ``"fixed_point"``: Richardson iteration ``v ← v + α (b − H v)``, stopping at ``tol``
  (the fixed point of the inner gradient-descent map, differentiated).

Every solve reports the *true* relative residual ``||H v − b|| / ||b||`` (one extra
product), its iterations and a ``converged`` flag; a solve that does not reach ``tol`` makes
the result untrustworthy (``diagnostics.trustworthy`` is False), it is never silently
returned as a good gradient. (The check is itself rounded: where the solver's own estimate
met ``tol``, a true residual within ``ROUNDING_SLACK`` eps of it counts as met.) The IFT also
assumes ``w`` is stationary: with ``inner_tol`` (or ``stats=True``) ``inner_grad_norm`` and the
training loss at ``w`` are computed (one more gradient of the training loss), and
``inner_grad_norm`` is checked against ``inner_tol`` when given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from metaopt.hypergrad.types import (
    HParams,
    HypergradResult,
    PyTree,
    make_diagnostics,
    tree_axpy,
    tree_finite,
    tree_norm,
    tree_vdot,
)

SOLVERS: tuple[str, ...] = ("cg", "neumann", "fixed_point")
MatVec = Callable[[PyTree], PyTree]


class SolveResult(NamedTuple):
  """Solution of ``A x = b`` and how good it is.

  Attributes:
    x: the (approximate) solution, shaped like ``b``.
    residual_norm: true relative residual ``||A x − b|| / ||b||`` (0 when ``b = 0``).
    iterations: matrix-vector iterations used (not counting the residual check).
    converged: everything finite and ``residual_norm <= tol``, or, for solvers with their own
      residual estimate (CG, fixed point), the estimate ``<= tol`` and ``residual_norm``
      within the check's own rounding of ``tol`` (``ROUNDING_SLACK · eps · (||A x|| +
      ||b||) / ||b||``; float32 cannot resolve a tol of a few eps more finely).
  """

  x: PyTree
  residual_norm: jax.Array
  iterations: jax.Array
  converged: jax.Array


def _tiny(x: jax.Array) -> jax.Array:
  return jnp.finfo(jnp.result_type(x)).tiny


# The true residual is itself computed in the working precision: ``||fl(A x) − b||`` reads
# ``||A x − b||`` to within about ``ROUNDING_SLACK · eps · (||A x|| + ||b||)`` (measured on
# float32 least-squares Hessians, n = 300-5000, d = 50-500: at most 2.6; ridge n = 2000,
# d = 200 at tol 1e-6: a true 9.41e-7 read as 1.16e-6).
ROUNDING_SLACK = 4.0


def _finish(matvec: MatVec, b: PyTree, x: PyTree, k: jax.Array, tol: float,
            estimate: jax.Array | None = None) -> SolveResult:
  return _finish_from(matvec(x), b, x, k, tol, estimate)


def _finish_from(ax: PyTree, b: PyTree, x: PyTree, k: jax.Array, tol: float,
                 estimate: jax.Array | None = None) -> SolveResult:
  """The :class:`SolveResult` of ``x`` given ``ax = A x`` (the true residual's product).

  Converged when the true residual reads ``<= tol``, or when the solver's own estimate is
  ``<= tol`` and the true residual reads within its own rounding of ``tol`` (a drift of the
  solver's recursion beyond that rounding is still flagged)."""
  b_norm = tree_norm(b)
  safe = jnp.maximum(b_norm, _tiny(b_norm))
  r = jax.tree.map(jnp.subtract, ax, b)
  res = jnp.where(b_norm > 0, tree_norm(r) / safe, 0.0)
  if estimate is None:
    return _result(res, x, k, tol)
  eps = jnp.finfo(jnp.result_type(res)).eps
  slack = ROUNDING_SLACK * eps * (tree_norm(ax) + b_norm) / safe
  within = (estimate <= tol) & (res <= tol + slack)
  return _result(res, x, k, tol, within)


def _result(res: jax.Array, x: PyTree, k: jax.Array, tol: float,
            within: jax.Array | bool = False) -> SolveResult:
  ok = jnp.isfinite(res) & ((res <= tol) | within) & tree_finite(x)
  return SolveResult(x, res, jnp.asarray(k, jnp.int32), ok)


def cg_solve(matvec: MatVec, b: PyTree, *, maxiter: int = 100, tol: float = 1e-5) -> SolveResult:
  """Conjugate gradient for symmetric positive definite ``A`` (pytree vectors).

  Stops when the recursive residual drops below ``tol * ||b||``, after ``maxiter``
  iterations, or on breakdown (``p·Ap <= 0``: ``A`` is not positive definite there).

  Args:
    matvec: ``x -> A x``.
    b: right-hand side.
    maxiter: iteration cap.
    tol: relative residual tolerance.

  Returns:
    A :class:`SolveResult`.

  Examples:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> r = cg_solve(lambda x: a @ x, jnp.array([1.0, 2.0]))
    >>> bool(r.converged), [round(float(v), 4) for v in r.x]
    (True, [0.0909, 0.6364])
  """
  x, k, estimate = _cg(matvec, b, maxiter, tol)
  return _finish(matvec, b, x, k, tol, estimate)


def _cg(matvec: MatVec, b: PyTree, maxiter: int,
        tol: float) -> tuple[PyTree, jax.Array, jax.Array]:
  """CG iterations only: ``(x, iterations, recursive relative residual)``."""
  b_norm = tree_norm(b)
  x0 = jax.tree.map(jnp.zeros_like, b)
  rs0 = tree_vdot(b, b)

  def cond(c):
    _, _, _, rs, k, broken = c
    return (k < maxiter) & (jnp.sqrt(rs) > tol * b_norm) & ~broken

  def body(c):
    x, r, p, rs, k, _ = c
    ap = matvec(p)
    pap = tree_vdot(p, ap)
    broken = ~(pap > 0)
    alpha = jnp.where(broken, 0.0, rs / jnp.where(broken, 1.0, pap))
    x = tree_axpy(alpha, p, x)
    r = tree_axpy(-alpha, ap, r)
    rs_new = tree_vdot(r, r)
    beta = rs_new / jnp.maximum(rs, _tiny(rs))
    p = tree_axpy(beta, p, r)
    return x, r, p, rs_new, k + 1, broken

  x, _, _, rs, k, _ = lax.while_loop(cond, body, (x0, b, b, rs0, jnp.zeros((), jnp.int32),
                                                  jnp.asarray(False)))
  return x, k, jnp.sqrt(rs) / jnp.maximum(b_norm, _tiny(b_norm))


def power_iteration(matvec: MatVec, v: PyTree, iters: int = 20) -> jax.Array:
  """Estimates the largest eigenvalue magnitude of symmetric ``A`` from start vector ``v``."""

  def body(_, c):
    v, _ = c
    av = matvec(v)
    n = tree_norm(av)
    return jax.tree.map(lambda a: a / jnp.maximum(n, _tiny(n)), av), n

  v = jax.tree.map(lambda a: a / jnp.maximum(tree_norm(v), _tiny(tree_norm(v))), v)
  return lax.fori_loop(0, iters, body, (v, jnp.zeros((), tree_norm(v).dtype)))[1]


def _step_size(matvec: MatVec, b: PyTree, step_size: float | None) -> jax.Array:
  if step_size is not None:
    return jnp.asarray(step_size)
  lam = power_iteration(matvec, jax.tree.map(lambda a: a + 1e-3, b))
  return 1.0 / jnp.maximum(lam, _tiny(lam))


def neumann_solve(
    matvec: MatVec, b: PyTree, *, maxiter: int = 100, tol: float = 1e-5,
    step_size: float | None = None,
) -> SolveResult:
  """Truncated Neumann series ``x = α Σ_{j=0}^{K} (I − αA)^j b`` (Lorraine et al. 2020).

  Converges for symmetric positive definite ``A`` when ``0 < α < 2 / λ_max(A)``.

  Args:
    matvec: ``x -> A x``.
    b: right-hand side.
    maxiter: number of series terms ``K`` (always all used).
    tol: relative residual below which the result counts as converged.
    step_size: ``α``; ``None`` estimates ``1 / λ_max`` by 20 power iterations.

  Returns:
    A :class:`SolveResult`.
  """
  return _finish(matvec, b, *_neumann(matvec, b, maxiter, tol, step_size)[:2], tol)


def _neumann(matvec: MatVec, b: PyTree, maxiter: int, tol: float,
             step_size: float | None) -> tuple[PyTree, jax.Array, None]:
  """Neumann terms only: ``(x, iterations, None)`` (no residual estimate of its own)."""
  del tol  # always sums maxiter terms
  alpha = _step_size(matvec, b, step_size)

  def body(_, c):
    v, p = c
    v = tree_axpy(-alpha, matvec(v), v)
    return v, jax.tree.map(jnp.add, p, v)

  _, p = lax.fori_loop(0, maxiter, body, (b, b))
  return jax.tree.map(lambda a: alpha * a, p), jnp.asarray(maxiter, jnp.int32), None


def fixed_point_solve(
    matvec: MatVec, b: PyTree, *, maxiter: int = 100, tol: float = 1e-5,
    step_size: float | None = None,
) -> SolveResult:
  """Richardson iteration ``x ← x + α (b − A x)`` until ``||b − A x|| <= tol ||b||``.

  This is the fixed point ``x = Φ(x)`` of the linearised inner gradient-descent map; it
  stops early, unlike :func:`neumann_solve`, which always sums ``maxiter`` terms.

  Args:
    matvec: ``x -> A x``.
    b: right-hand side.
    maxiter: iteration cap.
    tol: relative residual tolerance.
    step_size: ``α``; ``None`` estimates ``1 / λ_max`` by 20 power iterations.

  Returns:
    A :class:`SolveResult`.
  """
  x, k, estimate = _fixed_point(matvec, b, maxiter, tol, step_size)
  return _finish(matvec, b, x, k, tol, estimate)


def _fixed_point(matvec: MatVec, b: PyTree, maxiter: int, tol: float,
                 step_size: float | None) -> tuple[PyTree, jax.Array, jax.Array]:
  """Richardson iterations only: ``(x, iterations, relative residual)`` (``r = b - A x`` is
  recomputed from ``x`` every iteration, so it is the true residual)."""
  alpha = _step_size(matvec, b, step_size)
  b_norm = tree_norm(b)

  def cond(c):
    _, r, k = c
    rn = tree_norm(r)
    return (k < maxiter) & (rn > tol * b_norm) & jnp.isfinite(rn)

  def body(c):
    x, r, k = c
    x = tree_axpy(alpha, r, x)
    r = jax.tree.map(jnp.subtract, b, matvec(x))
    return x, r, k + 1

  x0 = jax.tree.map(jnp.zeros_like, b)
  x, r, k = lax.while_loop(cond, body, (x0, b, jnp.zeros((), jnp.int32)))
  return x, k, tree_norm(r) / jnp.maximum(b_norm, _tiny(b_norm))


def linear_solve(
    matvec: MatVec, b: PyTree, solver: str = "cg", *, maxiter: int = 100, tol: float = 1e-5,
    step_size: float | None = None,
) -> SolveResult:
  """Dispatches to :func:`cg_solve`, :func:`neumann_solve` or :func:`fixed_point_solve`."""
  x, k, estimate = _iterate(matvec, b, solver, maxiter, tol, step_size)
  return _finish(matvec, b, x, k, tol, estimate)


def _iterate(matvec: MatVec, b: PyTree, solver: str, maxiter: int, tol: float,
             step_size: float | None) -> tuple[PyTree, jax.Array, jax.Array | None]:
  """The solver's iterations without the final residual check: ``(x, iterations, the
  solver's own relative residual estimate or None)``."""
  if solver == "cg":
    return _cg(matvec, b, maxiter, tol)
  if solver == "neumann":
    return _neumann(matvec, b, maxiter, tol, step_size)
  if solver == "fixed_point":
    return _fixed_point(matvec, b, maxiter, tol, step_size)
  raise ValueError(f"solver={solver!r} is unknown; allowed: {', '.join(SOLVERS)}")


def _shared_consts(fn: Callable, *args: PyTree) -> Callable:
  """``fn`` with the arrays it closes over (training data) passed through one
  ``optimization_barrier``: XLA then keeps a single buffer for them, read by the solver's loop
  and by the checks after it, instead of sinking a second copy of the constants into the loop
  body (measured on ridge, n=2000, d=200: each product outside the loop then read a cold
  1.6 MB copy and the checks cost 40% of the solve)."""
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
  if not closed.consts:
    return fn
  consts = list(closed.consts)
  plain = [i for i, c in enumerate(consts)  # typed PRNG keys etc. stay as they are
           if isinstance(c, jax.Array | np.ndarray) and not jax.dtypes.issubdtype(
               c.dtype, jax.dtypes.extended)]
  for i, c in zip(plain, lax.optimization_barrier([consts[i] for i in plain]), strict=True):
    consts[i] = c
  out_tree = jax.tree.structure(out_shape)

  def shared(*a: PyTree):
    out = jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(a))
    return jax.tree.unflatten(out_tree, out)

  return shared


def implicit(
    train_loss: Callable[[PyTree, HParams, PyTree], jax.Array],
    val_loss: Callable[[PyTree, HParams], jax.Array],
    *,
    solver: str = "cg",
    maxiter: int = 100,
    tol: float = 1e-5,
    step_size: float | None = None,
    damping: float = 0.0,
    inner_tol: float | None = None,
    max_norm: float = 1e6,
    check: bool = True,
    stats: bool = False,
) -> Callable[[HParams, PyTree, PyTree], HypergradResult]:
  """Implicit hypergradient ``∂_λV − ∂²_{λw}L · (H + damping·I)⁻¹ ∂_wV`` at ``w``.

  Args:
    train_loss: ``train_loss(params, hparams, batch) -> scalar``, the inner objective
      whose stationary point ``params`` is.
    val_loss: ``val_loss(params, hparams) -> scalar``.
    solver: one of ``SOLVERS``.
    maxiter: solver iterations (Neumann: series terms).
    tol: relative residual the solve must reach to count as converged.
    step_size: ``α`` for ``"neumann"`` / ``"fixed_point"`` (``None``: ``1 / λ_max`` by
      power iteration).
    damping: Tikhonov damping added to ``H`` (helps nonconvex or singular problems; biases
      the hypergradient).
    inner_tol: if given, ``||∂_w L(w)|| > inner_tol`` makes the result untrustworthy (the
      inner problem was not solved, so the IFT does not apply); implies ``stats=True``.
    max_norm: hypergradient norms above this are flagged *exploding*.
    check: ``True`` (default): ``residual_norm`` is the true residual ``||H v − b|| / ||b||``
      (one Hessian-vector product after the solve). ``False`` skips it: ``residual_norm`` is
      the solver's own estimate (CG's recursive residual; fixed point's is exact; Neumann
      always checks), so the work is that of jaxopt's implicit differentiation. Needs
      ``inner_tol=None`` and ``stats=False``.
    stats: also evaluate the training loss and its gradient at ``params`` (the result's
      ``train_loss`` and ``diagnostics.inner_grad_norm``; one more training-loss gradient,
      shared with the residual's product). ``False`` (default, unless ``inner_tol`` is
      given): ``train_loss`` is NaN and ``inner_grad_norm`` 0 (not computed).

  Returns:
    ``hypergrad(hparams, params, batch) -> HypergradResult``, with ``params`` the
    (approximate) inner optimum and ``batch`` the data ``train_loss`` is minimised over.

  Examples:
    >>> import jax.numpy as jnp
    >>> # w*(λ) = 1 / (1 + λ) minimises 0.5 (w − 1)² + 0.5 λ w²; V = w.
    >>> hg = implicit(lambda w, h, b: 0.5 * (w - 1) ** 2 + 0.5 * h * w ** 2,
    ...               lambda w, h: w)
    >>> r = hg(jnp.asarray(1.0), jnp.asarray(0.5), None)  # dw*/dλ = −1 / (1 + λ)² = −0.25
    >>> round(float(r.grad), 4), bool(r.diagnostics.trustworthy)
    (-0.25, True)
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver={solver!r} is unknown; allowed: {', '.join(SOLVERS)}")
  if not check and (inner_tol is not None or stats):
    raise ValueError("check=False skips every check: it cannot be combined with "
                     f"inner_tol={inner_tol!r} or stats={stats!r} (use check=True, or "
                     "inner_tol=None and stats=False)")
  stats = stats or inner_tol is not None

  def hypergrad(hparams: HParams, params: PyTree, batch: PyTree) -> HypergradResult:
    value, (g_w, g_h) = jax.value_and_grad(val_loss, argnums=(0, 1))(params, hparams)
    # one linearisation of w -> (dL/dw, dL/dλ): its tangent at v is (H v, ∂²_{λw}L · v), so
    # the true residual's product and the mixed term come from one pass (no second
    # differentiation for the mixed term)
    loss = _shared_consts(train_loss, params, hparams, batch)
    grads = lambda w: jax.grad(loss, argnums=(0, 1))(w, hparams, batch)
    _, lin = jax.linearize(grads, params)  # the solve's products (primal gradient: dead code)
    hvp = lambda v: lin(v)[0]
    damped = lambda hv, v: hv if damping == 0.0 else tree_axpy(damping, v, hv)
    x, k, estimate = _iterate(lambda v: damped(hvp(v), v), g_w, solver, maxiter, tol,
                              step_size)
    v = lax.stop_gradient(x)
    nan = jnp.asarray(jnp.nan, jnp.result_type(float))
    train_value, inner_grad = nan, None
    if stats:  # the stats' primal gradient and the last product in one pass after the solve
      full_grad = lambda w: jax.value_and_grad(loss, argnums=(0, 1))(w, hparams, batch)
      (train_value, (inner_grad, _)), (_, (hv, mixed)) = jax.jvp(full_grad, (params,), (v,))
    else:  # the residual's product and the mixed term only (check=False: hv is dead code)
      hv, mixed = lin(v)
    if check or estimate is None:
      sol = _finish_from(damped(hv, v), g_w, v, k, tol, estimate)
    else:
      sol = _result(estimate, v, k, tol)
    grad = jax.tree.map(jnp.subtract, g_h, mixed)
    diag = make_diagnostics(value, grad, residual_norm=sol.residual_norm,
                            iterations=sol.iterations, converged=sol.converged,
                            inner_grad_norm=0.0 if inner_grad is None else tree_norm(inner_grad),
                            max_norm=max_norm, max_inner_grad_norm=inner_tol)
    return HypergradResult(value, grad, diag, params, train_value)

  return hypergrad
