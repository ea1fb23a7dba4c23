"""hypergrad: every method vs finite differences and closed forms, remat, truncation, pathologies.

Checks run in float64 inside ``jax.enable_x64(True)`` (a context, never the global flag).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metaopt import hypergrad
from metaopt._src.population import fast_jit  # programs called once: no backend optimisation
from metaopt.hypergrad import problems
from metaopt.hypergrad.unrolled import run_inner


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _maybe_jit(fn, use_jit):
  return jax.jit(fn) if use_jit else fn


def _rel_err(a, b):
  a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def _central_fd(f, hparams, rel_step=1e-5):
  """Central differences of scalar ``f`` over every entry of ``hparams`` (one vmapped call)."""
  flat, unravel = ravel_pytree(hparams)
  eps = rel_step * jnp.maximum(1.0, jnp.abs(flat))
  basis = jnp.diag(eps)
  points = jnp.concatenate([flat + basis, flat - basis])
  vals = fast_jit(jax.vmap(lambda p: f(unravel(p))))(points)
  n = flat.size
  return unravel((vals[:n] - vals[n:]) / (2 * eps))


def _unroll_value(inner, val_loss, start, xs, truncate=None):
  def f(h):
    state, _ = run_inner(inner, h, start, xs, truncate=truncate)
    return val_loss(inner.params(state), h)
  return f


# ------------------------------------------------------------------------- unrolled / forward
def _fd_case(use_jit):
  """logreg (jitted) or, unjitted, a tiny ridge problem (eager dispatch is slow)."""
  if use_jit:
    p = problems.logreg("breast_cancer", batch_size=16)
    return p, p.hparams, 12
  p = problems.ridge(n=16, n_val=16, d=4, batch_size=8)
  return p, {"l2": jnp.asarray(1.0), "learning_rate": jnp.asarray(0.01)}, 6


@pytest.mark.parametrize("use_jit", [True, False])
def test_unrolled_and_forward_match_finite_differences(x64, use_jit):
  p, h, steps = _fd_case(use_jit)
  inner = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  xs = p.sample(jax.random.key(0), steps)
  w0 = p.init_params(jax.random.key(1))
  rev = _maybe_jit(hypergrad.unrolled(inner, p.val_loss), use_jit)(h, w0, xs)
  fwd = _maybe_jit(hypergrad.forward(inner, p.val_loss), use_jit)(h, w0, xs)
  fd = _central_fd(_unroll_value(inner, p.val_loss, w0, xs), h)
  assert _rel_err(rev.grad, fd) < 1e-3
  assert _rel_err(fwd.grad, fd) < 1e-3
  chex.assert_trees_all_close(fwd.grad, rev.grad, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(fwd.value, rev.value, rtol=1e-12)
  assert bool(rev.diagnostics.trustworthy) and bool(fwd.diagnostics.trustworthy)
  assert 0 < float(rev.diagnostics.amplification) < 10  # convex, small lr: contractive
  if not use_jit:  # truncation K >= T and remat change nothing, unjitted too
    for kw in ({"truncate": steps}, {"truncate": steps + 5, "remat": "sqrt"}):
      r = hypergrad.unrolled(inner, p.val_loss, **kw)(h, w0, xs)
      chex.assert_trees_all_close(r.grad, rev.grad, rtol=1e-12)


def test_rich_per_layer_hparams_match_finite_differences(x64):
  p = problems.mlp("digits", widths=(8,), batch_size=16, per_layer=True)
  inner = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  xs = p.sample(jax.random.key(0), 8)
  w0 = p.init_params(jax.random.key(1))
  h = p.hparams  # learning_rate and weight_decay are per-layer dicts
  assert set(h["learning_rate"]) == {"layer_0", "layer_1"}
  rev = fast_jit(hypergrad.unrolled(inner, p.val_loss))(h, w0, xs)
  fd = _central_fd(_unroll_value(inner, p.val_loss, w0, xs), h)
  assert _rel_err(rev.grad, fd) < 1e-3
  assert rev.grad["learning_rate"]["layer_0"].shape == ()


def test_loss_hyperparameters_match_finite_differences(x64):
  """Label smoothing, augmentation strength and per-class loss weights are differentiable."""
  p = problems.mlp("digits", widths=(8,), batch_size=16, loss_hparams=True)
  inner = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  xs = p.sample(jax.random.key(0), 8)
  w0 = p.init_params(jax.random.key(1))
  h = dict(p.hparams, class_weights=jnp.linspace(0.5, 1.5, 10))
  rev = fast_jit(hypergrad.unrolled(inner, p.val_loss))(h, w0, xs)
  # a ReLU net's unrolled loss is only piecewise smooth (a unit crossing zero at some step
  # moves every later step): small steps keep the differences inside one smooth piece
  fd = _central_fd(_unroll_value(inner, p.val_loss, w0, xs), h, rel_step=1e-8)
  assert _rel_err(rev.grad, fd) < 1e-3
  for k in ("label_smoothing", "aug_noise", "class_weights"):
    assert float(jnp.linalg.norm(rev.grad[k])) > 0, k
  assert rev.grad["class_weights"].shape == (10,)


def test_truncation(x64):
  p = problems.logreg("breast_cancer", batch_size=16)
  inner = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  xs = p.sample(jax.random.key(0), 10)
  w0 = p.init_params(jax.random.key(1))
  h = p.hparams
  full = jax.jit(hypergrad.unrolled(inner, p.val_loss))(h, w0, xs)
  r = jax.jit(hypergrad.unrolled(inner, p.val_loss, truncate=10))(h, w0, xs)
  chex.assert_trees_all_equal(r.grad, full.grad)  # K = T is the full unroll, bit for bit
  rev = jax.jit(hypergrad.unrolled(inner, p.val_loss, truncate=3))(h, w0, xs)
  fwd = jax.jit(hypergrad.forward(inner, p.val_loss, truncate=3, vectorize=False))(h, w0, xs)
  np.testing.assert_allclose(rev.value, full.value, rtol=1e-12)  # same forward pass
  chex.assert_trees_all_close(fwd.grad, rev.grad, rtol=1e-9, atol=1e-12)
  # Truncated = exact gradient of the run whose first T - K steps see frozen hparams,
  # and the learning rate still gets its gradient (injected hyperparameters refreshed).
  h0 = jax.tree.map(jnp.asarray, h)

  def frozen_head(hh):
    state, _ = run_inner(inner, h0, w0, jax.tree.map(lambda x: x[:7], xs))
    for i in range(7, 10):
      state, _ = inner.step(state, hh, xs[i])
    return p.val_loss(inner.params(state), hh)

  assert _rel_err(rev.grad, _central_fd(frozen_head, h)) < 1e-3
  assert abs(float(rev.grad["learning_rate"])) > 0
  assert _rel_err(rev.grad, full.grad) > 1e-2


def test_remat_identical_values_and_less_memory(x64):
  p = problems.ridge(n=64, d=256, batch_size=32)
  inner = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  xs = p.sample(jax.random.key(0), 100)
  w0 = p.init_params(jax.random.key(1))
  h = {"l2": jnp.asarray(1.0)}
  for backward in ("hvp", "autodiff"):
    temp, results = {}, {}
    for remat in hypergrad.REMAT:
      fn = jax.jit(hypergrad.unrolled(inner, p.val_loss, remat=remat, backward=backward))
      compiled = fn.lower(h, w0, xs).compile()
      temp[remat] = compiled.memory_analysis().temp_size_in_bytes
      results[remat] = compiled(h, w0, xs)
    for remat in ("step", "sqrt"):
      chex.assert_trees_all_close(results[remat].grad, results["none"].grad, rtol=1e-10)
      np.testing.assert_allclose(results[remat].value, results["none"].value, rtol=1e-12)
    # "step" vs "sqrt" depends on state vs per-step activation sizes; with the hvp backward
    # and plain SGD "step" = "none" (an update linear in the gradient needs no saved
    # gradient, XLA drops it). benchmarks/hypergrad_cost.py shows sqrt's O(sqrt(T)) growth.
    assert temp["step"] <= temp["none"] and temp["sqrt"] < temp["none"] / 2, (backward, temp)


def test_hvp_backward_equals_autodiff(x64):
  """The Hessian-vector-product backward gives autodiff's numbers for every option,
  including hyperparameters that shape the initial state."""
  p = problems.ridge(n=16, n_val=16, d=4, batch_size=8)
  base = hypergrad.optax_inner_loop(p.train_loss, p.optimizer)
  inner = base._replace(init=lambda w, h: base.init(h["scale"] * w, h))
  h = {"l2": jnp.asarray(1.0), "learning_rate": jnp.asarray(0.01), "scale": jnp.asarray(0.5)}
  xs = p.sample(jax.random.key(0), 9)
  w0 = jnp.ones(4)
  fd = _central_fd(_unroll_value(inner, p.val_loss, w0, xs), h)
  for kw in ({}, {"remat": "sqrt", "segment": 3, "truncate": 7}):
    a = fast_jit(hypergrad.unrolled(inner, p.val_loss, backward="autodiff", **kw))(h, w0, xs)
    b = fast_jit(hypergrad.unrolled(inner, p.val_loss, backward="hvp", **kw))(h, w0, xs)
    chex.assert_trees_all_close(b.grad, a.grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(b.diagnostics.amplification, a.diagnostics.amplification,
                               rtol=1e-10)
    np.testing.assert_allclose(b.train_loss, a.train_loss, rtol=1e-12)
    if not kw:
      assert _rel_err(b.grad, fd) < 1e-3 and abs(float(b.grad["scale"])) > 0
  with pytest.raises(ValueError, match="needs an InnerLoop with loss and update"):
    hypergrad.unrolled(inner._replace(loss=None), p.val_loss, backward="hvp")


def test_chaotic_unroll_is_flagged():
  # GD on 0.5 w^2 with lr 2.5: |1 - lr| = 1.5 > 1, sensitivities grow like 1.5^T.
  inner = hypergrad.optax_inner_loop(lambda w, h, b: 0.5 * jnp.sum(w ** 2), hypergrad.sgd)
  hg = jax.jit(hypergrad.unrolled(inner, lambda w, h: jnp.sum(w ** 2)))
  r = hg({"learning_rate": jnp.asarray(2.5)}, jnp.ones(2), jnp.zeros((40, 1)))
  assert float(r.diagnostics.amplification) > 1e6
  assert not bool(r.diagnostics.trustworthy)
  path = hypergrad.check(r.diagnostics)
  assert bool(path.chaotic) and bool(path.exploding) and bool(path.fallback)
  ok = hg({"learning_rate": jnp.asarray(0.5)}, jnp.ones(2), jnp.zeros((40, 1)))
  assert bool(ok.diagnostics.trustworthy) and not bool(hypergrad.check(ok.diagnostics).fallback)


def test_trial_fns_adapter_on_logreg_task():
  from metaopt import tasks

  task = tasks.get_task("logreg")
  fns = task.build({})
  xv, yv = jnp.asarray(task.data.valid.x), jnp.asarray(task.data.valid.y)
  x, y = jnp.asarray(task.data.train.x[:160]), jnp.asarray(task.data.train.y[:160])
  xs = (x.reshape(5, 32, -1), y.reshape(5, 32))
  h = {"learning_rate": jnp.asarray(0.1), "l2": jnp.asarray(1e-3)}
  opt = lambda hh: tasks.make_optimizer("sgd", hh, {"momentum": 0.0})
  val = lambda state, hh: fns.evaluate(state, xv, yv, hh)["loss"]
  key = jax.random.key(0)
  inner = hypergrad.trial_fns_inner_loop(fns, optimizer=opt)
  full = fast_jit(hypergrad.unrolled(inner, val))(h, key, xs)
  assert float(full.grad["learning_rate"]) < 0  # a larger lr helps after 5 steps
  assert float(full.grad["l2"]) != 0 and bool(full.diagnostics.trustworthy)
  trunc = fast_jit(hypergrad.unrolled(inner, val, truncate=2))(h, key, xs)
  assert abs(float(trunc.grad["learning_rate"])) > 0 and bool(trunc.diagnostics.trustworthy)


def test_mlp_val_split_reads_the_test_split():
  """val_split='test' scores the same params on the test split (the benchmark reports picks
  made on 'valid' there); an unknown split is one ValueError before any data is read."""
  valid = problems.mlp("digits", widths=(8,))
  test = problems.mlp("digits", widths=(8,), val_split="test")
  w = valid.init_params(jax.random.key(0))
  a, b = float(valid.val_loss(w, valid.hparams)), float(test.val_loss(w, test.hparams))
  assert np.isfinite(a) and np.isfinite(b) and a != b
  with pytest.raises(ValueError, match="val_split"):
    problems.mlp("digits", val_split="train")


# ------------------------------------------------------------------------- implicit
@pytest.mark.parametrize("solver,use_jit", [
    ("cg", True), ("neumann", True), ("fixed_point", True), ("cg", False)])
def test_implicit_ridge_closed_form(x64, solver, use_jit):
  p = problems.ridge(noise=2.0)
  x, y, xv, yv = (jnp.asarray(a) for a in problems.ridge_data(noise=2.0))
  lam = jnp.asarray(5.0)
  w_star = problems.ridge_solution(x, y, lam)
  hg = hypergrad.implicit(p.train_loss, p.val_loss, solver=solver, maxiter=2000, tol=1e-10,
                          stats=True)
  r = _maybe_jit(hg, use_jit)({"l2": lam}, w_star, p.full_batch)
  expected = problems.ridge_hypergrad(x, y, xv, yv, lam)
  assert abs(float(r.grad["l2"]) - float(expected)) < 1e-6 * abs(float(expected))
  d = r.diagnostics
  assert bool(d.converged) and bool(d.trustworthy) and float(d.residual_norm) <= 1e-10
  assert float(d.inner_grad_norm) < 1e-8
  # and against finite differences of the closed-form validation loss
  fd = _central_fd(lambda h: problems.ridge_val_loss(
      problems.ridge_solution(x, y, h["l2"]), xv, yv), {"l2": lam})
  assert _rel_err(r.grad, fd) < 1e-3


def test_implicit_matches_finite_differences_on_logistic_regression(x64):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(60, 5)))
  y = jnp.asarray((x @ rng.normal(size=5) + rng.normal(size=60) > 0).astype(float))
  xv = jnp.asarray(rng.normal(size=(40, 5)))
  yv = jnp.asarray((xv @ rng.normal(size=5) > 0).astype(float))

  def train_loss(w, h, batch):
    del batch
    nll = jnp.mean(jnp.logaddexp(0.0, x @ w) - y * (x @ w))
    return nll + 0.5 * jnp.sum(h["l2"] * w ** 2)  # per-feature L2

  val_loss = lambda w, h: jnp.mean(jnp.logaddexp(0.0, xv @ w) - yv * (xv @ w))

  def solve(h):  # Newton to machine precision
    def newton(w, _):
      g = jax.grad(train_loss)(w, h, None)
      return w - jnp.linalg.solve(jax.hessian(train_loss)(w, h, None), g), None
    return jax.lax.scan(newton, jnp.zeros(5), None, length=30)[0]

  h = {"l2": jnp.asarray([0.01, 0.1, 0.05, 0.2, 0.02])}
  fd = _central_fd(lambda hh: val_loss(solve(hh), hh), h)
  for solver in hypergrad.SOLVERS:
    r = jax.jit(hypergrad.implicit(train_loss, val_loss, solver=solver, maxiter=5000,
                                   tol=1e-10))(h, solve(h), None)
    assert _rel_err(r.grad, fd) < 1e-3, solver
    assert bool(r.diagnostics.trustworthy), solver


def test_implicit_mixed_term_with_nonlinear_loss_hparams(x64):
  """The mixed term ∂²_{λw}L·v comes from the same linearisation as H v (its ∂_λ L tangent):
  checked against finite differences where λ enters the loss nonlinearly (class weights
  through a softplus, an exp-parameterised L2)."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(50, 4)))
  y = jnp.asarray((x @ rng.normal(size=4) + rng.normal(size=50) > 0).astype(float))
  xv = jnp.asarray(rng.normal(size=(30, 4)))
  yv = jnp.asarray((xv @ rng.normal(size=4) > 0).astype(float))

  def train_loss(w, h, batch):
    del batch
    z = x @ w
    weights = jax.nn.softplus(h["a"] * y + h["b"])
    nll = jnp.mean(weights * (jnp.logaddexp(0.0, z) - y * z))
    return nll + 0.5 * jnp.exp(h["log_l2"]) * jnp.sum(w ** 2)

  val_loss = lambda w, h: jnp.mean(jnp.logaddexp(0.0, xv @ w) - yv * (xv @ w))

  def solve(h):  # Newton to machine precision
    def newton(w, _):
      g = jax.grad(train_loss)(w, h, None)
      return w - jnp.linalg.solve(jax.hessian(train_loss)(w, h, None), g), None
    return jax.lax.scan(newton, jnp.zeros(4), None, length=30)[0]

  h = {"a": jnp.asarray(0.7), "b": jnp.asarray(-0.2), "log_l2": jnp.asarray(-2.0)}
  fd = _central_fd(lambda hh: val_loss(solve(hh), hh), h)
  for solver in ("cg", "fixed_point"):
    r = jax.jit(hypergrad.implicit(train_loss, val_loss, solver=solver, maxiter=5000,
                                   tol=1e-11))(h, solve(h), None)
    assert _rel_err(r.grad, fd) < 1e-4, solver
    assert all(abs(float(v)) > 1e-4 for v in jax.tree.leaves(r.grad)), solver
    assert bool(r.diagnostics.trustworthy) and float(r.diagnostics.residual_norm) <= 1e-11


