"""Gradient-based NAS: relaxation, discretisation, encodings, second-order gradients, GDAS,
collapse safeguards, hardware costs, config validation and the CLI.

Tiny supernets (NB201-style mini cell, one stage, 4 channels) on 8x8 digits keep this file
to a few compilations.
"""

import json
import os
import pathlib
import sqlite3
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_nas import tiny_nas_config

import metaopt
from metaopt import nas
from metaopt._src import compile_cache
from metaopt._src.population import fast_jit
from metaopt.spaces import NB201_MINI_OPS, Genotype, count_ops, darts_space, discretize, nb201_space
from metaopt.tasks import load_dataset
from metaopt.tasks._src.data import Dataset, Split
from metaopt.tasks._src.nas_models import MixedOp, Network, Op, count_params

REPO = pathlib.Path(__file__).resolve().parents[1]
MINI = nb201_space(NB201_MINI_OPS)
SPACES = [darts_space(), nb201_space(), MINI]


def tiny_net(space=MINI, **kw):
  return Network(space, features=4, n_cells=1, stages=1, num_classes=10, **kw)


@pytest.fixture(scope="module")
def digits():
  d = load_dataset("digits")
  cut = lambda s, n: Split(s.x[:n], s.y[:n])
  return Dataset(d.name, d.tfds_name, d.version, d.checksum, d.num_classes,
                 cut(d.train, 256), cut(d.valid, 128), cut(d.test, 128))


@pytest.fixture(scope="module")
def digits_full():
  return load_dataset("digits")


def _batch(split, n=16, start=0):
  return jnp.asarray(split.x[start:start + n]), jnp.asarray(split.y[start:start + n])


# ------------------------------------------------------------------ relaxation
class MixingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_mixed_op_weights_are_a_distribution(self):
    alpha = MINI.init_logits(jax.random.key(0), scale=3.0)
    for method in nas.METHODS:
      s = nas.SearchSettings(method=method, total_steps=10)
      mix = self.variant(nas.make_mixing(s))
      w = mix(alpha, jax.random.key(1), jnp.asarray(3))["normal"]
      chex.assert_shape(w, (MINI.num_edges, MINI.num_ops))
      assert jnp.all(w >= -1e-6), method
      np.testing.assert_allclose(jnp.sum(w, -1), 1.0, atol=1e-5, err_msg=method)

  @chex.variants(with_jit=True, without_jit=True)
  def test_mixed_op_is_the_weighted_sum_of_its_ops(self):
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    m = MixedOp(MINI.ops, 4)
    w = jax.nn.softmax(jnp.array([0.3, -1.0, 2.0]))
    p = m.init(jax.random.key(1), x, w)
    got = self.variant(m.apply)(p, x, w)
    want = sum(w[k] * Op(o, 4).apply({"params": p["params"].get(o, {})}, x)
               for k, o in enumerate(MINI.ops))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gdas_sample_is_one_hot_forward_with_nonzero_gradient(digits):
  s = nas.SearchSettings(method="gdas", total_steps=10)
  mix = nas.make_mixing(s)
  alpha = MINI.init_logits(jax.random.key(0), 1.0)
  w = mix(alpha, jax.random.key(1), jnp.asarray(0))["normal"]
  assert jnp.all((jnp.abs(w) < 1e-6) | (jnp.abs(w - 1) < 1e-6))
  np.testing.assert_array_equal(jnp.sum(jnp.round(w), -1), 1.0)
  net = tiny_net()
  x, y = _batch(digits.train)
  p = fast_jit(net.init)(jax.random.key(2), x, {"normal": w})
  hard = {"normal": jax.nn.one_hot(jnp.argmax(w, -1), MINI.num_ops)}
  apply = fast_jit(net.apply)  # one program for both weightings
  np.testing.assert_allclose(apply(p, x, {"normal": w}), apply(p, x, hard), atol=1e-5)

  def loss(a):
    logits = net.apply(p, x, mix(a, jax.random.key(1), jnp.asarray(0)))
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1))

  g = fast_jit(jax.grad(loss))(alpha)["normal"]
  assert jnp.all(jnp.isfinite(g)) and float(jnp.linalg.norm(g)) > 1e-6


