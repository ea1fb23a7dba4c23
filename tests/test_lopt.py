"""Learned optimizers: PES unbiasedness, truncated-backprop meta-gradients against finite
differences, optax export, meta-training progress, exact resume and the CLI."""

import functools
import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt import lopt as L
from metaopt import tasks
from metaopt._src.population import fast_jit
from metaopt._src.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ an analytic problem
# Inner step x <- x - alpha * h * (x - c) + theta["drift"]; loss_t = 0.5 sum h (x_t - c)^2.
# x_t is affine in the per-step drifts, so the meta-loss is quadratic in theta: its
# Gaussian smoothing has the same gradient, and PES must be unbiased for the exact
# full-horizon gradient, which has a closed form.
H = np.array([1.0, 0.3, 2.0])
C = np.array([1.0, -2.0, 0.5])
X0 = np.array([0.0, 1.0, -1.0])
ALPHA, HORIZON, K = 0.3, 12, 3


def _drift_problem() -> L.InnerProblem:
  h, c, x0 = (jnp.asarray(v, jnp.float32) for v in (H, C, X0))

  def init(key, theta):
    del key, theta
    return {"x": x0}

  def unroll(theta, state, key):
    del key

    def step(x, _):
      loss = 0.5 * jnp.sum(h * jnp.square(x - c))
      return x - ALPHA * h * (x - c) + theta["drift"], loss

    x, losses = jax.lax.scan(step, state["x"], None, length=K)
    return {"x": x}, jnp.mean(losses), {"train_loss": jnp.mean(losses)}

  return L.InnerProblem(init, unroll, HORIZON, K, "drift")


def _closed_form_grad(drift: np.ndarray) -> np.ndarray:
  """d/d drift of sum over truncations of mean_K loss = (1/K) sum_t loss_t."""
  m = 1.0 - ALPHA * H
  x, g = X0.copy(), np.zeros(3)
  for t in range(HORIZON):
    dx = (1.0 - m ** t) / (1.0 - m)  # d x_t / d drift (elementwise, diagonal dynamics)
    g += H * (x - C) * dx / K
    x = m * x + ALPHA * H * C + drift
  return g


