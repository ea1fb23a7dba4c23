"""CMA-ES with IPOP / BIPOP restarts: jittable, restarts happen, population grows, optima found."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _search_helpers import scan_search

from metaopt._src import benchmark_functions as bf
from metaopt._src.bbob import bbob_problem
from metaopt._src.evolution import cma_es

LAM0 = 6  # CMA-ES's default population in 2-D: 4 + floor(3 ln 2)
ROUNDS = 100  # 600 evaluations
RASTRIGIN = bbob_problem(3, 2, 1)  # BBOB f3, separable Rastrigin: many local minima


def _fns(u, which):
  """0: sphere, 1: Rosenbrock, 2: BBOB Rastrigin minus its fopt (all minimum 0)."""
  return jnp.stack([bf.sphere(u), bf.rosenbrock(u), RASTRIGIN.fn(u) - RASTRIGIN.minimum])[which]


@functools.cache
def _runner(mode: str, rounds: int):
  s = cma_es(2, restarts=mode, max_popsize=2 * LAM0)

  def run(seed, which):
    st, _, outs = scan_search(s, lambda u: _fns(u, which), seed, rounds, LAM0,
                              out=lambda st, u, y: (st["popsize"], y.min()))
    return st, outs

  return jax.jit(jax.vmap(run))


@pytest.fixture(scope="module")
def runs():
  """Seeds 0-2 on sphere, Rosenbrock and Rastrigin, ROUNDS rounds of LAM0 evaluations."""
  seeds = jnp.asarray([0, 1, 2] * 3)
  which = jnp.asarray([0] * 3 + [1] * 3 + [2] * 3)
  st, (pops, mins) = _runner("ipop", ROUNDS)(seeds, which)
  return jax.device_get(st), np.asarray(pops), np.asarray(mins)


def test_restarts_happen_on_rastrigin_and_the_population_grows(runs):
  st, pops, _ = runs
  r = slice(6, 9)
  assert np.all(st["restarts"][r] >= 1), st["restarts"]
  assert np.all(pops[r].max(axis=1) > LAM0), pops[r].max(axis=1)  # a larger population ran
  assert set(np.unique(pops)) <= {LAM0, 2 * LAM0}
  assert np.all(st["budget_small"] == 0)  # IPOP: large regime only


def test_best_over_restarts_is_kept_and_optima_found(runs):
  st, _, mins = runs
  np.testing.assert_allclose(st["best_y"], mins.min(axis=1), rtol=1e-6)
  # Sphere and Rosenbrock: every seed within tolerance; Rastrigin-2D: the global optimum
  # (the next basins are ~0.995 above it) on at least 1 of 3 seeds, and a median below random
  # search's best of the same 600 evaluations on each of the 3 seeds.
  assert np.all(st["best_y"][:3] < 1e-8), st["best_y"][:3]
  assert np.all(st["best_y"][3:6] < 1e-4), st["best_y"][3:6]
  assert np.sum(st["best_y"][6:] < 1e-3) >= 1, st["best_y"][6:]
  rand = jax.jit(jax.vmap(lambda k: RASTRIGIN.fn(jax.random.uniform(k, (ROUNDS * LAM0, 2))).min()))(
      jax.random.split(jax.random.key(0), 3)) - RASTRIGIN.minimum
  assert np.median(st["best_y"][6:]) < float(rand.min()), (st["best_y"][6:], rand)
  # the best point is the one that scored best_y
  for i in range(9):
    y = float(_fns(jnp.asarray(st["best_x"][i])[None], i // 3)[0])
    assert abs(y - st["best_y"][i]) <= 1e-5 * max(1.0, abs(y)), (i, y, st["best_y"][i])


class AskTellJittable(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_ask_tell_with_restarts(self):
    """Forced restarts (restart_tol above sigma0) inside ask/tell, jitted or not: the
    population doubles, the mean jumps, the state keeps its shapes and (strong) dtypes, so a
    jitted ask/tell compiles once; BIPOP's second restart is a small-population local run (its
    budget is below the large one's)."""
    for mode in ("bipop",):  # its first restart is IPOP's doubling
      s = cma_es(2, restarts=mode, max_popsize=2 * LAM0, restart_tol=1.0)
      ask = self.variant(s.ask, static_argnums=2)
      tell = self.variant(s.tell)
      st = s.init(jax.random.key(0))
      shapes0 = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st)
      st, u = ask(st, jax.random.key(1), LAM0)
      st = tell(st, u, bf.sphere(u), jnp.zeros(LAM0, jnp.int32))
      assert int(st["restarts"]) == 1 and int(st["popsize"]) == 2 * LAM0
      assert np.abs(np.asarray(st["es"].mean) - 0.5).max() > 1e-3
      for r in range(2):  # the doubled generation spans two asks of LAM0
        st, u = ask(st, jax.random.key(2 + r), LAM0)
        st = tell(st, u, bf.sphere(u), jnp.zeros(LAM0, jnp.int32))
        assert int(st["generation"]) == 1 + r
      assert int(st["restarts"]) == 2
      assert int(st["budget_large"]) == LAM0 + 2 * LAM0
      if mode == "bipop":
        assert bool(st["small"]) and int(st["popsize"]) == LAM0
        assert float(st["es"].std) <= 1 / 6 + 1e-7
      else:
        assert not bool(st["small"]) and int(st["popsize"]) == 2 * LAM0  # capped at the max
      assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st) == shapes0


# op by op slow (~22 s in CI); the jitted variant stays default
AskTellJittable.test_ask_tell_with_restarts__without_jit = pytest.mark.slow(
    AskTellJittable.test_ask_tell_with_restarts__without_jit)


@pytest.mark.parametrize("kw, field", [
    ({"restarts": "lpop"}, "restarts"),
    ({"restarts": "ipop", "max_popsize": 3}, "max_popsize"),
    ({"restarts": "bipop", "max_popsize": 2.5}, "max_popsize"),
    ({"max_popsize": 64}, "max_popsize"),
    ({"restarts": "ipop", "bounds": "reflect"}, "bounds"),
])
def test_bad_restart_options(kw, field):
  with pytest.raises(ValueError, match=field):
    cma_es(2, **kw)


def test_default_cma_es_starts_again_when_its_update_breaks():
  """restarts="none": a generation after which the strategy's mean is NaN (what a collapsed
  step does to evosax's update on long runs) restarts the strategy instead of handing out NaN
  points from then on."""
  s = cma_es(2)
  st = s.init(jax.random.key(0))
  st, u = s.ask(st, jax.random.key(1), LAM0)
  st = {**st, "es": st["es"].replace(mean=jnp.full_like(st["es"].mean, jnp.nan))}
  st = jax.jit(s.tell)(st, u, bf.sphere(u), jnp.zeros(LAM0, jnp.int32))
  assert int(st["restarts"]) == 1
  _, u2 = s.ask(st, jax.random.key(2), LAM0)
  assert np.all(np.isfinite(np.asarray(u2)))
  assert np.all((np.asarray(u2) >= 0) & (np.asarray(u2) <= 1))