# ------------------------------------------------------------------ genotypes
@pytest.mark.parametrize("space", SPACES, ids=["darts", "nb201", "nb201_mini"])
def test_discretize_is_consistent_with_the_logits(space):
  rng = np.random.default_rng(0)
  for i in range(20):
    logits = space.init_logits(jax.random.key(i), 2.0)
    g = discretize(space, logits)
    space.validate(g)
    assert discretize(space, {c: v + 5.0 for c, v in logits.items()}) == g  # softmax shift
    for c in space.cell_types:
      lg = np.asarray(logits[c])
      for op, s, t in getattr(g, c):
        row = space.edges.index((s, t))
        real = [k for k, o in enumerate(space.ops) if o != "none" or space.kind == "nb201"]
        assert space.op_index(op) == max(real, key=lambda k: lg[row, k])
      if space.kind == "darts":  # kept edges beat the dropped ones of their node
        for t in range(2, space.n_nodes + 2):
          rows = [r for r, (_, d) in enumerate(space.edges) if d == t]
          probs = np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)  # DARTS ranks by weight
          strength = {r: np.max(np.delete(probs[r], 0)) for r in rows}
          kept = {space.edges.index((s, d)) for _, s, d in getattr(g, c) if d == t}
          assert min(strength[r] for r in kept) >= max(
              [strength[r] for r in rows if r not in kept], default=-np.inf)
    g2 = space.random(rng)  # a genotype's own one-hot logits select it
    assert discretize(space, {c: 10.0 * w for c, w in space.to_weights(g2).items()}) == g2


def test_a_search_never_derives_a_cell_that_computes_nothing():
  from metaopt._src.nas.api import derive
  lg = np.asarray(MINI.init_logits(jax.random.key(0), 0.1)["normal"])
  healthy = {"normal": lg.copy()}
  healthy["normal"][:, MINI.op_index("nor_conv_3x3")] += 3.0
  assert derive(MINI, healthy) == discretize(MINI, healthy)  # the argmax cell when it works
  dead = {"normal": lg.copy()}
  dead["normal"][:, MINI.op_index("none")] += 3.0  # none wins every edge: output is zero
  assert all(o == "none" for o, _, _ in discretize(MINI, dead).normal)
  g = derive(MINI, dead)
  masked = np.delete(dead["normal"], MINI.op_index("none"), axis=1)
  real = [o for o in MINI.ops if o != "none"]
  assert [o for o, _, _ in g.normal] == [real[k] for k in masked.argmax(1)]


@pytest.mark.parametrize("space", SPACES, ids=["darts", "nb201", "nb201_mini"])
def test_genotypes_round_trip_through_the_unit_cube(space):
  rng = np.random.default_rng(1)
  cube = space.cube()
  for _ in range(30):
    g = space.random(rng)
    u = space.encode(g)
    assert u.shape == (cube.dim,) and np.all((u > 0) & (u < 1))
    assert space.decode(u) == g
    assert Genotype.from_json(g.to_json()) == g
  if space.kind != "darts":
    return
  # every point an evolution child can be decodes to a valid genotype of the space
  re = metaopt.regularized_evolution(cube.dim, 4, 2, levels=space.levels())
  ask, tell = jax.jit(re.ask, static_argnums=2), jax.jit(re.tell)
  st = re.init(jax.random.key(0))
  st, u = ask(st, jax.random.key(1), 4)
  st = tell(st, u, jnp.arange(4.0), jnp.zeros(4, jnp.int32))
  _, kids = ask(st, jax.random.key(2), 8)
  for k in np.asarray(kids):
    space.validate(space.decode(k))
    assert space.decode(space.encode(space.decode(k))) == space.decode(k)


def test_nb201_mini_space_has_729_cells():
  cells = MINI.enumerate()
  assert len(cells) == 729 and len(set(cells)) == 729
  assert [MINI.index(g) for g in cells[:5]] == list(range(5))