def _per_seed_sums(estimator: L.Estimator, theta, n_seeds: int) -> np.ndarray:
  """The sum of an estimator's gradients over one horizon, for each of ``n_seeds`` runs."""

  def run(key):
    k_init, k_run = jax.random.split(key)
    state = estimator.init(k_init, theta)

    def body(state, k):
      g, state, _ = estimator.estimate(theta, state, k)
      return state, g["drift"]

    _, gs = jax.lax.scan(body, state, jax.random.split(k_run, HORIZON // K))
    return gs.sum(0)

  # Chunks of 10k seeds: on XLA:CPU (jax 0.10.2) this kernel vmapped over more than 2**15
  # seeds returned wrong losses for the seeds past 32768.
  batched = jax.jit(jax.vmap(run))
  keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
  return np.concatenate([np.asarray(batched(keys[i:i + 10000]))
                         for i in range(0, n_seeds, 10000)])


def test_pes_and_es_unbiased_on_analytic_problem():
  problem = _drift_problem()
  drift = np.array([0.05, -0.1, 0.02])
  theta = {"drift": jnp.asarray(drift, jnp.float32)}
  true = _closed_form_grad(drift)

  def full(th):  # the full-horizon meta-loss: the sum of the truncations' meta-losses
    state, total = problem.init(None, th), 0.0
    for _ in range(HORIZON // K):
      state, meta, _ = problem.unroll(th, state, None)
      total += meta
    return total

  np.testing.assert_allclose(jax.grad(full)(theta)["drift"], true, rtol=1e-4)

  n = 40000
  est = _per_seed_sums(L.pes(problem, num_tasks=1, sigma=0.05, stagger=False), theta, n)
  mean, sem = est.mean(0), est.std(0) / np.sqrt(n)
  assert np.all(sem > 0) and np.all(sem < 0.05)  # a narrow enough interval to mean something
  np.testing.assert_array_less(np.abs(mean - true), 4.0 * sem)
  # plain ES over the full horizon (mean over truncations): 4 estimates sum to the gradient
  es_sum = _per_seed_sums(L.es(problem, num_tasks=1, sigma=0.05), theta, 20000)
  es_mean, es_sem = es_sum.mean(0), es_sum.std(0) / np.sqrt(len(es_sum))
  np.testing.assert_array_less(np.abs(es_mean - true), 4.0 * es_sem)
  # the same interval rejects truncated backprop, which ignores cross-truncation effects
  tbptt = _per_seed_sums(L.truncated_backprop(problem, 1, stagger=False), theta, 2)[0]
  assert np.any(np.abs(tbptt - true) > 4.0 * sem)


# ------------------------------------------------------------------ truncated backprop vs FD
def _check_meta_gradient(meta_loss, theta, grad, metrics):
  """``metrics['meta_loss']`` is ``meta_loss(theta)``, and ``grad`` matches central
  differences of ``meta_loss`` along a random direction (float64)."""
  np.testing.assert_allclose(meta_loss(theta), metrics["meta_loss"], rtol=1e-12)
  leaves, treedef = jax.tree.flatten(theta)
  v = treedef.unflatten([jax.random.normal(jax.random.PRNGKey(i), x.shape, jnp.float64)
                         for i, x in enumerate(leaves)])
  eps = 1e-6
  shift = lambda s: jax.tree.map(lambda t, d: t + s * eps * d, theta, v)
  fd = (meta_loss(shift(1.0)) - meta_loss(shift(-1.0))) / (2 * eps)
  ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v),
                                           strict=True))
  assert abs(float(ad)) > 1e-6
  np.testing.assert_allclose(float(ad), float(fd), rtol=1e-5)


@functools.cache
def _truncated_backprop_case():
  """The float64 problem both variants below check (built under ``jax.enable_x64``, once):
  the estimator, its inputs, the meta-loss it estimates and that meta-loss's gradient without
  rematerialisation. Shared so that the op-by-op variant does not compile the same reference
  programs again."""
  family = tasks.quadratic_family(dim=4)
  lopt = L.mlp_lopt(hidden_sizes=(4,), init_lr=0.05)
  theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), lopt.init(jax.random.PRNGKey(1)))
  problem = L.make_problem(family, lopt, horizon=6, unroll_length=3, remat=True)
  plain = L.make_problem(family, lopt, horizon=6, unroll_length=3, remat=False)
  est = L.truncated_backprop(problem, num_tasks=2, stagger=False)
  state = est.init(jax.random.PRNGKey(2), theta)
  key = jax.random.PRNGKey(3)
  keys = jax.random.split(jax.random.split(key)[1], 2)  # as estimate splits its key

  def loss(th, prob):
    return jnp.mean(jax.vmap(prob.unroll, (None, 0, 0))(th, state.tasks, keys)[1])

  # references called a few times: compiled without backend optimisation (float64 either way)
  meta_loss = fast_jit(functools.partial(loss, prob=problem))
  g_plain = fast_jit(jax.grad(functools.partial(loss, prob=plain)))(theta)
  return est, theta, state, key, meta_loss, g_plain