def _ill_conditioned():
  a = jnp.logspace(0, 6, 40)
  c = jnp.linspace(-1.0, 1.0, 40)
  train_loss = lambda w, h, b: 0.5 * jnp.sum(a * w ** 2) - h["s"] * jnp.sum(c * w)
  val_loss = lambda w, h: 0.5 * jnp.sum((w - 1.0) ** 2)
  h = {"s": jnp.asarray(1.0)}
  return train_loss, val_loss, h, h["s"] * c / a


def test_unconverged_implicit_solve_is_flagged(x64):
  train_loss, val_loss, h, w_star = _ill_conditioned()
  for solver in hypergrad.SOLVERS:
    r = jax.jit(hypergrad.implicit(train_loss, val_loss, solver=solver, maxiter=2))(
        h, w_star, None)
    d = r.diagnostics
    assert not bool(d.converged) and not bool(d.trustworthy), solver
    assert float(d.residual_norm) > 1e-5 and int(d.iterations) <= 2, solver
    assert bool(hypergrad.check(d).unconverged), solver
  good = jax.jit(hypergrad.implicit(train_loss, val_loss, maxiter=500, tol=1e-9))(
      h, w_star, None)
  assert bool(good.diagnostics.trustworthy) and int(good.diagnostics.iterations) > 2
  # A non-stationary inner point is untrustworthy when inner_tol is set.
  far = jax.jit(hypergrad.implicit(train_loss, val_loss, maxiter=500, tol=1e-9,
                                   inner_tol=1e-6))(h, w_star + 0.1, None)
  assert bool(far.diagnostics.converged) and not bool(far.diagnostics.trustworthy)