def test_canonical_form_drops_ops_that_cannot_reach_the_output():
  cells = {str(c): c for c in MINI.enumerate()}
  # node 1 receives nothing, so the conv 1->3 only ever sees zeros; node 2's conv feeds 3
  a = cells["none~0>1|nor_conv_3x3~0>2|none~1>2|skip_connect~0>3|nor_conv_3x3~1>3|"
            "nor_conv_3x3~2>3"]
  assert str(nas.canonical(MINI, a)) == ("none~0>1|nor_conv_3x3~0>2|none~1>2|skip_connect~0>3|"
                                         "none~1>3|nor_conv_3x3~2>3")
  # node 2 reaches node 3 through nothing: 0->2 and 1->2 are dead
  b = cells["skip_connect~0>1|nor_conv_3x3~0>2|skip_connect~1>2|nor_conv_3x3~0>3|"
            "skip_connect~1>3|none~2>3"]
  assert str(nas.canonical(MINI, b)) == ("skip_connect~0>1|none~0>2|none~1>2|nor_conv_3x3~0>3|"
                                         "skip_connect~1>3|none~2>3")
  canon = {nas.canonical(MINI, c) for c in cells.values()}
  assert len(canon) == 291
  assert all(nas.canonical(MINI, c) == c for c in canon)  # idempotent


def test_cells_with_one_canonical_form_train_to_the_same_numbers(digits):
  cells = {str(c): c for c in MINI.enumerate()}
  same = [cells["none~0>1|nor_conv_3x3~0>2|none~1>2|skip_connect~0>3|nor_conv_3x3~1>3|"
                "nor_conv_3x3~2>3"],
          cells["none~0>1|nor_conv_3x3~0>2|none~1>2|skip_connect~0>3|none~1>3|"
                "nor_conv_3x3~2>3"]]
  other = cells["nor_conv_3x3~0>1|nor_conv_3x3~0>2|none~1>2|skip_connect~0>3|"
                "nor_conv_3x3~1>3|nor_conv_3x3~2>3"]
  assert nas.canonical(MINI, same[0]) == nas.canonical(MINI, same[1]) != \
      nas.canonical(MINI, other)
  net = tiny_net()
  w = {c: jnp.stack([MINI.to_weights(g)[c] for g in [*same, other]]) for c in MINI.cell_types}
  r = nas.train_networks(net, digits, [0, 0, 0], w, epochs=2, batch_size=32)
  np.testing.assert_array_equal(r["train_loss"][0], r["train_loss"][1])
  np.testing.assert_array_equal(r["valid_acc"][0], r["valid_acc"][1])
  assert not np.array_equal(r["train_loss"][0], r["train_loss"][2])
  # trained again in this process: the same settings compile nothing and give the same
  # numbers (another learning rate: the slow test below)
  before = compile_cache.compiles()
  again = nas.train_networks(net, digits, [0, 0, 0], w, epochs=2, batch_size=32, test=False)
  assert compile_cache.compiles() == before, compile_cache.compiles() - before
  np.testing.assert_array_equal(again["train_loss"], r["train_loss"])


# slow (a second training program compiled, ~1/3 of the test above); by default a closed-over
# optax learning rate tells computations apart in
# tests/test_compile_cache.py::test_fingerprints_tell_computations_apart
@pytest.mark.slow
def test_another_learning_rate_trains_networks_with_its_own_program(digits):
  """Another learning rate (held in optax's closures) compiles its own training program."""
  net = tiny_net()
  w = {c: jnp.stack([MINI.to_weights(g)[c] for g in MINI.enumerate()[:2]])
       for c in MINI.cell_types}
  r = nas.train_networks(net, digits, [0, 0], w, epochs=2, batch_size=32, test=False)
  before = compile_cache.compiles()
  other_lr = nas.train_networks(net, digits, [0, 0], w, epochs=2, batch_size=32, lr=1e-2,
                                test=False)
  assert compile_cache.compiles()["epoch"] > before["epoch"]
  assert not np.array_equal(other_lr["train_loss"][0], r["train_loss"][0])


def test_shipped_tabular_benchmark_and_searchers_on_it():
  table = nas.load_table()
  assert table.meta["provenance"]["command"].startswith("python -m metaopt.nas.tabular")
  cells, valid, test = table.arrays()
  assert len(table) == len(cells) == 729
  by = {}
  for g in cells:
    row = table.query(g)
    assert row["trained_as"] == MINI.index(nas.canonical(MINI, g))
    by.setdefault(row["trained_as"], set()).add((row["valid_acc"], row["test_acc"]))
  assert all(len(v) == 1 for v in by.values())  # one training per distinct cell
  assert 0.05 < valid.min() < valid.max() <= 1.0 and np.ptp(test) > 0.1  # cells differ
  dim = len(MINI.encode(cells[0]))
  out = nas.simulate(metaopt.random_search(dim), table, 60, jax.random.key(0), batch=10)
  traj = np.asarray(out["trajectory"])
  assert len(traj) == 60 and np.all(np.diff(traj) >= 0)
  assert traj[-1] == out["best"]["valid_acc"] >= np.quantile(valid, 0.8)