class TruncatedBackpropTest(chex.TestCase):
  """Reverse-mode through K vmapped lopt steps equals central differences (float64)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_finite_differences(self):
    with jax.enable_x64(True):
      est, theta, state, key, meta_loss, g_plain = _truncated_backprop_case()
      grad, _, metrics = self.variant(est.estimate)(theta, state, key)
      assert jax.tree.leaves(grad)[0].dtype == jnp.float64
      _check_meta_gradient(meta_loss, theta, grad, metrics)
      # rematerialisation changes memory, not numbers
      chex.assert_trees_all_close(g_plain, grad, rtol=1e-10)


# ------------------------------------------------------------------ Adam controller
def _train_pair(opt, ref, fam, cfg, key, steps=8):
  """Params after ``steps`` steps of ``opt`` and of ``ref`` on the same minibatches, and the
  controller's multipliers."""
  params = fam.init(key, cfg)
  states, ps, mult = [opt.init(params), ref.init(params)], [params, params], []
  for k in jax.random.split(key, steps):
    b = fam.batch(k, cfg, "train")
    for i, o in enumerate((opt, ref)):
      g = jax.grad(fam.loss)(ps[i], cfg, b)
      u, states[i] = o.update(g, states[i], ps[i])
      ps[i] = optax.apply_updates(ps[i], u)
    s0 = states[0] if hasattr(states[0], "multiplier") else states[0][0]
    mult.append(s0.multiplier)
  return ps, jnp.stack(mult)