@functools.cache
def _ridge_f32(n=2000, d=200):
  """The float32 ridge problem of ``benchmarks/hypergrad_cost.py`` (data passed as the batch)
  and, for CG capped at 500 and 11 iterations, the exact (float64) relative residual of the
  float32 solution of ``H v = dV/dw``."""
  rng = np.random.default_rng(0)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  w_true, x = f32(d), f32(n, d)
  y = x @ w_true + 2.0 * f32(n)
  xv = f32(n, d)
  yv = xv @ w_true + 2.0 * f32(n)
  train_loss = lambda w, h, b: 0.5 * jnp.sum((b[0] @ w - b[1]) ** 2) + 0.5 * h * jnp.sum(w * w)
  val_loss = lambda w, h: problems.ridge_val_loss(w, xv, yv)
  lam = jnp.asarray(50.0, jnp.float32)
  w_star = problems.ridge_solution(x, y, lam)

  @jax.jit
  def solutions(w):
    _, lin = jax.linearize(jax.grad(lambda w: train_loss(w, lam, (x, y))), w)
    b = jax.grad(val_loss)(w, lam)
    return b, {m: (hypergrad.cg_solve(lin, b, maxiter=m, tol=1e-6),
                   hypergrad.linear_solve(lin, b, "cg", maxiter=m, tol=1e-6)) for m in (500, 11)}

  b, solves = solutions(w_star)
  x64, b = np.asarray(x, np.float64), np.asarray(b, np.float64)
  h64 = x64.T @ x64 + 50.0 * np.eye(d)
  exact = {m: np.linalg.norm(h64 @ np.asarray(s[0].x, np.float64) - b) / np.linalg.norm(b)
           for m, s in solves.items()}
  return train_loss, val_loss, lam, (x, y), w_star, exact, solves