# ------------------------------------------------------------------ second order
# programs the test calls a few times compile with fast_jit (no backend optimisation): LLVM
# optimisation would cost more compile time than it saves in runs (float64 either way)


# the default hessian ("exact") by default; DARTS's finite-difference product (a second
# float64 arch_grad program, ~half the test's ~28 CI s) in the slow run
@pytest.mark.parametrize("hessian", [
    "exact", pytest.param("finite_difference", marks=pytest.mark.slow)])
def test_second_order_arch_gradient_matches_finite_differences(digits, hessian):
  with jax.enable_x64(True):
    net = tiny_net()
    bt, bv = _batch(digits.train, 8), _batch(digits.valid, 8)
    bt = (bt[0].astype(jnp.float64), bt[1])
    bv = (bv[0].astype(jnp.float64), bv[1])
    xi, wd = 0.1, 1e-3
    f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    # DARTS's central difference with a step small enough for float64
    s = nas.SearchSettings(order=2, hessian=hessian, xi=xi, w_wd=wd, w_clip=0.0, fd_eps=1e-6)
    prog = nas.make_search(net, s, bt[0], nas.make_mixing(s))
    state = fast_jit(prog.init)(jax.random.key(0))
    state = state._replace(params=f64(state.params), hparams=f64(state.hparams),
                           alpha=f64(MINI.init_logits(jax.random.key(3), 0.5)))

    def xent(params, alpha, batch):
      logits = net.apply(params, batch[0], {"normal": jax.nn.softmax(alpha["normal"], -1)})
      return jnp.mean(jax.nn.logsumexp(logits, -1) -
                      jnp.take_along_axis(logits, batch[1][:, None], 1)[:, 0])

    def unrolled(alpha):  # L_val(w - xi (dL_train/dw + wd w), alpha)
      g = jax.grad(xent)(state.params, alpha, bt)
      w1 = jax.tree.map(lambda p, gi: p - xi * (gi + wd * p), state.params, g)
      return xent(w1, alpha, bv)

    g = fast_jit(prog.arch_grad)(state, bt, bv, jax.random.key(5))["normal"]
    unrolled = fast_jit(unrolled)
    g_first = fast_jit(jax.grad(lambda a: xent(state.params, a, bv)))(state.alpha)["normal"]
    eps = 1e-5
    tol = (dict(rtol=1e-6, atol=1e-10) if hessian == "exact" else dict(rtol=1e-5, atol=1e-9))
    for i in range(3):
      v = jax.random.normal(jax.random.key(10 + i), g.shape, jnp.float64)
      a = state.alpha["normal"]
      fd = (unrolled({"normal": a + eps * v}) - unrolled({"normal": a - eps * v})) / (2 * eps)
      np.testing.assert_allclose(jnp.vdot(g, v), fd, **tol)
    # the second-order term is really there: the unrolled gradient is not the first-order one
    assert float(jnp.linalg.norm(g - g_first)) > 1e-4 * float(jnp.linalg.norm(g_first))


# ------------------------------------------------------------------ safeguards
def _search(digits, enabled=True, **kw):
  s = nas.SearchSettings(total_steps=64, warmup_steps=32, **kw)
  prog, _ = nas.make_program(MINI, tiny_net(), s, digits, 64)
  # the eigenvalue rule is left out here (tested on its own below)
  return nas.search(prog, digits, epochs=4, batch_size=64, seed=0, safeguard=nas.SafeguardSettings(
      enabled=enabled, max_skip=2, eig_iters=5, eig_warmup=4))