class AdamControllerTest(chex.TestCase):
  """The untrained controller is optax.adam; meta-gradients match finite differences."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_untrained_controller_is_adam(self):
    fam = tasks.quadratic_family(dim=5)
    key = jax.random.PRNGKey(0)
    cfg = fam.sample(key)
    lopt = L.adam_controller(3e-2, hidden_sizes=(4,), num_steps=8)
    theta = lopt.init(jax.random.PRNGKey(1))
    lr = jnp.asarray(7e-3, jnp.float32)  # the benchmark's form: lr 1 then a traced scale
    unit = L.adam_controller(1.0, hidden_sizes=(4,), num_steps=8)
    pairs = [(lopt.as_optax(theta), optax.adam(3e-2)),
             (optax.chain(unit.as_optax(unit.init(key)), optax.scale(lr)), optax.adam(lr))]
    jitted = "__with_jit" in self._testMethodName
    # jitted: 4 of the 8 steps (the Python loop unrolls into the program: half the compile);
    # op by op all 8
    steps = 4 if jitted else 8
    for opt, ref in pairs:
      (mine, adam), mult = self.variant(
          lambda opt=opt, ref=ref: _train_pair(opt, ref, fam, cfg, key, steps))()
      assert mult.shape[0] == steps
      np.testing.assert_array_equal(mult, 1.0)
      assert not np.allclose(mine["x"], fam.init(key, cfg)["x"])
      if jitted:  # XLA's fusion may round the last bit differently
        chex.assert_trees_all_close(mine, adam, rtol=1e-6, atol=1e-7)
      else:
        chex.assert_trees_all_equal(mine, adam)  # bit for bit

    # a trained (non-zero) head changes the step, within exp(+-max_log_change)
    opt = lopt.as_optax(jax.tree.map(lambda x: x + 0.3, theta))
    params = fam.init(key, cfg)
    g = jax.grad(fam.loss)(params, cfg, fam.batch(key, cfg, "train"))
    u, st = opt.update(g, opt.init(params), params)
    ua, _ = optax.adam(3e-2).update(g, optax.adam(3e-2).init(params), params)
    ratio = float(st.multiplier)
    assert ratio != 1.0 and np.exp(-3.0) <= ratio <= np.exp(3.0)
    np.testing.assert_allclose(u["x"], ratio * ua["x"], rtol=1e-5)

  def test_meta_gradient_matches_finite_differences(self):
    with jax.enable_x64(True):
      family = tasks.quadratic_family(dim=3)
      lopt = L.adam_controller(1.0, hidden_sizes=(3,), num_steps=6)
      theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) + 0.2,
                           lopt.init(jax.random.PRNGKey(1)))
      problem = L.make_problem(family, lopt, horizon=6, unroll_length=3, normalise="log",
                               learning_rate=lambda k: 0.05 * jnp.exp(
                                   jax.random.uniform(k, (), jnp.float64, -0.5, 0.5)))
      est = L.truncated_backprop(problem, num_tasks=2, stagger=False)
      state = est.init(jax.random.PRNGKey(2), theta)
      assert float(jnp.ptp(state.tasks["lr"])) > 0  # tasks get their own base rates
      key = jax.random.PRNGKey(3)
      # called once and three times: compiled without backend optimisation (float64 either way)
      grad, _, metrics = fast_jit(est.estimate)(theta, state, key)
      keys = jax.random.split(jax.random.split(key)[1], 2)

      @fast_jit
      def meta_loss(th):
        return jnp.mean(jax.vmap(problem.unroll, (None, 0, 0))(th, state.tasks, keys)[1])

      _check_meta_gradient(meta_loss, theta, grad, metrics)


def test_progress_controller_is_a_schedule_within_its_bounds():
  """inputs="progress": the multiplier is a function of t / num_steps alone (the same for
  any gradients), bounded by exp(max_log_increase) above and exp(-max_log_change) below;
  untrained it is Adam."""
  lopt = L.adam_controller(1e-2, hidden_sizes=(4,), num_steps=6, inputs="progress",
                           max_log_increase=0.5, max_log_change=2.0)
  theta = lopt.init(jax.random.PRNGKey(0))
  params = {"w": jnp.ones(3)}

  def multipliers(th, scale):
    opt, mults = lopt.as_optax(th), []
    state = opt.init(params)
    for t in range(6):
      g = {"w": scale * jnp.array([1.0, -2.0, 0.5]) * (t + 1)}
      _, state = opt.update(g, state, params)
      mults.append(float(state.multiplier))
    return np.array(mults)

  np.testing.assert_array_equal(multipliers(theta, 1.0), 1.0)
  for shift, bound in ((5.0, np.exp(0.5)), (-5.0, np.exp(-2.0))):
    last = {**theta["net"]["Dense_1"], "bias": theta["net"]["Dense_1"]["bias"] + shift}
    th = {"net": {**theta["net"], "Dense_1": last}}  # saturates the tanh either way
    np.testing.assert_allclose(multipliers(th, 1.0), bound, rtol=1e-3)
  th = jax.tree.map(lambda x: x + 0.4, theta)
  m1, m2 = multipliers(th, 1.0), multipliers(th, 100.0)
  np.testing.assert_allclose(m1, m2, rtol=1e-6)  # gradients do not matter, only t
  assert np.ptp(m1) > 0  # but t does
  assert L.adam_controller(num_steps=4, inputs="progress").config["inputs"] == "progress"


def test_adam_controller_and_problem_bad_input():
  with pytest.raises(ValueError, match="learning_rate"):
    L.adam_controller(0.0)
  with pytest.raises(ValueError, match="num_steps"):
    L.adam_controller(num_steps=0)
  with pytest.raises(ValueError, match="inputs.*all, progress"):
    L.adam_controller(num_steps=4, inputs="grads")
  with pytest.raises(ValueError, match="num_steps"):
    L.adam_controller(inputs="progress")
  with pytest.raises(ValueError, match="max_log_increase"):
    L.adam_controller(num_steps=4, max_log_increase=0.0)
  with pytest.raises(ValueError, match="normalise.*ratio, log"):
    L.make_problem(tasks.quadratic_family(dim=2), L.adam_controller(), 4, 2, normalise="l2")


def test_late_meta_loss_weights_the_end_of_the_horizon():
  """train_late = train_mean x 2t/horizon at each truncation's middle step (weights mean 1)."""
  fam, lopt = tasks.quadratic_family(dim=2), L.adam_controller(0.1, hidden_sizes=(2,))
  theta = lopt.init(jax.random.PRNGKey(0))
  mean = L.make_problem(fam, lopt, horizon=6, unroll_length=2, meta_loss="train_mean")
  late = L.make_problem(fam, lopt, horizon=6, unroll_length=2, meta_loss="train_late")
  key = jax.random.PRNGKey(1)
  s_mean, s_late = mean.init(key, theta), late.init(key, theta)
  weights = []
  unroll_mean, unroll_late = fast_jit(mean.unroll), fast_jit(late.unroll)  # 3 calls each
  for k in jax.random.split(key, 3):
    s_mean, m, _ = unroll_mean(theta, s_mean, k)
    s_late, ml, _ = unroll_late(theta, s_late, k)
    weights.append(float(ml / m))
  np.testing.assert_allclose(weights, [1 / 3, 1.0, 5 / 3], rtol=1e-5)
  assert int(s_late["t"]) == 6


