"""Black-box searchers and combinators: protocol, jit/scan, known optima, composition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _search_helpers import scan_search
from scipy.stats import qmc

import metaopt
from metaopt import COMPLETE, FAILED

SEARCHERS = {"random": metaopt.random_search, "sobol": metaopt.sobol, "halton": metaopt.halton}


def sphere(u):
  return jnp.sum(jnp.square(u - 0.3), axis=-1)


def run_loop(s, f, rounds, n, key=0):
  state = s.init(jax.random.key(key))
  best = jnp.inf
  for r in range(rounds):
    state, u = s.ask(state, jax.random.fold_in(jax.random.key(key + 1), r), n)
    y = f(u)
    state = s.tell(state, u, y, jnp.zeros(n, jnp.int32))
    best = jnp.minimum(best, y.min())
  return state, best


@pytest.mark.parametrize("name", list(SEARCHERS))
def test_finds_sphere_optimum_in_loop_and_scan_identically(name):
  s = SEARCHERS[name](3)
  st1, b1 = run_loop(s, sphere, 16, 32)
  st2, b2, _ = jax.jit(scan_search, static_argnums=(0, 1, 2, 3, 4))(s, sphere, 0, 16, 32)
  assert float(b1) < 0.01  # 512 points in 3-D: within 0.1 of the optimum
  np.testing.assert_allclose(float(b1), float(b2), rtol=1e-6)
  chex.assert_trees_all_close(st1, st2)


@pytest.mark.parametrize("name", list(SEARCHERS))
def test_points_in_unit_cube_and_batching_invariant(name):
  s = SEARCHERS[name](4)
  st = s.init(jax.random.key(0))
  st_a, u16 = s.ask(st, jax.random.key(5), 16)
  assert u16.shape == (16, 4)
  assert bool(jnp.all((u16 > 0) & (u16 < 1)))
  if name != "random":  # deterministic sequences: the n-th point does not depend on batching
    st_b, u8a = s.ask(st, jax.random.key(5), 8)
    _, u8b = s.ask(st_b, jax.random.key(6), 8)
    np.testing.assert_allclose(np.concatenate([u8a, u8b]), u16)


def test_sobol_matches_scipy_point_set_and_beats_random_discrepancy():
  s = metaopt.sobol(5, scramble=False)
  _, u = s.ask(s.init(jax.random.key(0)), None, 64)
  ref = qmc.Sobol(5, scramble=False).random(64)
  np.testing.assert_allclose(np.sort(np.asarray(u), 0), np.sort(ref, 0), atol=1e-6)
  ss = metaopt.sobol(5)
  _, us = ss.ask(ss.init(jax.random.key(3)), None, 64)
  r = metaopt.random_search(5)
  _, ur = r.ask(r.init(jax.random.key(0)), jax.random.key(3), 64)
  assert qmc.discrepancy(np.asarray(us, np.float64)) < qmc.discrepancy(np.asarray(ur, np.float64))


def test_sobol_directions_are_scipys_own_point_by_point():
  from metaopt._src import searchers

  np.testing.assert_array_equal(searchers._sobol_directions(2),
                                searchers._sobol_directions_from_points(2))


def test_scrambling_depends_on_key():
  s = metaopt.sobol(2)
  _, a = s.ask(s.init(jax.random.key(0)), None, 4)
  _, b = s.ask(s.init(jax.random.key(1)), None, 4)
  assert not np.allclose(a, b)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_dim(bad):
  with pytest.raises(ValueError, match="dim="):
    metaopt.random_search(bad)


def test_sequential_switches_after_n_first():
  a, b = metaopt.sobol(2, scramble=False), metaopt.random_search(2)
  s = metaopt.sequential(a, b, n_first=6)
  st = s.init(jax.random.key(0))
  st, u = jax.jit(s.ask, static_argnums=2)(st, jax.random.key(1), 4)
  st, u2 = jax.jit(s.ask, static_argnums=2)(st, jax.random.key(2), 4)
  _, ref = a.ask(a.init(jax.random.key(0)), None, 8)
  np.testing.assert_allclose(np.concatenate([u, u2])[:6], ref[:6])
  assert not np.allclose(u2[2:], ref[6:])  # trials 6, 7 come from random search


def test_product_assigns_disjoint_blocks():
  s = metaopt.product([(metaopt.sobol(1, scramble=False), [2]),
                       (metaopt.random_search(2), [0, 1])], dim=3)
  st, u = s.ask(s.init(jax.random.key(0)), jax.random.key(1), 4)
  np.testing.assert_allclose(np.sort(np.asarray(u[:, 2])),
                             np.sort(qmc.Sobol(1, scramble=False).random(4)[:, 0]), atol=1e-6)
  with pytest.raises(ValueError, match="must partition coordinates"):
    metaopt.product([(metaopt.random_search(1), [0])], dim=2)


def test_alternate_holds_the_other_block_at_the_incumbent():
  s = metaopt.alternate(metaopt.random_search(1), metaopt.random_search(2), idx_a=[0], dim=3)
  ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
  st = s.init(jax.random.key(0))
  st, u = ask(st, jax.random.key(1), 8)   # no incumbent yet: joint proposals
  y = sphere(u)
  st = tell(st, u, y, jnp.zeros(8, jnp.int32))
  inc = u[jnp.argmin(y)]
  st, u1 = ask(st, jax.random.key(2), 8)  # round 1 -> turn of b: coordinate 0 held
  np.testing.assert_allclose(np.asarray(u1[:, 0]), float(inc[0]))
  st = tell(st, u1, sphere(u1), jnp.zeros(8, jnp.int32))
  st, u2 = ask(st, jax.random.key(3), 8)  # round 2 -> a: coordinates 1, 2 held
  assert np.ptp(np.asarray(u2[:, 1])) == 0 and np.ptp(np.asarray(u2[:, 2])) == 0
  assert np.ptp(np.asarray(u2[:, 0])) > 0
  _, best = run_loop(s, sphere, 20, 8)
  assert float(best) < 0.01


def test_with_fallback_switches_on_failures_and_records_round():
  prim, fb = metaopt.sobol(2, scramble=False), metaopt.random_search(2)
  s = metaopt.with_fallback(prim, fb, metaopt.failure_rate_trigger(0.5))
  ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
  st = s.init(jax.random.key(0))
  st, u = ask(st, jax.random.key(1), 4)
  st = tell(st, u, sphere(u), jnp.full(4, COMPLETE))
  assert not bool(st["switched"])
  st, u = ask(st, jax.random.key(2), 4)
  st = tell(st, u, sphere(u), jnp.asarray([FAILED, FAILED, FAILED, COMPLETE]))
  assert bool(st["switched"]) and int(st["switch_round"]) == 1
  st_after, u3 = ask(st, jax.random.key(3), 4)
  _, expect = fb.ask(st["fallback"], jax.random.split(jax.random.key(3))[1], 4)
  np.testing.assert_allclose(u3, expect)


def test_median_pruner_stops_worse_than_median():
  p = metaopt.median_pruner(n_epochs=3, warmup_epochs=0, min_trials=4)
  st = p.init()
  values = jnp.asarray([1.0, 2.0, 3.0, 4.0, jnp.nan, 0.5])
  alive = jnp.asarray([True, True, True, True, True, False])
  st, keep = jax.jit(p.prune)(st, values, jnp.asarray(0), alive)
  # median of the alive finite values {1, 2, 3, 4} is 2.5: trials 2, 3 and the NaN one stop.
  np.testing.assert_array_equal(np.asarray(keep), [True, True, False, False, False, True])
  assert int(st["count"][0]) == 5
  st2, keep2 = p.prune(p.init(), values, jnp.asarray(1), alive)
  # warmup: nothing pruned before epoch `warmup_epochs`
  p2 = metaopt.median_pruner(n_epochs=3, warmup_epochs=2)
  _, keep3 = p2.prune(p2.init(), values, jnp.asarray(1), alive)
  assert bool(jnp.all(keep3))


def test_with_pruning_keeps_protocol():
  s = metaopt.with_pruning(metaopt.random_search(2), metaopt.median_pruner(4))
  assert s.observe is not None
  _, best = run_loop(s, sphere, 8, 16)
  assert float(best) < 0.05


@pytest.mark.parametrize("make", [
    lambda: metaopt.tpe(3, n_startup=6),
    lambda: metaopt.gp_bo(3, n_startup=6, capacity=16, fit_steps=5, grad_steps=3),
    lambda: metaopt.with_pruning(metaopt.tpe(3, n_startup=6), metaopt.asha(4)),
])
def test_startup_ask_is_ask_until_the_model_is_used(make):
  s = make()
  f = lambda y: jnp.sum((y - 0.3) ** 2, axis=-1)
  startup, ask = jax.jit(s.startup_ask, static_argnums=2), jax.jit(s.ask, static_argnums=2)
  state = s.init(jax.random.key(0))
  for r in range(3):
    key = jax.random.key(10 + r)
    st1, u1, ok = startup(state, key, 4)
    st2, u2 = ask(state, key, 4)
    assert bool(ok) == (r < 2)  # 0 and 4 observations < n_startup = 6; then 8
    if ok:
      np.testing.assert_array_equal(u1, u2)
      chex.assert_trees_all_equal(st1, st2)
    else:
      assert not np.array_equal(u1, u2)
    state = s.tell(st2, u2, f(u2), jnp.full(4, COMPLETE, jnp.int32))