class FloatCheckRoundingTest(chex.TestCase):
  """The float32 true-residual check reads its own rounding (about 2 eps here): a CG solve
  whose exact residual is below tol is converged, one above it is not."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_float32_solve_at_tol_is_converged_and_above_tol_is_not(self):
    train_loss, val_loss, lam, data, w_star, exact, solves = _ridge_f32()
    for maxiter, below in ((500, True), (11, False)):
      assert (exact[maxiter] <= 1e-6) == below, exact  # premise: 9.4e-7 (12 its), 1.7e-6 (11)
      assert all(bool(r.converged) == below for r in solves[maxiter]), maxiter  # solvers alone
      hg = hypergrad.implicit(train_loss, val_loss, maxiter=maxiter, tol=1e-6)
      d = self.variant(hg)(lam, w_star, data).diagnostics
      assert bool(d.converged) == below and bool(d.trustworthy) == below, (maxiter, d)
      assert abs(float(d.residual_norm) - exact[maxiter]) < 4 * np.finfo(np.float32).eps


def test_float32_cg_drift_beyond_rounding_is_flagged():
  """CG's recursive residual reaches tol on an ill-conditioned float32 system while the true
  residual stays far above it: the rounding allowance does not hide that."""
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.normal(size=(50, 50)))[0]
  a64 = q @ np.diag(np.logspace(0, 3, 50)) @ q.T
  a, b = jnp.asarray(a64, jnp.float32), jnp.asarray(rng.normal(size=50), jnp.float32)
  for solve in (hypergrad.cg_solve, lambda mv, b, **k: hypergrad.linear_solve(mv, b, "cg", **k)):
    r = solve(lambda v: a @ v, b, maxiter=1000, tol=1e-6)
    assert int(r.iterations) < 1000  # CG stopped on its own estimate
    exact = np.linalg.norm(a64 @ np.asarray(r.x, np.float64) - np.asarray(b, np.float64))
    assert exact / np.linalg.norm(np.asarray(b, np.float64)) > 1e-5
    assert not bool(r.converged) and float(r.residual_norm) > 1e-5


def test_float32_implicit_default_flags_a_drift_its_estimate_would_pass():
  """The implicit default's true-residual check is what flags a float32 solve whose CG
  estimate met tol while the true residual did not (check=False, the estimate alone, trusts
  the same solve): the check cannot be replaced by CG's own residual."""
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.normal(size=(50, 50)))[0]
  a = jnp.asarray(q @ np.diag(np.logspace(0, 3, 50)) @ q.T, jnp.float32)
  c, b = (jnp.asarray(rng.normal(size=50), jnp.float32) for _ in range(2))
  train_loss = lambda w, h, batch: 0.5 * w @ (a @ w) - h * (c @ w)
  val_loss = lambda w, h: b @ w
  w, h = jnp.zeros(50, jnp.float32), jnp.asarray(1.0, jnp.float32)
  run = lambda **kw: jax.jit(hypergrad.implicit(train_loss, val_loss, maxiter=1000, tol=1e-6,
                                                **kw))(h, w, None).diagnostics
  estimate, checked = run(check=False), run()
  assert int(checked.iterations) < 1000 and int(estimate.iterations) == int(checked.iterations)
  assert bool(estimate.trustworthy) and float(estimate.residual_norm) <= 1e-6
  assert not bool(checked.converged) and not bool(checked.trustworthy)
  assert float(checked.residual_norm) > 1e-5


