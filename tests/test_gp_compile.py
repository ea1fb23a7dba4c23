"""GP-BO's compile structure does not change its maths.

``gp_bo(buckets=True)`` fits and proposes on the smallest power-of-two prefix of the buffer
that holds the data (one compiled copy per size); ``buckets=False`` on the whole buffer with the
unused rows masked out (one copy). Masked rows add exact zeros to the kernel matrix, so both
must give the same hyperparameters and proposals up to float rounding: the buckets are a
compile-time / run-time trade, not a change of the search.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt._src import benchmark_functions as bf
from metaopt._src.gp import gp_bo
from metaopt._src.population import fast_jit  # the engine's build for asks with few calls left
from metaopt._src.searchers import sobol


def _gp(**kw):
  # capacity 128: buckets of 64 and 128 rows (and the Sobol design below n_startup)
  return gp_bo(2, n_startup=4, capacity=128, fit_steps=10, n_candidates=32, n_local=8,
               n_restarts=3, grad_steps=3, n_exploit=(6,), **kw)


@pytest.fixture(scope="module")
def bucketed():
  """``(searcher, its ask over every bucket)``: ``gp_bo(buckets=True)`` and the ``lax.switch``
  over its buckets by the engine's few-call build (``fast_jit``), compiled once for both
  tests of this file."""
  s = _gp(buckets=True)
  return s, fast_jit(s.ask, static_argnums=2)


# Slow (~25 s in CI: a second GP ask program, the whole buffer's); the bucketed ask and its
# one-bucket build stay default in the test below.
@pytest.mark.slow
def test_gp_bucketed_and_whole_buffer_asks_agree(bucketed):
  x = sobol(2).ask(sobol(2).init(jax.random.key(5)), None, 12)[1]
  y = bf.branin(x)
  out = {}
  for buckets in (True, False):
    # 12 observations fit in the 64-row bucket
    if buckets:
      s, ask = bucketed
    else:
      s = _gp(buckets=False)
      ask = fast_jit(s.ask, static_argnums=2)
    st = s.tell(s.init(jax.random.key(0)), x, y, jnp.zeros(12, jnp.int32))
    out[buckets] = ask(st, jax.random.key(3), 3)
  (st_b, u_b), (st_w, u_w) = out[True], out[False]
  assert bool(jnp.all((u_b >= 0) & (u_b <= 1)))
  assert float(jnp.min(jnp.abs(u_b[:, None] - u_b[None]).sum(-1) + jnp.eye(3))) > 1e-6
  np.testing.assert_allclose(u_b, u_w, atol=1e-4)
  for k in ("log_ls", "log_s2", "log_noise"):
    np.testing.assert_allclose(st_b["theta"][k], st_w["theta"][k], atol=1e-4, rtol=1e-4)


def test_gp_ask_compiled_for_one_bucket_matches_the_switch_over_all(bucketed):
  """``ask(state, key, n, ask_static(state))`` compiles only the state's bucket (what the
  engine runs); its proposals and state are those of the ``lax.switch`` over every bucket
  (``ask(state, key, n)``, what a user's ``jit`` builds) bit for bit, in the startup design
  and in two buckets. Both compiled by the engine's few-call build (``fast_jit``; the switch
  is the one the test above compiled), which costs a fraction of the optimised compile."""
  s, switch = bucketed
  x = sobol(2).ask(sobol(2).init(jax.random.key(5)), None, 80)[1]
  y = bf.branin(x)
  one = fast_jit(s.ask, static_argnums=(2, 3))
  buckets = []
  for n_obs in (3, 12, 80):  # the Sobol design; the 64-row bucket; the 128-row bucket
    st = s.tell(s.init(jax.random.key(0)), x[:n_obs], y[:n_obs], jnp.zeros(n_obs, jnp.int32))
    buckets.append(s.ask_static(st))
    want = switch(st, jax.random.key(n_obs), 3)
    got = one(st, jax.random.key(n_obs), 3, buckets[-1])
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                    strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert buckets == [0, 1, 2]
  st = s.tell(s.init(jax.random.key(0)), x[:12], y[:12], jnp.zeros(12, jnp.int32))
  size = {k: len(str(jax.make_jaxpr(f, static_argnums=a)(*args)))
          for k, f, a, args in (("all", s.ask, 2, (st, jax.random.key(1), 3)),
                                ("one", s.ask, (2, 3), (st, jax.random.key(1), 3, 1)))}
  # one bucket's copy of the model instead of two (0.63 of the size; ~1.0 with both copies)
  assert size["one"] < 0.7 * size["all"], size
  with pytest.raises(ValueError, match="bucket=3"):  # buckets 0 (design), 1, 2 only
    s.ask(st, jax.random.key(1), 3, 3)