def test_mnist1d_families():
  """MNIST-1D MLP and 1-D CNN families: distinct tasks with finite losses and gradients, and
  the three family lists are disjoint."""
  for name in ("mnist1d_mlp", "mnist1d_cnn"):
    fam = tasks.get_family(name)

    @fast_jit  # one program per family, run twice: compiled without backend optimisation
    def task(k, fam=fam):
      cfg = fam.sample(k)
      params = fam.init(k, cfg)
      loss, g = jax.value_and_grad(fam.loss)(params, cfg, fam.batch(k, cfg, "train"))
      return loss, g, fam.eval_loss(params, cfg, "valid")

    losses = []
    for k in jax.random.split(jax.random.PRNGKey(0), 2):
      loss, g, valid = task(k)
      assert np.isfinite(float(loss)) and all(np.isfinite(x).all() for x in jax.tree.leaves(g))
      assert float(optax.global_norm(g)) > 0
      losses.append(float(valid))
    assert losses[0] != losses[1] and all(0.5 < x < 10 for x in losses), (name, losses)
  fams = (tasks.TRAIN_FAMILIES, tasks.VALID_FAMILIES, tasks.HELDOUT_FAMILIES)
  assert sum(len(f) for f in fams) == len(set().union(*fams))


# ------------------------------------------------------------------ export
class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.tanh(nn.Dense(16)(x)))


@pytest.mark.parametrize("name", ["mlp", "hparam_controller"])
def test_exported_transform_in_optax_chain(tmp_path, name):
  lopt = L.make_lopt(name, hidden_sizes=(8,), init_lr=1e-2)
  theta = jax.tree.map(lambda x: x + 0.01, lopt.init(jax.random.PRNGKey(0)))
  path = L.save(str(tmp_path / name), lopt, theta)
  lopt2, theta2, _ = L.load_meta_params(path)
  assert lopt2.name == name and dict(lopt2.config) == dict(lopt.config)
  chex.assert_trees_all_equal(theta2, theta)

  data = tasks.load_dataset("wine")
  x, y = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
  model = _Net()
  params = model.init(jax.random.PRNGKey(1), x[:2])
  opt = optax.chain(optax.clip_by_global_norm(0.5), L.load(path))
  loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, x), y).mean()

  @jax.jit
  def step(params, state):
    loss, g = jax.value_and_grad(loss_fn)(params)
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state, loss

  state = opt.init(params)
  losses = []
  for _ in range(60):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
  # the chain feeds the clipped gradient to the learned optimizer (one fast_jit program:
  # op by op, the learned optimizer's network costs ~10 s of eager dispatch)
  inner = lopt2.as_optax(theta2)
  chain = optax.chain(optax.clip_by_global_norm(1e-3), inner)

  @fast_jit
  def chained_and_manual(params):
    g = jax.grad(loss_fn)(params)
    clipped, _ = optax.clip_by_global_norm(1e-3).update(g, optax.EmptyState())
    u_chain, _ = chain.update(g, chain.init(params), params)
    u_manual, _ = inner.update(clipped, inner.init(params), params)
    return g, u_chain, u_manual

  g, u_chain, u_manual = chained_and_manual(params)
  chex.assert_trees_all_close(u_chain, u_manual, rtol=1e-6)
  with pytest.raises(ValueError, match="needs params"):
    inner.update(g, inner.init(params))


def test_load_missing_path_names_the_field(tmp_path):
  with pytest.raises(ValueError, match="meta_params"):
    L.load(str(tmp_path / "nothing"))