def test_implicit_with_closed_over_arrays_and_keys(x64):
  """The training loss closes over a data matrix (its constants are shared by the solve and
  the checks) and a typed PRNG key (left as it is): closed form, inner gradient, vmap."""
  key = jax.random.key(3)
  a = jnp.asarray([[2.0, 0.3], [0.3, 1.0]])
  noise = lambda: jax.random.normal(key, (2,))
  train_loss = lambda w, h, b: 0.5 * w @ a @ w + 0.5 * h * w @ w - noise() @ w
  w_of = lambda h: jnp.linalg.solve(a + h * jnp.eye(2), noise())
  hg = jax.jit(hypergrad.implicit(train_loss, lambda w, h: jnp.sum(w), tol=1e-10, stats=True))
  h = jnp.asarray(0.5)
  r = hg(h, w_of(h), None)
  assert abs(float(r.grad) - float(jax.grad(lambda h: jnp.sum(w_of(h)))(h))) < 1e-8
  assert bool(r.diagnostics.trustworthy) and float(r.diagnostics.inner_grad_norm) < 1e-10
  assert float(hg(h, w_of(h) + 0.1, None).diagnostics.inner_grad_norm) > 1e-2
  hs = jnp.asarray([0.5, 2.0])
  np.testing.assert_allclose(jax.vmap(lambda h: hg(h, w_of(h), None).grad)(hs),
                             jax.vmap(jax.grad(lambda h: jnp.sum(w_of(h))))(hs), rtol=1e-8)