# slow (~52 s in CI: two supernet searches compiled). By default: the skip-count and
# eigenvalue rules and their roll-back (test_skip_count_rule_calls_a_collapse_and_rolls_back,
# test_eigenvalue_early_stop_rule) and the search program itself
# (test_warmup_steps_freeze_the_architecture_then_release_it)
@pytest.mark.slow
def test_skip_collapse_safeguard_fires_on_a_collapsing_run_only(digits_full):
  healthy = _search(digits_full)
  # A constructed collapse: a negative skip penalty rewards skip_connect on every edge.
  collapsing = _search(digits_full, skip_penalty=-200.0, a_lr=0.05)
  assert not healthy["collapsed"] and healthy["collapse_reason"] is None
  assert len(healthy["history"]) == 4 and healthy["history"][-1]["skip_count"] <= 2
  assert collapsing["collapsed"] and "skip collapse" in collapsing["collapse_reason"]
  assert len(collapsing["history"]) < 4  # stopped early
  assert collapsing["history"][-1]["skip_count"] > 2
  assert count_ops(collapsing["genotype"]) <= 2  # rolled back to the last healthy epoch
  # reporting only: every epoch runs, and the safeguarded outcome is the stopped search's;
  # the same program and data as `collapsing`, so nothing compiles again (compile_cache)
  before = compile_cache.compiles()
  full = _search(digits_full, enabled=False, skip_penalty=-200.0, a_lr=0.05)
  assert compile_cache.compiles() == before, compile_cache.compiles() - before
  assert len(full["history"]) == len(full["genotypes"]) == 4 and full["collapsed"]
  assert full["safeguard_epoch"] == collapsing["safeguard_epoch"] == collapsing["stopped_epoch"]
  assert full["safeguard_genotype"] == collapsing["genotype"] != full["genotype"]
  assert full["genotypes"][-1] == full["genotype"]
  assert 0 < full["safeguard_seconds"] < full["seconds"] == pytest.approx(
      sum(h["seconds"] for h in full["history"]))
  assert healthy["safeguard_epoch"] is None and healthy["safeguard_genotype"] == healthy[
      "genotype"]
  for h in healthy["history"]:
    assert np.isfinite(h["eigenvalue"]) and h["eigenvalue"] > 0
    assert 0 <= h["entropy"] <= np.log(MINI.num_ops) + 1e-6


def test_warmup_steps_freeze_the_architecture_then_release_it(digits):
  s = nas.SearchSettings(total_steps=4, warmup_steps=1, a_lr=0.1)
  prog, _ = nas.make_program(MINI, tiny_net(), s, digits, 16)
  step = fast_jit(prog.step)  # two calls: compiled without backend optimisation
  st0 = fast_jit(prog.init)(jax.random.key(0))
  b = _batch(digits.train), _batch(digits.valid)
  st1, tel1 = step(st0, *b, jax.random.key(1))  # warm-up: weights move, alpha does not
  np.testing.assert_array_equal(st1.alpha["normal"], st0.alpha["normal"])
  assert float(tel1["arch_grad_norm"]) == 0.0 and np.isfinite(float(tel1["val_loss"]))
  assert float(tree_norm_diff(st1.params, st0.params)) > 0
  st2, tel2 = step(st1, *b, jax.random.key(2))  # after it: the architecture step is taken
  assert float(tel2["arch_grad_norm"]) > 0
  assert float(jnp.abs(st2.alpha["normal"] - st1.alpha["normal"]).max()) > 1e-3


def tree_norm_diff(a, b):
  return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def test_skip_count_rule_calls_a_collapse_and_rolls_back():
  """The cheap default check of the skip rule test_skip_collapse_safeguard_... runs end to
  end: more than ``max_skip`` skip_connect ops in the newest epoch is a collapse, rolled back
  one epoch; at the bound it is healthy, and the skip rule wins over the eigenvalue rule."""
  sg = nas.SafeguardSettings(max_skip=2, eig_window=1, eig_warmup=0)
  ok = [{"skip_count": s, "eigenvalue": 1.0} for s in (0, 1, 2)]
  assert nas.check(ok, sg) == (None, 0)
  assert nas.check([], sg) == (None, 0)
  why, back = nas.check([*ok, {"skip_count": 3, "eigenvalue": 1.0}], sg)
  assert why.startswith("skip collapse") and "3 skip_connect" in why and "epoch 3" in why
  assert back == 1
  why, back = nas.check([*ok, {"skip_count": 5, "eigenvalue": 100.0}], sg)
  assert "skip collapse" in why and back == 1  # not the eigenvalue's collapse
  why, back = nas.check([*ok, {"skip_count": 0, "eigenvalue": 100.0}], sg)
  assert "eigenvalue" in why and back == 1