def test_shipped_meta_params_load():
  lopt, theta, extra = L.load_meta_params(os.path.join(ROOT, "benchmarks", "lopt_mlp_quick"))
  assert lopt.name == "mlp" and extra["benchmark"] == "benchmarks/learned_opt.py"
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(theta))
  assert float(theta["log_lr"]) != pytest.approx(np.log(lopt.config["init_lr"]))


# ------------------------------------------------------------------ meta-training
# slow (~36 s on CI; a quality check, not a contract): by default the meta-training loop
# (meta_trainer's step, history, checkpoints) runs in test_meta_training_resumes_exactly, the
# truncated-backprop estimator it uses here is checked against finite differences in
# TruncatedBackpropTest, and a meta-trained optimizer's as_optax in
# test_exported_transform_in_optax_chain
@pytest.mark.slow
def test_meta_trained_optimizer_beats_its_initialisation():
  lopt = L.mlp_lopt(hidden_sizes=(8,), init_lr=3e-4)
  fams = [tasks.get_family("quadratic"), tasks.get_family("linear_regression")]
  problems = [L.make_problem(f, lopt, horizon=20, unroll_length=5) for f in fams]
  trainer = L.meta_trainer(lopt, problems, "truncated", num_tasks=4, meta_lr=3e-2, clip=1.0)
  state, history = L.meta_train(trainer, jax.random.PRNGKey(0), 40, log_every=10)
  assert [h["step"] for h in history] == [10, 20, 30, 40]
  assert history[-1]["meta_loss"] < history[0]["meta_loss"]
  theta0 = lopt.init(jax.random.PRNGKey(0))
  assert float(state.theta["log_lr"]) > float(theta0["log_lr"])

  for fam in fams:  # unseen tasks of the meta-training families, both optimizers at once
    final = jax.jit(jax.vmap(lambda th, key, fam=fam: L.fit(
        fam, lopt.as_optax(th), key, 20, 20)["valid_loss"][-1], (0, None)))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), state.theta, theta0)
    for seed in (100, 101):
      trained, untrained = np.asarray(final(both, jax.random.PRNGKey(seed)))
      assert trained < untrained, (fam.name, seed, trained, untrained)


def test_meta_training_resumes_exactly(tmp_path):
  lopt = L.hparam_controller(hidden_sizes=(4,))
  problems = [L.make_problem(tasks.get_family("quadratic"), lopt, horizon=6, unroll_length=3)]
  trainer = L.meta_trainer(lopt, problems, "pes", num_tasks=3, sigma=0.05, meta_lr=1e-2)
  # 12 steps and 3 inits in all: compiled without backend optimisation (fast_jit; the init
  # was op by op), as resuming is what this test checks (6.3 + 15.0 -> 3.0 + 8.7 s CPU)
  trainer = trainer._replace(init=fast_jit(trainer.init), step=fast_jit(trainer.step))
  key = jax.random.PRNGKey(7)
  straight, hist = L.meta_train(trainer, key, 6, checkpoint_dir=str(tmp_path / "a"),
                                checkpoint_every=3)
  first, _ = L.meta_train(trainer, key, 3, checkpoint_dir=str(tmp_path / "b"),
                          checkpoint_every=3)
  assert int(first.step) == 3
  resumed, hist2 = L.meta_train(trainer, key, 6, checkpoint_dir=str(tmp_path / "b"),
                                checkpoint_every=3)
  assert [h["step"] for h in hist2] == [4, 5, 6]
  assert int(resumed.step) == 6
  assert isinstance(resumed.estimators[0], L.PESState)
  chex.assert_trees_all_equal(resumed, straight)
  assert not np.allclose(np.asarray(straight.estimators[0].accum["log_lr"]), 0.0)
  for a, b in zip(hist[3:], hist2, strict=True):
    assert a["meta_loss"] == b["meta_loss"]