def test_implicit_check_false_skips_checks_not_correctness(x64):
  """check=False: the same hypergradient (closed form), the solver's own residual estimate,
  still flags an unconverged solve, and refuses inner_tol."""
  p = problems.ridge(noise=2.0)
  x, y, xv, yv = (jnp.asarray(a) for a in problems.ridge_data(noise=2.0))
  lam = jnp.asarray(5.0)
  w_star = problems.ridge_solution(x, y, lam)
  expected = float(problems.ridge_hypergrad(x, y, xv, yv, lam))
  for solver in hypergrad.SOLVERS:
    r = jax.jit(hypergrad.implicit(p.train_loss, p.val_loss, solver=solver, maxiter=2000,
                                   tol=1e-10, check=False))({"l2": lam}, w_star, p.full_batch)
    assert abs(float(r.grad["l2"]) - expected) < 1e-6 * abs(expected), solver
    assert bool(r.diagnostics.converged) and float(r.diagnostics.residual_norm) <= 1e-10
    assert float(r.diagnostics.inner_grad_norm) == 0.0
    assert np.isnan(float(r.train_loss))  # not evaluated
  train_loss, val_loss, h, w_bad = _ill_conditioned()
  for solver in hypergrad.SOLVERS:
    r = jax.jit(hypergrad.implicit(train_loss, val_loss, solver=solver, maxiter=2,
                                   check=False))(h, w_bad, None)
    assert not bool(r.diagnostics.trustworthy) and float(r.diagnostics.residual_norm) > 1e-5
  with pytest.raises(ValueError, match="inner_tol"):
    hypergrad.implicit(train_loss, val_loss, check=False, inner_tol=1e-6)
  with pytest.raises(ValueError, match="stats"):
    hypergrad.implicit(train_loss, val_loss, check=False, stats=True)


@pytest.mark.parametrize("use_jit", [True, False])
def test_implicit_stats_only_when_asked(x64, use_jit):
  """The default checks the true residual only; the training loss and inner-gradient norm
  are computed with stats=True or inner_tol (against closed forms), and the same
  hypergradient either way."""
  p = problems.ridge(noise=2.0)
  x, y, _, _ = (jnp.asarray(a) for a in problems.ridge_data(noise=2.0))
  lam = jnp.asarray(5.0)
  w = problems.ridge_solution(x, y, lam) + 1e-3  # not stationary: a known inner gradient
  g_exact = x.T @ (x @ w - y) + lam * w
  loss_exact = 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w * w)
  run = lambda **kw: _maybe_jit(hypergrad.implicit(p.train_loss, p.val_loss, maxiter=2000,
                                                   tol=1e-10, **kw), use_jit)(
      {"l2": lam}, w, p.full_batch)
  plain, stats, tol = run(), run(stats=True), run(inner_tol=1e-6)
  assert np.isnan(float(plain.train_loss)) and float(plain.diagnostics.inner_grad_norm) == 0.0
  assert bool(plain.diagnostics.converged) and float(plain.diagnostics.residual_norm) <= 1e-10
  for r in (stats, tol):
    np.testing.assert_allclose(float(r.train_loss), float(loss_exact), rtol=1e-12)
    np.testing.assert_allclose(float(r.diagnostics.inner_grad_norm),
                               float(jnp.linalg.norm(g_exact)), rtol=1e-9)
    np.testing.assert_allclose(float(r.grad["l2"]), float(plain.grad["l2"]), rtol=1e-12)
    assert float(r.diagnostics.residual_norm) == float(plain.diagnostics.residual_norm)
  assert bool(stats.diagnostics.trustworthy) and not bool(tol.diagnostics.trustworthy)