def test_eigenvalue_early_stop_rule():
  sg = nas.SafeguardSettings(eig_window=2, eig_ratio=0.75)
  flat = [{"skip_count": 0, "eigenvalue": e} for e in (1.0, 1.1, 1.0, 1.05, 1.1)]
  growing = [{"skip_count": 0, "eigenvalue": e} for e in (1.0, 1.1, 1.6, 2.0)]
  assert nas.check(flat, sg) == (None, 0)
  why, back = nas.check(growing, sg)
  assert "eigenvalue" in why and back == 2


def test_dominant_eigenvalue_of_a_quadratic():
  a = jnp.diag(jnp.array([3.0, -1.0, 0.5]))
  lam = nas.dominant_eigenvalue(lambda x: 0.5 * x["v"] @ a @ x["v"], {"v": jnp.ones(3)},
                                jax.random.key(0), iters=50)
  np.testing.assert_allclose(lam, 3.0, rtol=1e-3)


# ------------------------------------------------------------------ hardware
def test_param_cost_table_matches_derived_networks(digits):
  net = tiny_net()
  x = jnp.asarray(digits.train.x[:2])
  p = net.init(jax.random.key(0), x, MINI.to_weights(MINI.enumerate()[0]))
  tab = nas.cost_tables(net, p, digits.input_shape)
  rng = np.random.default_rng(0)
  gs = [MINI.random(rng) for _ in range(4)]
  counts = [count_params(tiny_net(genotype=g).init(jax.random.key(0), x)) for g in gs]
  costs = [nas.genotype_cost(MINI, g, tab["params"]) for g in gs]
  np.testing.assert_allclose(np.diff(costs), np.diff(counts))
  probs = {"normal": jax.nn.softmax(MINI.init_logits(jax.random.key(1))["normal"], -1)}
  g = jax.grad(lambda q: nas.expected_cost(q, tab["flops"]))(probs)["normal"]
  assert float(jnp.max(g)) > 0  # convolutions cost, skips do not




# slow (~39 s in CI: two supernet searches compiled); by default the cost tables and the
# expected cost's gradient the penalty adds (test_param_cost_table_matches_derived_networks)
@pytest.mark.slow
def test_flops_penalty_moves_the_search_to_the_cost_side(digits):
  """The cheaper variant of the end-to-end test below: the same search (one epoch of
  the tiny supernet) with and without the FLOPs penalty of configs/darts_hw_shapes.py: with
  it, the expected FLOPs the search sees (mean over the epoch's steps) fall below the
  unpenalised search's, and the derived cell costs no more."""
  out = {}
  for pen in (0.0, 0.1):
    s = nas.SearchSettings(a_lr=0.01, hw_metric="flops", hw_penalty=pen, total_steps=4)
    prog, tables = nas.make_program(MINI, tiny_net(), s, digits, 64)
    out[pen] = nas.search(prog, digits, epochs=1, batch_size=64, seed=0,
                          safeguard=nas.SafeguardSettings(enabled=False, eig_iters=2))
  flops = lambda r: nas.genotype_cost(MINI, r["genotype"], tables["flops"])
  assert out[0.1]["history"][0]["expected_cost"] < out[0.0]["history"][0]["expected_cost"]
  assert flops(out[0.1]) <= flops(out[0.0]), (out[0.1]["genotype"], out[0.0]["genotype"])