def test_task_family_vmaps_like_a_loop():
  fam = tasks.get_family("digits_mlp")
  keys = jax.random.split(jax.random.PRNGKey(0), 3)

  def one(key):
    k1, k2, k3 = jax.random.split(key, 3)
    cfg = fam.sample(k1)
    return fam.loss(fam.init(k2, cfg), cfg, fam.batch(k3, cfg, "train"))

  # called once and three times: compiled without backend optimisation (fast_jit)
  batched = fast_jit(jax.vmap(one))(keys)
  one_jit = fast_jit(one)
  looped = jnp.stack([one_jit(k) for k in keys])
  np.testing.assert_allclose(batched, looped, rtol=1e-5)
  assert len(set(np.round(np.asarray(batched), 5))) == 3  # tasks differ
  with pytest.raises(ValueError, match="split"):
    fam.batch(keys[0], fam.sample(keys[0]), "test")
  with pytest.raises(ValueError, match="allowed"):
    tasks.get_family("imagenet_resnet")


@pytest.mark.parametrize("field,value,match", [
    ("estimator", "sgd", "'estimator'.*truncated, pes, es"),
    ("meta_loss", "best", "'meta_loss'.*train_mean"),
    ("families", ("digits_mlp", "nope"), "'families'"),
    ("unroll_length", 7, "unroll_length"),
    ("mode", "train", "'mode'.*meta_train, apply"),
    ("lopt_name", "velo", "'lopt_name'.*mlp"),
])
def test_bad_config_is_one_value_error(field, value, match):
  from metaopt.configs import lopt_meta_train
  cfg = lopt_meta_train.get_config().to_dict()
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    L.validate(cfg)


def test_apply_config_without_meta_params(tmp_path):
  from metaopt.configs import lopt_apply
  cfg = lopt_apply.get_config().to_dict()
  cfg["meta_params"] = str(tmp_path / "missing")
  with pytest.raises(ValueError, match="'meta_params'.*lopt_meta_train"):
    L.run_config(cfg, Store(f"sqlite:///{tmp_path}/x.db"), progress=False)


# ------------------------------------------------------------------ CLI
def _cli(*args):
  out = subprocess.run([sys.executable, "run.py", "run", *args, "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=os.environ.copy())
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout[out.stdout.index("{"):])


@pytest.mark.slow  # end-to-end CLI run; the CLI itself is covered by tests/test_cli.py
def test_cli_meta_train_then_apply(tmp_path):
  db = f"sqlite:///{tmp_path}/x.db"
  mp = str(tmp_path / "mp")
  train = ("--config", "configs/lopt_meta_train.py", "--store", db,
           f"--config.checkpoint_dir={tmp_path}/ckpt", f"--config.output={mp}",
           "--config.families=('quadratic',)", "--config.outer_steps=6",
           "--config.log_every=2", "--config.checkpoint_every=3")
  first = _cli(*train)
  assert first["outer_steps"] == 6 and not first["resumed"]
  again = _cli(*train)  # same checkpoint dir: resumed, nothing left to do
  assert again["resumed"] and again["steps_this_run"] == 0
  assert again["final_meta_loss"] == first["final_meta_loss"]
  applied = _cli("--config", "configs/lopt_apply.py", "--store", db,
                 f"--config.meta_params={mp}", "--config.num_steps=40",
                 "--config.eval_every=20")
  assert np.isfinite(applied["learned"]["final_valid_loss"])
  store = Store(db)
  trial = store.trials(store.load_study("lopt_meta_train").id)[0]
  assert trial.status == "complete" and [m["epoch"] for m in trial.metrics] == [2, 4, 6]
  assert "quadratic/meta_loss" in trial.metrics[0]
  curves = store.trials(store.load_study("lopt_apply").id)
  assert [t.params["optimizer"] for t in curves] == ["learned", "adam"]
  assert all(len(t.metrics) == 2 and t.status == "complete" for t in curves)