def test_hpo_does_not_apply_unconverged_hypergradients(x64):
  train_loss, val_loss, h, w_star = _ill_conditioned()
  ig = hypergrad.implicit(train_loss, val_loss, maxiter=2)
  est = lambda hh, start, key: ig(hh, start, None)
  prog = hypergrad.gradient_hpo(est, lambda key: w_star, {"s": "identity"}, optax.sgd(0.1))
  theta0 = {"s": jnp.asarray([1.0, 2.0])}
  state, tel = jax.jit(prog.step)(prog.init(jax.random.key(0), theta0), jax.random.key(1))
  chex.assert_trees_all_equal(state.theta, theta0)
  assert not np.any(tel["applied"]) and np.all(tel["pathologies"].fallback)


# ------------------------------------------------------------------------- online HD
def _train_logreg(opt, steps=300):
  p = problems.logreg("breast_cancer", batch_size=64)
  h = {"l2": jnp.asarray(1e-3)}
  xs = p.sample(jax.random.key(0), steps)

  def run(lr):
    o = opt(lr)
    w = p.init_params(jax.random.key(1))

    def step(c, idx):
      w, s = c
      u, s = o.update(jax.grad(p.train_loss)(w, h, idx), s, w)
      return (optax.apply_updates(w, u), s), None

    (w, s), _ = jax.lax.scan(step, (w, o.init(w)), xs)
    return p.train_loss(w, h, p.full_batch), s

  return run


@pytest.mark.parametrize("name,base,hd,good_lrs,beta", [
    ("sgd", optax.sgd, hypergrad.sgd_hd, [0.1, 0.3, 1.0, 3.0], 0.1),
    ("adam", optax.adam, hypergrad.adam_hd, [0.003, 0.01, 0.03, 0.1], 1e-3),
])
def test_hd_recovers_from_a_learning_rate_100x_too_small(name, base, hd, good_lrs, beta):
  lrs = jnp.asarray(good_lrs + [g / 100 for g in good_lrs])
  grid = jax.jit(jax.vmap(lambda lr: _train_logreg(base)(lr)[0]))(lrs)
  best = int(jnp.argmin(grid[:len(good_lrs)]))
  tuned_lr, tuned_loss = good_lrs[best], float(grid[best])
  small, fixed_small = tuned_lr / 100, float(grid[len(good_lrs) + best])
  loss, state = jax.jit(_train_logreg(lambda lr: hd(lr, beta)))(small)
  assert float(loss) < 1.1 * tuned_loss, (name, float(loss), tuned_loss)
  assert fixed_small > 1.5 * tuned_loss  # the small rate alone is far off
  assert float(hypergrad.hd_learning_rate(state)) > 5 * small


def test_hd_composes_in_an_optax_chain():
  opt = optax.chain(optax.clip_by_global_norm(1.0), hypergrad.sgd_hd(0.01, 0.1))
  params = jnp.ones(3)
  state = opt.init(params)
  step = jax.jit(opt.update)
  for _ in range(3):
    updates, state = step(params, state, params)
  assert float(hypergrad.hd_learning_rate(state)) > 0.01
  with pytest.raises(ValueError, match="no sgd_hd"):
    hypergrad.hd_learning_rate(optax.sgd(0.1).init(params))


# ------------------------------------------------------------------------- transforms, spaces
def test_transforms_round_trip_and_spaces():
  from metaopt.spaces import Choice, Float, Int, Space

  spec = {"lr": "log", "mom": "logit", "w": hypergrad.interval(-1.0, 2.0),
          "wd": hypergrad.log_interval(1e-6, 1e-1), "per_layer": "log"}
  h = {"lr": jnp.asarray(0.03), "mom": jnp.asarray(0.9), "w": jnp.asarray(0.5),
       "wd": jnp.asarray(1e-3), "per_layer": {"a": jnp.asarray(0.1), "b": jnp.asarray(0.2)}}
  theta = hypergrad.to_theta(h, spec)
  chex.assert_trees_all_close(hypergrad.to_hparams(theta, spec), h, rtol=1e-5)
  with pytest.raises(ValueError, match="unknown"):
    hypergrad.to_hparams({"lr": 0.0}, {"lr": "softplus"})

  space = Space({"lr": Float(1e-4, 1.0, log=True), "dropout": Float(0.0, 0.5),
                 "width": Int(8, 64), "act": Choice(["relu", "tanh"])})
  assert hypergrad.nondifferentiable(space) == ["act", "width"]
  spec = hypergrad.spec_from_space(space)
  assert spec["lr"].name == "log" and spec["dropout"].name == "identity"
  bounded = hypergrad.spec_from_space(space, bounded=True)
  hb = hypergrad.to_hparams({"lr": 50.0, "dropout": -50.0}, bounded)
  assert 1e-4 <= float(hb["lr"]) <= 1.0 and 0.0 <= float(hb["dropout"]) <= 0.5
  with pytest.raises(ValueError, match="'act'.*discrete"):
    hypergrad.spec_from_space(space, ["lr", "act"])
  mon = hypergrad.hypergrad_monitor(discrete=bool(hypergrad.nondifferentiable(space)))
  d = hypergrad.make_diagnostics(jnp.asarray(1.0), {"lr": jnp.asarray(0.1)})
  _, path = mon.update(mon.init(), d)
  assert bool(path.discrete) and bool(path.fallback)