@pytest.mark.slow  # two NAS runs end to end (~40 s of CPU); the variant above is the cheap one
def test_hardware_aware_config_derives_a_cell_on_the_cost_side():
  """configs/darts_hw_shapes.py end to end as shipped (safeguards and black-box fallback on;
  tiny supernet, one search epoch, small budgets) against the same config with the penalty
  off: the penalty lowers the expected FLOPs the search sees, and the derived cell costs
  fewer FLOPs. On a supernet this small the accuracy signal is weak and the penalty turns
  every edge to skip_connect within the epoch: the skip safeguard then calls a collapse,
  NSGA-II (accuracy vs FLOPs) takes over and the cell it returns is the one with the best
  penalised objective, not the most accurate one."""
  outs, stores = {}, {}
  for pen in (0.0, 0.1):
    cfg = tiny_nas_config("configs/darts_hw_shapes.py", name=f"hw{pen}", search={"epochs": 1},
                          retrain={"seeds": int(pen > 0), "epochs": 1}, hardware={"penalty": pen},
                          fallback={"trials": 4, "population": 4, "epochs": 1})
    stores[pen] = metaopt.Store("sqlite://")
    outs[pen] = nas.run_config(cfg, stores[pen], progress=False)
  hw, plain = outs[0.1], outs[0.0]
  why = (f"penalised: {hw['genotype']} ({hw['expected_flops']:.0f} FLOPs; collapsed: "
         f"{hw['collapse_reason']}; fallback: {hw['fallback'] and hw['fallback']['selection']})"
         f" vs unpenalised: {plain['genotype']} ({plain['expected_flops']:.0f} FLOPs)")
  assert hw["expected_flops"] < plain["expected_flops"], why
  # the gradient search itself saw the penalty: same start, lower expected cost
  cost = {}
  for p, st in stores.items():
    (search,) = [t for t in st.trials(st.load_study(None).id) if t.params["role"] == "search"]
    cost[p] = search.metrics[0]["expected_cost"]
  assert cost[0.1] < cost[0.0], cost
  if hw["untrusted"] is not None:  # collapsed: the fallback kept the config's trade-off
    assert hw["fallback"]["selection"] == "penalised flops", why
    assert "collapse" in hw["collapse_reason"], why
  assert len(hw["test_acc"]) == 1 and hw["retrain_seconds"] > 0  # retrained, tested once

# ------------------------------------------------------------------ configs, CLI
@pytest.mark.parametrize("field,value,allowed", [
    ("method", "enas", "darts"), ("space", "nb301", "nb201_mini"),
    ("dataset", "cifar", "shapes"), ("order", 3, "1, 2"), ("hessian", "bfgs", "exact"),
    ("fallback", {"searcher": "annealing"}, "evolution"),
    ("fallback", {"trials": 0}, ">= 1")])
def test_bad_config_raises_one_value_error(field, value, allowed):
  from metaopt.configs import darts_shapes
  cfg = darts_shapes.get_config().to_dict()
  cfg[field] = value
  with pytest.raises(ValueError, match=field) as e:
    nas.parse_config(cfg)
  assert allowed in str(e.value)


@pytest.mark.slow  # end-to-end CLI run; the CLI itself is covered by tests/test_cli.py
def test_cli_runs_darts_config_and_records_it(tmp_path):
  db = tmp_path / "x.db"
  cmd = [sys.executable, "run.py", "run", "--config", "configs/darts_shapes.py",
         "--store", f"sqlite:///{db}", "--config.search.epochs=2",
         "--config.retrain.epochs=1", "--config.retrain.seeds=2", "--config.dataset=digits",
         "--config.model.stages=1", "--config.model.features=4",
         "--config.model.stem_stride=1"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                     env={**os.environ, "PYTHONPATH": str(REPO)})
  assert r.returncode == 0, r.stderr[-2000:]
  con = sqlite3.connect(db)
  (n_trials,) = con.execute("select count(*) from trials").fetchone()
  assert n_trials == 3  # the search and two retraining seeds
  rows = [m for (m,) in con.execute("select metrics from trial_epochs")]
  assert any('"skip_count"' in m and '"eigenvalue"' in m and '"arch_weights"' in m
             for m in rows)
  assert any('"test_acc"' in m for m in rows)
  assert '"collapsed": false' in r.stdout and '"test_acc_mean"' in r.stdout
  # the report shows the architecture weights of every search epoch
  from metaopt._src.report import arch_weights_history
  store = metaopt.Store(f"sqlite:///{db}")
  rec = store.load_study(None)
  hist = arch_weights_history(metaopt.Result(rec.name, rec.direction, store.trials(rec.id)))
  assert hist["ops"] == list(NB201_MINI_OPS)
  assert hist["cells"]["normal"].shape == (2, 6, len(NB201_MINI_OPS))  # epochs, edges, ops
  np.testing.assert_allclose(hist["cells"]["normal"].sum(-1), 1.0, atol=1e-3)
  r = subprocess.run([sys.executable, "run.py", "report", "--store", f"sqlite:///{db}",
                      "--format", "json", "--out", str(tmp_path / "rep"), "--quiet"],
                     cwd=REPO, capture_output=True, text=True, timeout=300,
                     env={**os.environ, "PYTHONPATH": str(REPO)})
  assert r.returncode == 0, r.stderr[-2000:]
  plots = json.loads(r.stdout)["plots"]
  assert "arch_weights" in plots and "hypergrad" not in plots
  assert 'alt="arch_weights.png"' in open(plots["html"]).read()