def test_monitor_flags_nonfinite_exploding_and_growth():
  mon = hypergrad.hypergrad_monitor(max_norm=100.0, max_growth=10.0)
  diag = lambda g: hypergrad.make_diagnostics(jnp.asarray(1.0), jnp.asarray(g))
  s = mon.init()
  s, p = mon.update(s, diag(1.0))
  assert not bool(p.fallback)
  s, p = mon.update(s, diag(5.0))
  assert not bool(p.fallback)
  s, p = mon.update(s, diag(80.0))  # 16x growth, below max_norm
  assert bool(p.growing) and not bool(p.exploding) and bool(p.fallback)
  s, p = mon.update(s, diag(1e3))
  assert bool(p.exploding)
  s, p = mon.update(s, diag(jnp.nan))
  assert bool(p.nonfinite) and int(s.n_flagged) == 3
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[
      hypergrad.check(diag(v), max_norm=100.0) for v in (1.0, 2.0, 1e3)])
  assert int(hypergrad.first_fallback(stacked)) == 2
  assert hypergrad.summarize(stacked)["exploding"] == 1


# ------------------------------------------------------------------------- HPO programs
@pytest.mark.parametrize("method", ["unrolled", "implicit"])
def test_gradient_hpo_population_improves_validation_loss(method):
  p = problems.logreg("breast_cancer", batch_size=64 if method == "unrolled" else 1024)
  tune = ("learning_rate", "l2") if method == "unrolled" else ("l2",)
  spec = {k: p.spec[k] for k in tune}
  fixed = {k: v for k, v in p.hparams.items() if k not in tune}
  est = hypergrad.make_estimator(p, method, 30 if method == "unrolled" else 200, tol=1e-3)
  prog = hypergrad.gradient_hpo(est, p.init_params, spec, optax.adam(0.2), fixed=fixed)
  h0 = {"learning_rate": jnp.asarray(0.01), "l2": jnp.asarray(0.1)}
  theta0 = hypergrad.perturb(jax.random.key(3), hypergrad.to_theta(
      {k: h0[k] for k in tune}, spec), 3, 0.3)
  state, tel = jax.jit(hypergrad.run, static_argnums=(0, 3))(prog, jax.random.key(0),
                                                             theta0, 6)
  chex.assert_shape(tel["val_loss"], (6, 3))
  chex.assert_shape(tel["diagnostics"].grad_norm, (6, 3))
  chex.assert_shape(tel["hparams"]["l2"], (6, 3))
  assert np.all(tel["applied"]) and np.all(np.isfinite(tel["val_loss"]))
  assert np.mean(tel["val_loss"][-1]) < np.mean(tel["val_loss"][0])
  assert np.all(state.best_value <= tel["val_loss"][0] + 1e-6)


CONFIGS = ["unrolled", "implicit", "online"]


def _small_config(name):
  import importlib

  config = importlib.import_module(f"metaopt.configs.hypergrad_{name}").get_config()
  config.outer_steps, config.population, config.inner_steps = 2, 2, 5
  if name == "unrolled":
    config.estimator.remat = "none"  # compiles faster; remat is checked above
  if name == "implicit":
    config.estimator.tol = 10.0  # 5 inner steps are no optimum; only the plumbing here
  return config


def test_configs_build():
  for name in CONFIGS:
    program, theta0, spec = hypergrad.build(_small_config(name))
    assert set(theta0) == set(spec) and jax.tree.leaves(theta0)[0].shape[0] == 2
  bad = _small_config("unrolled")
  bad.method = "bayes"
  with pytest.raises(ValueError, match="method='bayes' is unknown"):
    hypergrad.build(bad)


@pytest.mark.parametrize("name", [
    "online", pytest.param("unrolled", marks=pytest.mark.slow),
    pytest.param("implicit", marks=pytest.mark.slow)])
def test_configs_run(name):
  summary = hypergrad.run_config(_small_config(name))
  assert summary["method"] == name and summary["outer_steps"] == 2
  assert len(summary["val_loss_final"]) == 2 and np.all(np.isfinite(summary["val_loss_final"]))


@pytest.mark.parametrize("module", ["diagnostics", "forward", "implicit", "inner", "online",
                                    "transforms", "unrolled"])
def test_docstring_examples(module):
  import doctest
  import importlib

  result = doctest.testmod(importlib.import_module(f"metaopt.hypergrad.{module}"))
  assert result.failed == 0 and result.attempted > 0