# slow (~59 s in CI: a run.py NAS run with a search, 4 fallback trials and a retraining); by
# default: the collapse rules (test_skip_count_rule_calls_a_collapse_and_rolls_back), the
# training of derived cells (test_cells_with_one_canonical_form_train_to_the_same_numbers)
@pytest.mark.slow
def test_collapsed_search_falls_back_to_black_box_search(tmp_path):
  """A constructed skip collapse (negative skip penalty): the run switches to regularised
  evolution over the same cell space, starting from the genotypes the search derived, and
  retrains the best of them (NAS retraining as an evaluator, ``RetrainEvaluator`` in the
  loop): every trial (genotype, objective, status, seed) equals what 8e022cd recorded for the
  same command (``tests/data/nas_fallback_pin_8e022cd.json``)."""
  db = tmp_path / "fb.db"
  cmd = [sys.executable, "run.py", "run", "--config", "configs/darts_shapes.py",
         "--store", f"sqlite:///{db}", "--config.dataset=digits", "--config.model.stages=1",
         "--config.model.features=4", "--config.model.stem_stride=1",
         "--config.search.epochs=2", "--config.search.skip_penalty=-200",
         "--config.search.a_lr=0.05", "--config.retrain.epochs=1", "--config.retrain.seeds=1",
         "--config.fallback.trials=4", "--config.fallback.population=4",
         "--config.fallback.epochs=1", "--quiet"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                     env={**os.environ, "PYTHONPATH": str(REPO)})
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["collapsed"] and "skip collapse" in out["untrusted"]
  con = sqlite3.connect(db)
  (switch,) = [m for (m,) in con.execute("select message from events where kind = 'switch'")]
  assert "gradient NAS -> evolution" in switch and "skip collapse" in switch
  rows = con.execute("select number, params, objective from trials order by number").fetchall()
  roles = [json.loads(p)["role"] for _, p, _ in rows]
  assert roles == ["search", "fallback", "fallback", "fallback", "fallback", "retrain"]
  fb = [(Genotype.from_json(json.loads(p)["genotype"]), o) for _, p, o in rows[1:5]]
  # the first round starts from the search's own genotypes: the safeguarded one, then the
  # collapsed one of epoch 0 (every edge skip_connect)
  assert str(fb[0][0]) == out["fallback"]["gradient_genotype"]
  assert count_ops(fb[1][0]) == 6
  best = max(range(4), key=lambda i: (fb[i][1], -i))
  assert Genotype.from_json(json.loads(rows[-1][1])["genotype"]) == fb[best][0]
  assert out["genotype"] == str(fb[best][0])
  pinned = con.execute(
      "select number, params, objective, status, seed from trials order by number").fetchall()
  got = [{"number": n, "params": json.loads(p), "objective": o, "status": s, "seed": sd}
         for n, p, o, s, sd in pinned]
  assert got == json.loads((REPO / "tests" / "data" / "nas_fallback_pin_8e022cd.json").read_text())


def test_darts_cell_supernet_and_derived_network():
  sp = darts_space(n_nodes=2, ops=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  sup = Network(sp, features=4, n_cells=2)
  w = {c: jax.nn.softmax(v, -1) for c, v in sp.init_logits(jax.random.key(1)).items()}
  p = sup.init(jax.random.key(2), x, w)
  assert sup.apply(p, x, w).shape == (2, 10)
  g = discretize(sp, sp.init_logits(jax.random.key(3), 2.0))
  der = Network(sp, features=4, n_cells=2, genotype=g)
  pd = der.init(jax.random.key(2), x)
  assert der.apply(pd, x).shape == (2, 10)
  assert count_params(pd) < count_params(p)  # only the kept ops exist
  tab = nas.cost_tables(sup, p, (8, 8, 1))["params"]
  assert set(tab) == {"normal", "reduce"} and tab["reduce"].shape == (sp.num_edges, 4)
